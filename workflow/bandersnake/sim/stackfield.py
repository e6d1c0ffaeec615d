"""Calibrated frames of one field with a known WCS, star magnitudes and a catalogue: truth for the stacks.

The night simulator (:mod:`bandersnake.sim.night`) makes raw frames; the stack stage starts from
calibrated SCI/ERR/MASK frames with a WCS, so its truth tests use frames made directly at that
level, where every input is known exactly:

* stars at fixed sky positions with magnitudes; ``flux (e-/s) = 10**(-0.4 (mag - zeropoint))``;
* each frame a TAN WCS dithered by a fractional-pixel offset and a small rotation, so the stack
  has to resample;
* a Moffat PSF of one FWHM (the true PSF of the stack), pixel-integrated;
* Poisson sky and stars, Gaussian read noise; SCI and ERR in e-, MASK bits 1 bad / 2 cosmic ray /
  4 saturated / 8 near bad as the calibrated frames (:mod:`bandersnake.calibration.frames`);
* optional injected faint stars (their own truth table) for the limiting-magnitude test;
* a catalogue file (ECSV: ``ra``, ``dec``, ``mag``, ``mag_err``) of the brighter stars, with the
  catalogue noise drawn from ``mag_err``.
"""

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time, TimeDelta
from astropy.wcs import WCS

from . import render


@dataclass
class FieldConfig:
    """Parameters of a simulated field and its frames (units in the names)."""

    ra_deg: float = 150.0
    dec_deg: float = 20.0
    shape: tuple = (256, 256)              # (ny, nx) px
    scale_arcsec: float = 1.0              # arcsec/px
    n_frames: int = 6
    exptime_s: float = 60.0
    zeropoint_mag: float = 22.0            # magnitude of a star giving 1 e-/s
    fwhm_px: float = 3.0
    beta: float = 3.0
    sky_e_per_s: float = 20.0
    read_noise_e: float = 8.0
    saturation_e: float = 2.0e5
    n_stars: int = 120
    mag_range: tuple = (12.0, 19.5)
    min_separation_px: float = 12.0
    dither_px: float = 6.0                 # rms of the pointing offsets between frames
    rotation_deg: float = 0.3              # rms of the field rotation between frames
    n_bad_pixels: int = 60
    n_cosmic_rays: int = 15
    n_faint: int = 0                       # injected faint stars (not in the catalogue)
    faint_mag_range: tuple = (20.0, 23.0)
    catalogue_mag_err: float = 0.02
    catalogue_max_mag: float = 17.0
    date_obs: str = "2025-01-10T03:00:00"
    object_name: str = "FIELD"
    filter_name: str = "V"
    seed: int = 1
    psf_half_px: int = 20


@dataclass
class SimField:
    """Frames (HDULists), the truth of the stars and the catalogue of a simulated field."""

    frames: list
    stars: Table                            # ra, dec, mag, flux (e-/s), faint (bool)
    catalogue: Table                        # ra, dec, mag, mag_err
    wcs: list = field(default_factory=list)  # true WCS of each frame


def _frame_wcs(cfg, dx, dy, rot_deg):
    ny, nx = cfg.shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [cfg.ra_deg, cfg.dec_deg]
    w.wcs.crpix = [(nx + 1) / 2.0 + dx, (ny + 1) / 2.0 + dy]
    s = cfg.scale_arcsec / 3600.0
    t = np.radians(rot_deg)
    w.wcs.cd = s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    w.pixel_shape = (nx, ny)
    return w


def _place(cfg, rng, n, mag_range, avoid_x=(), avoid_y=(), margin=8):
    """Sky positions of ``n`` stars at least ``min_separation_px`` apart (and from ``avoid``)."""
    ny, nx = cfg.shape
    xs, ys = list(avoid_x), list(avoid_y)
    out_x, out_y = [], []
    tries = 0
    while len(out_x) < n and tries < 200 * n:
        tries += 1
        x, y = rng.uniform(margin, nx - 1 - margin), rng.uniform(margin, ny - 1 - margin)
        if xs and np.min(np.hypot(np.asarray(xs) - x, np.asarray(ys) - y)) < cfg.min_separation_px:
            continue
        xs.append(x), ys.append(y), out_x.append(x), out_y.append(y)
    lo, hi = mag_range
    # Counts rising with magnitude (log N ~ 0.3 m), as a real field.
    u = rng.uniform(0, 1, len(out_x))
    mag = lo + np.log10(1 + u * (10 ** (0.3 * (hi - lo)) - 1)) / 0.3
    return np.array(out_x), np.array(out_y), mag


