"""Calibrated nights of a real Tycho-2 field with a known WCS per frame, for astrometry tests.

Each frame is :func:`bandersnake.astrometry.tycho.render_field` of the real Tycho-2 stars (read
offline from the astrometry.net index files) through that frame's true TAN WCS: the chip centre
drifts linearly over the night, jitters, jumps at a re-acquisition, and clouds dim every star
(transparency per frame). Frames are written as calibrated products (SCI e-, ERR e-, MASK with
bit 4 on saturated pixels) plus the stage table ``calibrated_frames.ecsv`` that
:func:`bandersnake.calibration.frames.solve_night` reads, and the truth ``truth_wcs.ecsv`` (true
CRPIX per frame; CRVAL, CD shared, in the table's meta).
"""

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from ..fitsio import atomic_path, write_fits


@dataclass
class TychoNight:
    """Knobs of a simulated Tycho-2 night (units in the names; drift over the whole night)."""

    n_frames: int = 142
    shape: tuple = (500, 650)
    ra_deg: float = 303.2
    dec_deg: float = 46.0
    scale_arcsec: float = 5.2
    rotation_deg: float = 20.0
    drift_px: tuple = (230.0, -150.0)      # 273 px over the night
    jitter_px: float = 0.3
    jump_frame: int | None = 90
    jump_px: tuple = (40.0, -25.0)
    clouds: tuple = ((30, 40, 0.15),)      # (first frame, last frame, lowest transparency)
    zeropoint_mag: float = 21.0            # V_T giving 1 e-
    mag_limit: float = 13.5
    fwhm_px: float = 2.5
    sky_e: float = 300.0
    read_noise_e: float = 10.0
    saturation_e: float = 60000.0
    exptime_s: float = 30.0
    cadence_s: float = 40.0
    n_extra_stars: int = 150              # fainter stars not in the index files (random, fixed on the sky)
    extra_mag_range: tuple = (12.0, 15.5)
    seed: int = 18
    index_dir: str = "/usr/share/astrometry"
    header_radec: bool = True             # RA/DEC pointing keywords in the primary header


def truth_offsets(cfg):
    """Per-frame chip offset (dx, dy) in px of the pointing and transparency (0..1)."""
    rng = np.random.default_rng([cfg.seed, 1])
    t = np.arange(cfg.n_frames) / max(cfg.n_frames - 1, 1)
    dx = cfg.drift_px[0] * t + rng.normal(0, cfg.jitter_px, cfg.n_frames)
    dy = cfg.drift_px[1] * t + rng.normal(0, cfg.jitter_px, cfg.n_frames)
    if cfg.jump_frame is not None:
        dx[cfg.jump_frame:] += cfg.jump_px[0]
        dy[cfg.jump_frame:] += cfg.jump_px[1]
    trans = np.ones(cfg.n_frames)
    for a, b, low in cfg.clouds:
        k = np.arange(a, min(b, cfg.n_frames - 1) + 1)
        # A dip: transparency falls to `low` at the middle of the episode.
        trans[k] = 1 - (1 - low) * np.sin(np.pi * (k - a + 1) / (b - a + 2))
    return dx, dy, trans


def frame_wcs(cfg, dx, dy):
    """True WCS of a frame whose pointing moved the stars by (dx, dy) px on the chip."""
    from ..astrometry import tycho

    w = tycho.tan_wcs(cfg.ra_deg, cfg.dec_deg, cfg.scale_arcsec, cfg.shape, cfg.rotation_deg)
    w.wcs.crpix = [w.wcs.crpix[0] + dx, w.wcs.crpix[1] + dy]
    w.wcs.set()
    return w