def simulate_field(cfg=None, **overrides):
    """Calibrated frames of one field, with truth and a catalogue file's content.

    Parameters
    ----------
    cfg : FieldConfig, optional
    **overrides
        FieldConfig fields.

    Returns
    -------
    SimField
        ``frames``: HDULists (primary header with OBJECT, FILTER, EXPTIME (s), DATE-OBS (start,
        UTC), XBINNING/YBINNING, ASTROSTA; SCI/ERR (e-) and MASK, the WCS in every image header).
    """
    cfg = cfg or FieldConfig()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    rng = np.random.default_rng(cfg.seed)
    ny, nx = cfg.shape
    ref = _frame_wcs(cfg, 0.0, 0.0, 0.0)
    x, y, mag = _place(cfg, rng, cfg.n_stars, cfg.mag_range)
    faint = np.zeros(len(x), bool)
    if cfg.n_faint:
        fx, fy, _ = _place(cfg, rng, cfg.n_faint, cfg.faint_mag_range, x, y)
        fmag = rng.uniform(*cfg.faint_mag_range, len(fx))
        x, y, mag = np.r_[x, fx], np.r_[y, fy], np.r_[mag, fmag]
        faint = np.r_[faint, np.ones(len(fx), bool)]
    ra, dec = ref.all_pix2world(x, y, 0)
    flux = 10 ** (-0.4 * (mag - cfg.zeropoint_mag))
    stars = Table({"ra": ra, "dec": dec, "mag": mag, "flux": flux, "faint": faint})
    stars["ra"].unit = stars["dec"].unit = "deg"
    stars["flux"].unit = "electron/s"
    in_cat = ~faint & (mag <= cfg.catalogue_max_mag)
    catalogue = Table({"ra": ra[in_cat], "dec": dec[in_cat],
                       "mag": mag[in_cat] + rng.normal(0, cfg.catalogue_mag_err, in_cat.sum()),
                       "mag_err": np.full(in_cat.sum(), cfg.catalogue_mag_err)})
    catalogue["ra"].unit = catalogue["dec"].unit = "deg"

    bad_yx = (rng.integers(0, ny, cfg.n_bad_pixels), rng.integers(0, nx, cfg.n_bad_pixels))
    t0 = Time(cfg.date_obs, scale="utc")
    frames, wcss = [], []
    for i in range(cfg.n_frames):
        dx, dy = (rng.normal(0, cfg.dither_px, 2) if i else (0.0, 0.0))
        rot = rng.normal(0, cfg.rotation_deg) if i else 0.0
        w = _frame_wcs(cfg, dx, dy, rot)
        px, py = w.all_world2pix(ra, dec, 0)
        t = cfg.exptime_s
        expected = np.full(cfg.shape, cfg.sky_e_per_s * t)
        render.add_stars(expected, px, py, flux * t, cfg.fwhm_px, cfg.beta, cfg.psf_half_px)
        sci = rng.poisson(expected).astype(np.float64) + rng.normal(0, cfg.read_noise_e, cfg.shape)
        err = np.sqrt(np.maximum(expected, 0) + cfg.read_noise_e ** 2)
        mask = np.zeros(cfg.shape, np.uint8)
        mask[bad_yx] |= 1
        sci[bad_yx] = rng.uniform(0, 5e4, cfg.n_bad_pixels)     # garbage the stack must never use
        sat = sci >= cfg.saturation_e
        sci[sat] = cfg.saturation_e
        mask[sat] |= 4
        for _ in range(cfg.n_cosmic_rays):
            cy, cx = rng.integers(2, ny - 2), rng.integers(2, nx - 2)
            length = rng.integers(1, 4)
            sci[cy, cx:cx + length] += 3000.0
            mask[cy, cx:cx + length] |= 2
        start = t0 + TimeDelta(i * (t + 30.0), format="sec")
        primary = fits.Header()
        primary["OBJECT"] = cfg.object_name
        primary["FILTER"] = cfg.filter_name
        primary["EXPTIME"] = (t, "[s]")
        primary["DATE-OBS"] = (start.isot, "[UTC] exposure start")
        primary["XBINNING"], primary["YBINNING"] = 1, 1
        primary["ASTROSTA"] = "solved"
        primary["BUNIT"] = "electron"
        primary.update(w.to_header())
        hdus = [fits.PrimaryHDU(header=primary)]
        for name, arr in (("SCI", sci.astype(np.float32)), ("ERR", err.astype(np.float32)), ("MASK", mask)):
            h = fits.ImageHDU(arr, name=name)
            h.header.update(w.to_header())
            hdus.append(h)
        frames.append(fits.HDUList(hdus))
        wcss.append(w)
    return SimField(frames, stars, catalogue, wcss)


def write_field(sim, directory, catalogue_name="catalogue.ecsv"):
    """Write the frames (``frame_NN_CAL.fits``), the truth (``stars.ecsv``) and the catalogue.

    Returns
    -------
    list of pathlib.Path
        The frame files, in time order.
    """
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, hdul in enumerate(sim.frames):
        p = directory / f"frame_{i:02d}_CAL.fits"
        hdul.writeto(p, overwrite=True)
        paths.append(p)
    sim.stars.write(directory / "stars.ecsv", overwrite=True)
    sim.catalogue.write(directory / catalogue_name, overwrite=True)
    return paths