def simulate_tycho_night(out_dir, cfg=None, threads=2):
    """Write a calibrated night of a real Tycho-2 field (see the module docstring).

    Returns
    -------
    astropy.table.Table
        Truth: ``file``, ``dx``, ``dy`` (px), ``transparency``, ``crpix1``, ``crpix2`` (FITS).
    """
    from ..astrometry import tycho
    from ..calibration.frames import CALIBRATED_TABLE, _CAL_COLUMNS, _CAL_DTYPES, _write_table

    cfg = cfg or TychoNight()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ny, nx = cfg.shape
    dx, dy, trans = truth_offsets(cfg)
    span = np.hypot(nx, ny) / 2 + np.hypot(np.ptp(dx), np.ptp(dy)) + 50
    stars = tycho.stars_in_cone(cfg.ra_deg, cfg.dec_deg, span * cfg.scale_arcsec / 3600.0, cfg.index_dir,
                                mag_limit=cfg.mag_limit)
    if cfg.n_extra_stars:
        # Real skies hold many stars the index files leave out: uniform on the cone, fainter.
        rng = np.random.default_rng([cfg.seed, 3])
        r = span * cfg.scale_arcsec / 3600.0 * np.sqrt(rng.uniform(0, 1, cfg.n_extra_stars))
        th = rng.uniform(0, 2 * np.pi, cfg.n_extra_stars)
        from ..astrometry.follow import inverse_gnomonic

        era, edec = inverse_gnomonic(r * np.sin(th), r * np.cos(th), cfg.ra_deg, cfg.dec_deg)
        emag = rng.uniform(*cfg.extra_mag_range, cfg.n_extra_stars)
        stars = tycho.StarList(np.r_[stars.ra, era], np.r_[stars.dec, edec], np.r_[stars.mag, emag].astype(np.float32))
    names = [f"tycho_{k:04d}_CAL.fits" for k in range(cfg.n_frames)]

    def one(k):
        w = frame_wcs(cfg, dx[k], dy[k])
        zp = cfg.zeropoint_mag + 2.5 * math.log10(max(trans[k], 1e-6))
        img, _ = tycho.render_field(w, cfg.shape, stars, zeropoint_mag=zp, fwhm_px=cfg.fwhm_px, sky_e=cfg.sky_e,
                                    read_noise_e=cfg.read_noise_e, rng=[cfg.seed, 2, k],
                                    saturation_e=cfg.saturation_e)
        err = np.sqrt(np.clip(img, 0, None) + cfg.read_noise_e**2).astype(np.float32)
        mask = np.where(img >= cfg.saturation_e, np.uint8(4), np.uint8(0))
        hdr = fits.Header()
        hdr["OBJECT"] = "TYCHO-FIELD"
        hdr["EXPTIME"] = cfg.exptime_s
        hdr["DATE-OBS"] = f"2025-06-01T00:{(k * int(cfg.cadence_s)) // 60 % 60:02d}:00"
        if cfg.header_radec:
            hdr["RA"] = (cfg.ra_deg, "[deg] pointing (nominal)")
            hdr["DEC"] = (cfg.dec_deg, "[deg] pointing (nominal)")
        hdul = fits.HDUList([fits.PrimaryHDU(header=hdr), fits.ImageHDU(img, name="SCI"),
                             fits.ImageHDU(err, name="ERR"), fits.ImageHDU(mask, name="MASK")])
        hdul["SCI"].header["BUNIT"] = "electron"
        write_fits(hdul, out / names[k])

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(one, range(cfg.n_frames)))
    rows = [dict(raw=n, file=n, status="ok", filter="V", exptime=cfg.exptime_s, dark="none", dark_matched=True,
                 n_cosmic=0, n_bad=0, n_saturated=0, elapsed=0.0, reason="") for n in names]
    _write_table(rows, _CAL_COLUMNS, _CAL_DTYPES, out / CALIBRATED_TABLE,
                 meta={"n_frames": len(rows), "n_calibrated": len(rows), "suffix": "_CAL", "cosmics": False})
    base = tycho.tan_wcs(cfg.ra_deg, cfg.dec_deg, cfg.scale_arcsec, cfg.shape, cfg.rotation_deg)
    truth = Table({"file": names, "dx": dx, "dy": dy, "transparency": trans,
                   "crpix1": base.wcs.crpix[0] + dx, "crpix2": base.wcs.crpix[1] + dy})
    truth.meta["crval"] = list(map(float, base.wcs.crval))
    truth.meta["cd"] = base.wcs.cd.tolist()
    truth.meta["n_rendered_stars"] = len(stars)
    truth.meta["n_extra_stars"] = int(cfg.n_extra_stars)
    with atomic_path(out.parent / f"{out.name}_truth.ecsv") as tmp:
        truth.write(tmp, format="ascii.ecsv", overwrite=True)
    return truth


def truth_wcs(truth, k, shape):
    """True WCS of frame ``k`` from the truth table."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = truth.meta["crval"]
    w.wcs.cd = np.array(truth.meta["cd"])
    w.wcs.crpix = [truth["crpix1"][k], truth["crpix2"][k]]
    w.pixel_shape = (shape[1], shape[0])
    w.wcs.set()
    return w
