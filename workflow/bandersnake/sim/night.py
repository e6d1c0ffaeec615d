"""Realistic raw nights with ground truth: the built-in demo night and the truth of the tests.

``simulate_night(raw_root, truth_dir, config, instrument)`` writes a MaxIm DL-style raw night
``<raw_root>/<INST>/images/<YYYYMMDD>/`` (bias, dark, dusk and dawn twilight flats, science
frames; uint16 BITPIX 16 / BZERO 32768, some gzipped) and, in a separate ``truth_dir``:

``truth.yaml``         every scalar parameter (detector, site, transit, stars, seed, config)
``master_truth.fits``  BIAS (ADU), DARK (ADU/s), FLAT (median 1), BPM (1 hot, 2 dead) extensions
``frames.ecsv``        one row per raw file: times, airmass, seeing, pointing offset, sky, levels
``stars.ecsv``         per science frame and star: true x, y (0-based), fluxes, transit, extinction
``cosmic_rays.ecsv``   every cosmic-ray pixel hit (file, x, y, e-)
``wcs.fits``           true TAN WCS of the first science frame (header only)
``targets.yaml``       bandersnatch-format star list for ``--config targets_file=...``

Physics (per exposure, in electrons, then through the ADC)::

    star_e  = F * T(t) * V(t) * 10**(-0.4 k X) * (1 + sigma_scint * N(0, 1)) * t_exp
    image_e = Poisson(flat * (sky * t_exp + Moffat stars) + dark_rate * t_exp) + cosmic rays
    raw     = clip(round(bias + image_e / gain + N(0, RN / gain)), 0, 65535)

with ``F`` the flux above the atmosphere (e-/s, after telescope and detector throughput),
``T`` the quadratic limb-darkened transit (star 0), ``V`` the variable star's sinusoid, ``X`` the
airmass from the site and target geometry, and the Osborn et al. (2015) scintillation
``sigma^2 = 1e-5 C_Y^2 D^(-4/3) t^-1 X^3 exp(-2 h / H)``.
"""

import argparse
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from .. import __version__
from ..errors import BandersnakeError, ConfigError
from ..fitsio import atomic_path, is_raw_fits_name, write_fits, write_text
from . import detector as sim_detector
from . import astep, maxim, render, site as sim_site
from .transit import impact_parameter, total_duration, transit_model

log = logging.getLogger("bandersnake.simulate")

# Independent random streams: changing the number of frames of one kind does not change the
# detector, the stars or the other frames.
_STREAM = {"detector": 1, "stars": 2, "conditions": 3, "flat_fields": 4, "scint": 5, "cosmics": 6,
           "bias": 11, "dark": 12, "flat": 13, "science": 14}


_WRITERS = {"maxim": maxim, "astep": astep}


def writer(layout):
    """Raw-file writer module of a layout (``filename``, ``header``, ``write_raw``)."""
    if layout not in _WRITERS:
        raise ConfigError(f"simulate: unknown layout {layout!r} (known: {', '.join(sorted(_WRITERS))})")
    return _WRITERS[layout]


def _rng(seed, stream, index=0):
    return np.random.default_rng([int(seed), _STREAM[stream], int(index)])


@dataclass
class SimConfig:
    """All knobs of a simulated night; with the target of :func:`demo_config`, the demo night.

    Units are in the names (px, s, e-, e-/s, ADU, deg, h, d). ``None`` means "derive it":
    shape, gain and read noise from the instrument, RA/Dec high in the sky at mid-window
    (on the meridian 30 min before the window centre, 6 deg from the zenith), the jump at
    mid-window.
    """

    # Night and target
    date: str = "20251215"
    instrument: str = "SPIRIT2"
    target: str = "SIM-1b"
    filter: str = "I+z"
    telescope: str = "SPECULOOS-South 1.0m (simulated)"
    seed: int = 20251215
    shape: tuple | None = None
    ra_deg: float | None = None
    dec_deg: float | None = None
    # Frames
    n_bias: int = 9
    n_dark: int = 9
    dark_exptimes_s: tuple = (30.0,)
    n_flat_dusk: int = 7
    n_flat_dawn: int = 7
    n_science: int = 150
    science_exptime_s: float = 30.0
    readout_s: float = 8.0
    science_center_h: float = 0.0
    calib_before_sunset_h: float = 1.5
    gzip_every: int = 25
    ccd_temp_c: float = -60.0
    # Detector (gain/read noise None: from the instrument file)
    gain_e_per_adu: float | None = None
    read_noise_e: float | None = None
    bias_level_adu: float = 1000.0
    bias_column_sigma_adu: float = 3.0
    bias_gradient_x_adu: float = 6.0
    bias_gradient_y_adu: float = 10.0
    dark_current_e_per_s: float = 1.0
    amp_glow_e_per_s: float = 15.0
    hot_pixels_per_mpix: float = 300.0
    hot_pixel_range_e_per_s: tuple = (5.0, 3000.0)
    n_hot_columns: int = 2
    hot_column_e_per_s: float = 25.0
    flat_vignetting: float = 0.18
    n_dust_donuts: int = 6
    donut_radius_px: tuple = (10.0, 28.0)
    donut_depth: tuple = (0.02, 0.06)
    flat_prnu: float = 0.008
    dead_pixels_per_mpix: float = 40.0
    n_dead_columns: int = 1
    # Twilight flats: sky rate S = S_ref 10**(0.4 k_tw (h_sun - h_ref)); exposure set for a target level
    flat_target_dusk_adu: float = 35000.0
    flat_target_dawn_adu: float = 22000.0
    flat_min_exptime_s: float = 3.0
    flat_max_exptime_s: float = 60.0
    dawn_first_exptime_s: float = 20.0
    twilight_sky_ref_e_per_s: float = 30000.0
    twilight_ref_alt_deg: float = -4.0
    twilight_mag_per_deg: float = 1.1
    n_flat_stars: int = 40
    flat_star_flux_range_e_per_s: tuple = (1.0e3, 2.0e5)
    flat_dither_px: float = 40.0
    # Sky, atmosphere, seeing
    sky_e_per_s: float = 60.0
    sky_trend_per_h: float = -0.08
    sky_wave_amplitude: float = 0.04
    sky_wave_period_h: float = 1.3
    extinction_mag_per_airmass: float = 0.05
    scintillation: bool = True
    seeing_fwhm_px: float = 3.6
    seeing_wave_amplitude: float = 0.15
    seeing_wave_period_h: float = 1.7
    seeing_noise: float = 0.03
    moffat_beta: float = 3.0
    psf_half_px: int = 25
    # Pointing (offsets relative to the first science frame's nominal pointing)
    drift_px_per_h: tuple = (1.2, -0.8)
    jitter_px: float = 0.25
    jump_frame: int | None = None
    jump_px: tuple = (13.0, -9.0)
    jump_gap_s: float = 120.0
    rotation_deg: float = 0.4
    # Stars: star 0 is the target, star 1 the tracking star
    n_stars: int = 12
    stars: list | None = None
    target_flux_e_per_s: float = 2.0e4
    tracking_flux_e_per_s: float = 3.5e4
    comparison_flux_range_e_per_s: tuple = (1.5e3, 3.0e4)
    variable_star: int | None = 3
    variable_amplitude: float = 0.004
    variable_period_d: float = 0.14
    variable_phase_rad: float = 0.3
    saturated_star: bool = True
    n_field_stars: int = 40
    field_flux_range_e_per_s: tuple = (150.0, 1500.0)
    min_separation_px: float = 60.0
    annulus_outer_px: float = 25.0
    # Transit of star 0 (mid-transit offset from the science window centre)
    transit_period_d: float = 1.5
    rp_rs: float = 0.1
    a_rs: float = 12.0
    impact_parameter: float = 0.3
    u1: float = 0.35
    u2: float = 0.25
    transit_offset_min: float = 4.0
    # Cosmic rays (events per Mpix per second of exposure)
    cr_rate_per_mpix_s: float = 0.2
    cr_in_darks: bool = True
    cr_mean_length_px: float = 3.0
    cr_median_e: float = 3000.0
    # Raw layout: "maxim" (<raw_root>/<INST>/images/<YYYYMMDD>/, MaxIm DL headers and names) or
    # "astep" (<raw_root>/<YYYY-MM-DD>/<YYYY-MM-DD>-CAMS[_SKYFLAT]/, *_SCIENCE/_DARK/_BIAS/_SKYFLAT names)
    layout: str = "maxim"
    # Extra darks at the flats' exposure time(s) (ASTEP keeps them beside the flats)
    n_flat_dark: int = 0
    # Stars: "random" (placed by the simulator) or "tycho" (the real Tycho-2 stars around RA/Dec,
    # from astrometry.net index files, seen through the true WCS; plate-solvable)
    star_field: str = "random"
    tycho_index_dir: str = "/usr/share/astrometry"
    tycho_mag_limit: float = 13.5
    tycho_zeropoint_mag: float = 19.5      # V_T of a star giving 1 e-/s
    # Fainter stars the index files leave out (real skies hold many): random, fixed on the sky
    tycho_extra_stars: int = 0
    tycho_extra_mag: tuple = (12.0, 15.5)
    # Write each science frame's true TAN WCS into its header (as PinPoint/MaxIm would)
    header_wcs: bool = False
    # Header conventions of other cameras (the writer's own are one camera among many):
    # date_obs_style "utc" (plain ISO UTC), "zone" (local time + "-0700"-style suffix), "zone_colon"
    # (local + "-07:00"), "z" (UTC + "Z"), "local" (local time, no zone); local = UTC + utc_offset_hours.
    date_obs_style: str = "utc"
    utc_offset_hours: float = 0.0
    write_imagetyp: bool = True         # False: no frame-type keyword (types from file names only)
    ut_obs: bool = False                # also write UT-OBS = '<UTC stamp>-0000'
    mjd_obs_decimals: int | None = None  # also write MJD-OBS rounded to this many decimals
    write_jd: bool = True               # False: no JD keyword
    adc_bits: int = 16                  # 12: a 12-bit camera (values 0..4095 in 16-bit files)

    @property
    def night_date(self):
        """``YYYYMMDD`` as a string (YAML may hand an int)."""
        return str(self.date)


def demo_config(**overrides):
    """SimConfig of the built-in demo night ``SPIRIT2_20251215`` (``overrides`` replace fields).

    The target SIM-1b is fixed at RA 05 06 00, Dec -18 36 00 (near the Paranal zenith at the
    window centre, 04:37 UTC on 2025-12-16).
    """
    return config_from_dict({"ra_deg": 76.5, "dec_deg": -18.6, **overrides}, SimConfig())


def small_config(**overrides):
    """A fast 256x256 night for tests: 4 stars, 5 bias/dark, 3+3 flats, 30 science frames.

    The transit is short (T14 ~ 20 min on a 0.25 d orbit) so the 30-min window holds all of it.
    """
    base = SimConfig(shape=(256, 256), n_bias=5, n_dark=5, n_flat_dusk=3, n_flat_dawn=3, n_science=30,
                     readout_s=30.0, n_stars=4, variable_star=2, saturated_star=False, n_field_stars=3,
                     min_separation_px=45.0, n_flat_stars=5, n_dust_donuts=1, n_hot_columns=1,
                     jump_px=(10.0, -7.0), jump_gap_s=60.0, transit_period_d=0.25, a_rs=6.0,
                     transit_offset_min=1.0, gzip_every=7, drift_px_per_h=(1.0, -0.6))
    return config_from_dict(overrides, base)


def config_from_dict(values, base=None):
    """``base`` (default SimConfig()) with fields replaced from ``values``.

    Raises
    ------
    ConfigError
        Naming any key that is not a SimConfig field.
    """
    base = base if base is not None else SimConfig()
    names = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(values or {}) - names)
    if unknown:
        raise ConfigError(f"simulate: unknown setting(s) {', '.join(unknown)} (see bandersnake.simulate.SimConfig)")
    out = dataclasses.replace(base, **(values or {}))
    if out.shape is not None:
        out.shape = tuple(int(v) for v in out.shape)
    return out


# --------------------------------------------------------------------------------------------------
# Planning: times, geometry, stars and per-frame conditions (no pixels)
# --------------------------------------------------------------------------------------------------

@dataclass
class NightPlan:
    """Everything about a night except its pixels (cheap: used by tests and the config writer)."""

    cfg: SimConfig
    instrument: dict
    shape: tuple
    gain: float
    read_noise_e: float
    frames: list                      # dicts, in time order
    stars: dict                       # arrays: x0, y0, flux, role, listed
    science: dict                     # per-science-frame arrays
    geometry: dict                    # sunset, sunrise, twilights, window, site
    transit: dict
    variable: dict | None
    wcs: WCS
    star_sky: dict = field(default_factory=dict)

    @property
    def night_id(self):
        return f"{self.instrument['name']}_{self.cfg.night_date}"


def _instrument_value(instrument, key, source="instrument"):
    if key not in instrument:
        raise ConfigError(f"{source}: key '{key}' missing from the instrument description")
    return instrument[key]


DATE_OBS_STYLES = ("utc", "zone", "zone_colon", "z", "local")


def _zone_suffix(hours, colon=False):
    sign = "-" if hours < 0 else "+"
    total = round(abs(hours) * 60)
    return f"{sign}{total // 60:02d}{':' if colon else ''}{total % 60:02d}"


def header_style(h, frame, instrument, cfg):
    """Rewrite the time and frame-type cards of a raw header in ``cfg``'s conventions.

    The exposure start (UTC) stays the same instant; only how it is written changes: in local
    time (``utc_offset_hours``) with or without a zone suffix, with ``Z``, plus optional
    ``UT-OBS`` and rounded ``MJD-OBS`` keywords; without IMAGETYP or JD when asked.
    """
    if cfg.date_obs_style not in DATE_OBS_STYLES:
        raise ConfigError(f"simulate: date_obs_style {cfg.date_obs_style!r} is not one of {', '.join(DATE_OBS_STYLES)}")
    key = (instrument.get("keywords") or {}).get("date_obs") or "DATE-OBS"
    jd = float(frame["jd_start"])
    offset = float(cfg.utc_offset_hours or 0.0)
    local = _iso(jd + offset / 24.0)
    text = {"utc": _iso(jd), "z": _iso(jd) + "Z", "local": local,
            "zone": local + _zone_suffix(offset), "zone_colon": local + _zone_suffix(offset, colon=True)}
    if cfg.date_obs_style != "utc":
        where = {"utc": "UTC", "z": "UTC", "local": "local"}.get(cfg.date_obs_style, "local+zone")
        h[key] = (text[cfg.date_obs_style], f"{where} exposure start")
    if cfg.ut_obs:
        h["UT-OBS"] = (_iso(jd) + "-0000", "UTC of exposure start")
    if cfg.mjd_obs_decimals is not None:
        # Fixed decimals, as a camera writes them (a Python float would drop trailing zeros).
        n = int(cfg.mjd_obs_decimals)
        h.append(fits.Card.fromstring(f"{'MJD-OBS':8s}= {jd - 2400000.5:20.{n}f} / MJD of exposure start (rounded)"))
    if not cfg.write_jd:
        h.remove("JD", ignore_missing=True)
    if not cfg.write_imagetyp:
        h.remove((instrument.get("keywords") or {}).get("imagetyp") or "IMAGETYP", ignore_missing=True)
    return h


def _iso(jd):
    """ISO UTC string with milliseconds of JD(UTC) ``jd``."""
    return Time(jd, format="jd", scale="utc").isot[:23]


def _round_jd_to_ms(jd):
    """JD(UTC) of the ISO string written to DATE-OBS, so headers and truth agree exactly."""
    return Time(_iso(jd), format="isot", scale="utc").jd


def twilight_sky_e_per_s(sun_alt_deg, cfg):
    """Twilight sky rate (e-/s/px) at sun altitude ``sun_alt_deg`` (exponential in altitude)."""
    return cfg.twilight_sky_ref_e_per_s * 10 ** (0.4 * cfg.twilight_mag_per_deg
                                                 * (np.asarray(sun_alt_deg) - cfg.twilight_ref_alt_deg))


def scintillation_sigma(exptime_s, airmass, diameter_m, altitude_m, c_y=1.5, h_m=8000.0):
    """Relative scintillation noise (1 sigma): Osborn et al. (2015)'s modified Young approximation.

    ``sigma^2 = 1e-5 C_Y^2 D^(-4/3) t^-1 X^3 exp(-2 h / H)`` with D (m), t (s), h, H (m).
    """
    var = 1e-5 * c_y**2 * diameter_m ** (-4.0 / 3.0) / exptime_s * np.asarray(airmass) ** 3 \
        * np.exp(-2.0 * altitude_m / h_m)
    return np.sqrt(var)


def _place_stars(cfg, shape, rng, gain):
    """Base positions (px) and fluxes (e-/s) of the listed and field stars.

    Listed stars keep ``annulus_outer_px`` + pointing excursions away from the edges and
    ``min_separation_px`` from each other; the tracking star (1) is twice as isolated, from
    field stars too. Field stars stay ``annulus_outer_px + 10`` from the listed stars.
    """
    ny, nx = shape
    drift = np.hypot(*cfg.drift_px_per_h) * (cfg.n_science * (cfg.science_exptime_s + cfg.readout_s) / 3600.0)
    margin = cfg.annulus_outer_px + np.hypot(*cfg.jump_px) + drift + 4 * cfg.jitter_px + 5.0
    if cfg.stars:
        listed = [dict(s) for s in cfg.stars]
        x = np.array([float(s["x"]) for s in listed])
        y = np.array([float(s["y"]) for s in listed])
        flux = np.array([float(s["flux_e_per_s"]) for s in listed])
        n = len(listed)
    else:
        n = int(cfg.n_stars)
        if n < 2:
            raise ConfigError("simulate: n_stars must be >= 2 (target + tracking star)")
        if min(nx, ny) <= 2 * margin + 10:
            raise ConfigError(f"simulate: frame {nx}x{ny} too small for edge margin {margin:.0f} px")
        x, y = np.zeros(n), np.zeros(n)
        x[0] = 0.5 * (nx - 1) + rng.uniform(-0.05, 0.05) * nx
        y[0] = 0.5 * (ny - 1) + rng.uniform(-0.05, 0.05) * ny
        for k in range(1, n):
            sep = cfg.min_separation_px * (2.0 if k == 1 else 1.0)
            for _ in range(20000):
                cx, cy = rng.uniform(margin, nx - 1 - margin), rng.uniform(margin, ny - 1 - margin)
                d = np.hypot(x[:k] - cx, y[:k] - cy)
                if d.min() >= sep and (k < 2 or np.hypot(x[1] - cx, y[1] - cy) >= 2 * cfg.min_separation_px):
                    x[k], y[k] = cx, cy
                    break
            else:
                raise ConfigError(f"simulate: cannot place {n} stars {cfg.min_separation_px} px apart in {nx}x{ny}")
        lo, hi = cfg.comparison_flux_range_e_per_s
        flux = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
        flux[0] = cfg.target_flux_e_per_s
        flux[1] = cfg.tracking_flux_e_per_s
    role = np.array(["comparison"] * n, dtype=object)
    role[0], role[1] = "target", "tracking"
    if cfg.variable_star is not None and 1 < cfg.variable_star < n:
        role[cfg.variable_star] = "variable"
    if cfg.saturated_star and not cfg.stars and n > 3:
        # Peak of the pixel-integrated Moffat ~ (beta-1)/(pi alpha^2): aim at twice the ADC range.
        alpha = render.moffat_alpha(cfg.seeing_fwhm_px, cfg.moffat_beta)
        peak_frac = (cfg.moffat_beta - 1) / (np.pi * alpha**2)
        flux[n - 1] = 2 * render.ADC_MAX * gain / peak_frac / cfg.science_exptime_s
        role[n - 1] = "saturated"
    # Faint field stars: anywhere on the chip but clear of the listed stars' annuli.
    fx, fy = [], []
    for _ in range(int(cfg.n_field_stars)):
        for _ in range(2000):
            cx, cy = rng.uniform(5, nx - 6), rng.uniform(5, ny - 6)
            if (np.hypot(x - cx, y - cy).min() >= cfg.annulus_outer_px + 10
                    and np.hypot(x[1] - cx, y[1] - cy) >= 2 * cfg.min_separation_px):
                fx.append(cx)
                fy.append(cy)
                break
    lo, hi = cfg.field_flux_range_e_per_s
    fflux = np.exp(rng.uniform(np.log(lo), np.log(hi), len(fx)))
    return {"x0": np.concatenate([x, fx]), "y0": np.concatenate([y, fy]), "flux": np.concatenate([flux, fflux]),
            "role": np.concatenate([role, np.array(["field"] * len(fx), dtype=object)]),
            "listed": np.arange(n + len(fx)) < n, "n_listed": n}


def _tycho_stars(cfg, shape, wcs, ra_deg, dec_deg, dx0, dy0):
    """Real Tycho-2 stars around (RA, Dec) placed through ``wcs`` (the first science frame's).

    Base positions are the first frame's minus its pointing offset (``x = x0 + dx[i]`` in frame
    i, as for random fields). Flux (e-/s) = 10**(-0.4 (V_T - tycho_zeropoint_mag)). Star 0
    (target) is the star nearest the centre among the brightest tenth, star 1 (tracking) the
    brightest other star; all others are field stars.
    """
    from ..astrometry import tycho

    ny, nx = shape
    radius = 0.75 * np.hypot(nx, ny) * float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))
    cone = tycho.stars_in_cone(ra_deg, dec_deg, radius, cfg.tycho_index_dir, mag_limit=cfg.tycho_mag_limit)
    mag = np.asarray(cone.mag, float)
    x, y = wcs.all_world2pix(cone.ra, cone.dec, 0)
    on = np.isfinite(mag) & (x > -20) & (x < nx + 19) & (y > -20) & (y < ny + 19)
    x, y, mag = x[on], y[on], mag[on]
    if len(mag) < 2:
        raise ConfigError(f"simulate: only {len(mag)} Tycho-2 stars (V_T <= {cfg.tycho_mag_limit}) in the "
                          f"field at RA {ra_deg:.3f} Dec {dec_deg:.3f}")
    if cfg.tycho_extra_stars:
        rng = _rng(cfg.seed, "stars")
        n_extra = int(cfg.tycho_extra_stars)
        x = np.r_[x, rng.uniform(-20, nx + 19, n_extra)]
        y = np.r_[y, rng.uniform(-20, ny + 19, n_extra)]
        mag = np.r_[mag, rng.uniform(*cfg.tycho_extra_mag, n_extra)]
    order = np.argsort(mag, kind="stable")
    bright = order[: max(2, len(order) // 10)]
    target = bright[np.argmin(np.hypot(x[bright] - 0.5 * (nx - 1), y[bright] - 0.5 * (ny - 1)))]
    rest = [k for k in order if k != target]
    idx = np.array([target] + rest)
    role = np.array(["target", "tracking"] + ["field"] * (len(idx) - 2), dtype=object)
    return {"x0": x[idx] - dx0, "y0": y[idx] - dy0, "flux": 10 ** (-0.4 * (mag[idx] - cfg.tycho_zeropoint_mag)),
            "role": role, "listed": np.arange(len(idx)) < 2, "n_listed": 2, "mag": mag[idx]}


def _true_wcs(cfg, ra_deg, dec_deg, crpix_xy, scale_arcsec):
    """TAN WCS, north up / east left rotated by ``rotation_deg``, CRVAL at the target."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_deg, dec_deg]
    w.wcs.crpix = [crpix_xy[0] + 1.0, crpix_xy[1] + 1.0]  # FITS pixels are 1-based
    s = scale_arcsec / 3600.0
    th = np.radians(cfg.rotation_deg)
    w.wcs.cd = s * np.array([[-np.cos(th), np.sin(th)], [np.sin(th), np.cos(th)]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


def _flat_sequence(cfg, session, t_first, sun_jd, sun_alt, gain):
    """Start times, exposure times and mean sky levels (e-) of an auto-exposed twilight flat series."""
    n = cfg.n_flat_dusk if session == "dusk" else cfg.n_flat_dawn
    target_e = (cfg.flat_target_dusk_adu if session == "dusk" else cfg.flat_target_dawn_adu) * gain
    out = []
    t = t_first
    for _ in range(n):
        alt_now = np.interp(t, sun_jd, sun_alt)
        rate = twilight_sky_e_per_s(alt_now, cfg) + cfg.sky_e_per_s
        exptime = float(np.clip(round(target_e / rate, 1), cfg.flat_min_exptime_s, cfg.flat_max_exptime_s))
        t = _round_jd_to_ms(t)
        sample = t + (np.arange(16) + 0.5) / 16 * exptime / 86400.0
        level = float(np.mean(twilight_sky_e_per_s(np.interp(sample, sun_jd, sun_alt), cfg) + cfg.sky_e_per_s)
                      * exptime)
        out.append({"jd_start": t, "exptime": exptime, "sky_e": level, "sun_alt_deg": float(alt_now)})
        t = t + (exptime + cfg.readout_s) / 86400.0
    return out


def plan_night(cfg, instrument):
    """Times, geometry, stars and per-frame conditions of a night (everything but the pixels).

    Parameters
    ----------
    cfg : SimConfig
    instrument : dict
        Instrument file contents (``site``, ``shape``, ``gain_e_per_adu``...).

    Returns
    -------
    NightPlan
    """
    site = _instrument_value(instrument, "site")
    location = sim_site.site_location(site)
    shape = tuple(cfg.shape or instrument.get("shape") or (1024, 1024))
    gain = float(cfg.gain_e_per_adu or _instrument_value(instrument, "gain_e_per_adu"))
    rn_e = float(cfg.read_noise_e if cfg.read_noise_e is not None else _instrument_value(instrument, "read_noise_e"))
    try:
        day = Time(f"{cfg.night_date[:4]}-{cfg.night_date[4:6]}-{cfg.night_date[6:]}T00:00:00", scale="utc")
    except ValueError:
        raise ConfigError(f"simulate: date {cfg.night_date!r} is not YYYYMMDD") from None
    # Local solar midnight after the evening of `date` (longitude in deg east).
    anchor = day.jd + 1.0 - site["longitude_deg"] / 360.0
    sun_jd = np.arange(anchor - 0.42, anchor + 0.42, 2.0 / 1440.0)
    sun_alt = sim_site.sun_altitude(sun_jd, location)

    def crossing(alt, rising):
        a = sun_alt - alt
        idx = np.nonzero((a[:-1] < 0) & (a[1:] >= 0) if rising else (a[:-1] >= 0) & (a[1:] < 0))[0]
        if len(idx) == 0:
            raise ConfigError(f"simulate: the Sun does not cross {alt} deg on night {cfg.night_date} at this site")
        i = idx[0] if not rising else idx[-1]
        return float(sun_jd[i] + (sun_jd[i + 1] - sun_jd[i]) * a[i] / (a[i] - a[i + 1]))

    sunset, sunrise = crossing(-0.833, False), crossing(-0.833, True)
    astro_end, astro_start = crossing(-18.0, False), crossing(-18.0, True)
    midnight = 0.5 * (sunset + sunrise)

    frames = []
    # Bias and darks in the afternoon, before the dusk flats.
    t = sunset - cfg.calib_before_sunset_h / 24.0
    for i in range(cfg.n_bias):
        t = _round_jd_to_ms(t)
        frames.append({"kind": "bias", "index": i, "jd_start": t, "exptime": 0.0})
        t += cfg.readout_s / 86400.0
    for i in range(cfg.n_dark):
        t = _round_jd_to_ms(t)
        exptime = float(cfg.dark_exptimes_s[i % len(cfg.dark_exptimes_s)])
        frames.append({"kind": "dark", "index": i, "jd_start": t, "exptime": exptime})
        t += (exptime + cfg.readout_s) / 86400.0

    # Twilight flats: dusk starts when the auto-exposure reaches its minimum exposure time,
    # dawn when it falls to dawn_first_exptime_s.
    def alt_for_rate(rate):
        mag = np.log10(rate / cfg.twilight_sky_ref_e_per_s) / 0.4
        return cfg.twilight_ref_alt_deg + mag / cfg.twilight_mag_per_deg

    dusk_alt = alt_for_rate(cfg.flat_target_dusk_adu * gain / cfg.flat_min_exptime_s)
    dawn_alt = alt_for_rate(cfg.flat_target_dawn_adu * gain / cfg.dawn_first_exptime_s)
    flat_sessions = {"dusk": _flat_sequence(cfg, "dusk", crossing(dusk_alt, False), sun_jd, sun_alt, gain),
                     "dawn": _flat_sequence(cfg, "dawn", crossing(dawn_alt, True), sun_jd, sun_alt, gain)}
    # Darks of the flats' exposure time(s), after the other darks (ASTEP's SKYFLAT folder).
    flat_times = sorted({f["exptime"] for session in flat_sessions.values() for f in session})
    for j in range(int(cfg.n_flat_dark) if flat_times else 0):
        t = _round_jd_to_ms(t)
        exptime = float(flat_times[j % len(flat_times)])
        frames.append({"kind": "dark", "index": cfg.n_dark + j, "jd_start": t, "exptime": exptime,
                       "folder": "skyflat"})
        t += (exptime + cfg.readout_s) / 86400.0
    frng = _rng(cfg.seed, "flat_fields")
    ny, nx = shape
    for session in ("dusk", "dawn"):
        # Each session points at its own field; every flat is dithered so stars move between flats.
        lo, hi = cfg.flat_star_flux_range_e_per_s
        sx, sy = frng.uniform(0, nx, cfg.n_flat_stars), frng.uniform(0, ny, cfg.n_flat_stars)
        sflux = np.exp(frng.uniform(np.log(lo), np.log(hi), cfg.n_flat_stars))
        for i, f in enumerate(flat_sessions[session]):
            d = frng.normal(0.0, cfg.flat_dither_px, 2)
            lst = sim_site.local_sidereal_time_deg(f["jd_start"], location)[0]
            frames.append({"kind": "flat", "index": len(frames), "session": session, **f,
                           "ra_deg": float(lst), "dec_deg": float(site["latitude_deg"]), "airmass": 1.0,
                           "star_x": sx + d[0], "star_y": sy + d[1], "star_e": sflux * f["exptime"],
                           "fwhm_px": cfg.seeing_fwhm_px, "dx": float(d[0]), "dy": float(d[1])})

    # Science window centred on local midnight + science_center_h, with a gap at the re-acquisition.
    n = int(cfg.n_science)
    jump_frame = cfg.jump_frame if cfg.jump_frame is not None else n // 2
    cadence = cfg.science_exptime_s + cfg.readout_s
    rel = np.arange(n) * cadence + np.where(np.arange(n) >= jump_frame, cfg.jump_gap_s, 0.0)
    span = rel[-1] + cfg.science_exptime_s if n else 0.0
    centre = midnight + cfg.science_center_h / 24.0
    jd_start = np.array([_round_jd_to_ms(centre + (r - 0.5 * span) / 86400.0) for r in rel])
    jd_mid = jd_start + 0.5 * cfg.science_exptime_s / 86400.0
    if cfg.ra_deg is None or cfg.dec_deg is None:
        # High in the sky: on the meridian 30 min before the window centre, 6 deg from the zenith.
        ra = float(sim_site.local_sidereal_time_deg(centre, location)[0] - 7.5) % 360.0
        dec = float(site["latitude_deg"] + 6.0)
    else:
        ra, dec = float(cfg.ra_deg), float(cfg.dec_deg)
    alt, az = sim_site.target_altaz(jd_mid, ra, dec, location)
    if n and alt.min() < 20:
        raise ConfigError(f"simulate: target RA {ra:.2f} Dec {dec:.2f} is below 20 deg altitude during the window")
    airmass = 1.0 / np.sin(np.radians(alt))
    bjd = sim_site.bjd_tdb(jd_mid, ra, dec, location)
    sun_sci = np.interp(jd_mid, sun_jd, sun_alt)

    crng = _rng(cfg.seed, "conditions")
    hours = (jd_mid - centre) * 24.0
    ar = np.zeros(n)
    eps = crng.normal(0.0, cfg.seeing_noise, n)
    for i in range(n):  # AR(1) seeing noise: correlated over ~10 frames
        ar[i] = (0.9 * ar[i - 1] if i else 0.0) + np.sqrt(1 - 0.81) * eps[i]
    wave = 1 + cfg.seeing_wave_amplitude * np.sin(2 * np.pi * hours / cfg.seeing_wave_period_h + 1.0)
    fwhm = cfg.seeing_fwhm_px * airmass**0.6 * wave * np.exp(ar)
    t_h = (jd_mid - jd_mid[0]) * 24.0 if n else hours
    jitter = crng.normal(0.0, cfg.jitter_px, (n, 2))
    jumped = np.arange(n) >= jump_frame
    dx = cfg.drift_px_per_h[0] * t_h + jitter[:, 0] + np.where(jumped, cfg.jump_px[0], 0.0)
    dy = cfg.drift_px_per_h[1] * t_h + jitter[:, 1] + np.where(jumped, cfg.jump_px[1], 0.0)
    sky = (cfg.sky_e_per_s * (1 + 0.5 * (airmass - 1)) * (1 + cfg.sky_trend_per_h * hours)
           * (1 + cfg.sky_wave_amplitude * np.sin(2 * np.pi * hours / cfg.sky_wave_period_h))
           + twilight_sky_e_per_s(sun_sci, cfg))
    science = {"jd_start": jd_start, "jd_mid": jd_mid, "bjd_tdb_mid": bjd, "airmass": airmass, "alt_deg": alt,
               "az_deg": az, "sun_alt_deg": sun_sci, "fwhm_px": fwhm, "dx": dx, "dy": dy,
               "sky_e_per_s": sky, "jump_frame": int(jump_frame)}

    scale = _instrument_value(instrument, "plate_scale_arcsec_per_px")
    if cfg.star_field == "tycho":
        dx0, dy0 = (dx[0], dy[0]) if n else (0.0, 0.0)
        wcs = _true_wcs(cfg, ra, dec, (0.5 * (nx - 1) + dx0, 0.5 * (ny - 1) + dy0), scale)
        stars = _tycho_stars(cfg, shape, wcs, ra, dec, dx0, dy0)
    elif cfg.star_field == "random":
        stars = _place_stars(cfg, shape, _rng(cfg.seed, "stars"), gain)
    else:
        raise ConfigError(f"simulate: star_field {cfg.star_field!r} is not 'random' or 'tycho'")
    # Transit of star 0 and the variable star, on BJD_TDB at mid-exposure.
    t_mid_transit = centre + cfg.transit_offset_min / 1440.0
    t0 = float(sim_site.bjd_tdb(t_mid_transit, ra, dec, location)[0])
    inc = float(np.degrees(np.arccos(cfg.impact_parameter / cfg.a_rs)))
    transit = {"t0_bjd_tdb": t0, "period_d": cfg.transit_period_d, "rp_rs": cfg.rp_rs, "a_rs": cfg.a_rs,
               "inc_deg": inc, "impact_parameter": float(impact_parameter(cfg.a_rs, inc)), "u1": cfg.u1,
               "u2": cfg.u2, "limb_darkening": "quadratic",
               "depth_uniform": cfg.rp_rs**2,
               "depth_at_t0": float(1 - transit_model(t0, t0, cfg.transit_period_d, cfg.rp_rs, cfg.a_rs, inc,
                                                      cfg.u1, cfg.u2)[0]),
               "t14_min": float(total_duration(cfg.transit_period_d, cfg.rp_rs, cfg.a_rs, inc) * 1440.0),
               "time_scale": "BJD_TDB at mid-exposure"}
    science["transit"] = transit_model(bjd, t0, cfg.transit_period_d, cfg.rp_rs, cfg.a_rs, inc, cfg.u1, cfg.u2)
    variable = None
    if "variable" in set(stars["role"]):
        k = int(np.nonzero(stars["role"] == "variable")[0][0])
        t_ref = float(bjd[0]) if n else t0
        variable = {"index": k, "amplitude": cfg.variable_amplitude, "period_d": cfg.variable_period_d,
                    "phase_rad": cfg.variable_phase_rad, "t_ref_bjd_tdb": t_ref,
                    "model": "1 + amplitude * sin(2 pi (BJD_TDB - t_ref) / period + phase)"}
        science["variability"] = 1 + cfg.variable_amplitude * np.sin(
            2 * np.pi * (bjd - t_ref) / cfg.variable_period_d + cfg.variable_phase_rad)
    else:
        science["variability"] = np.ones(n)

    for i in range(n):
        frames.append({"kind": "science", "index": i, "jd_start": float(jd_start[i]),
                       "exptime": cfg.science_exptime_s, "ra_deg": ra, "dec_deg": dec,
                       "airmass": float(airmass[i])})
    frames.sort(key=lambda f: f["jd_start"])
    counter = 0
    for f in frames:
        f["date_obs"] = _iso(f["jd_start"])
        f["compressed"] = bool(cfg.gzip_every) and counter % cfg.gzip_every == cfg.gzip_every - 1
        counter += 1
        f["file"] = writer(cfg.layout).filename(f["kind"], f["date_obs"], cfg.target, cfg.filter, f["compressed"])
    names = [f["file"] for f in frames]
    if len(set(names)) != len(names):
        raise ConfigError("simulate: two frames start within the same second; increase readout_s")

    if cfg.star_field != "tycho":
        first = (stars["x0"][0] + (dx[0] if n else 0.0), stars["y0"][0] + (dy[0] if n else 0.0))
        wcs = _true_wcs(cfg, ra, dec, first, scale)
    sky_ra, sky_dec = wcs.all_pix2world(stars["x0"] + (dx[0] if n else 0), stars["y0"] + (dy[0] if n else 0), 0)
    site_info = {k: site[k] for k in ("latitude_deg", "longitude_deg", "altitude_m")} | {"name": site.get("name", "")}
    geometry = {"site": site_info,
                "sunset_utc": _iso(sunset), "sunrise_utc": _iso(sunrise),
                "astronomical_dusk_utc": _iso(astro_end), "astronomical_dawn_utc": _iso(astro_start),
                "local_midnight_utc": _iso(midnight), "window_centre_utc": _iso(centre),
                "science_start_utc": _iso(jd_start[0]) if n else None,
                "science_end_utc": _iso(jd_start[-1] + cfg.science_exptime_s / 86400.0) if n else None,
                "dusk_flat_sun_alt_deg": [f["sun_alt_deg"] for f in flat_sessions["dusk"]],
                "dawn_flat_sun_alt_deg": [f["sun_alt_deg"] for f in flat_sessions["dawn"]]}
    return NightPlan(cfg, instrument, shape, gain, rn_e, frames, stars, science, geometry, transit, variable, wcs,
                     {"ra_deg": np.asarray(sky_ra), "dec_deg": np.asarray(sky_dec), "ra": ra, "dec": dec})


def frame_wcs(plan, i):
    """True TAN WCS of science frame ``i``: the first frame's with CRPIX moved by the pointing offset."""
    w = plan.wcs.deepcopy()
    w.wcs.crpix = [w.wcs.crpix[0] + plan.science["dx"][i] - plan.science["dx"][0],
                   w.wcs.crpix[1] + plan.science["dy"][i] - plan.science["dy"][0]]
    w.wcs.set()
    return w


def first_frame_positions(plan):
    """True 0-based (x, y) of the listed stars in the first science frame (``targets.yaml`` order)."""
    n = plan.stars["n_listed"]
    dx = plan.science["dx"][0] if len(plan.science["dx"]) else 0.0
    dy = plan.science["dy"][0] if len(plan.science["dy"]) else 0.0
    return [[round(float(x + dx), 3), round(float(y + dy), 3)]
            for x, y in zip(plan.stars["x0"][:n], plan.stars["y0"][:n])]


def targets_yaml(plan, start_date=None, header=None):
    """bandersnatch ``targets.yaml`` text for the plan's target (tracking star 1)."""
    data = {"targets": {plan.cfg.target: [{"start_date": str(start_date or plan.cfg.night_date),
                                           "all_star_positions": first_frame_positions(plan),
                                           "tracking_star": 1,
                                           "ra": round(float(plan.star_sky["ra"]), 6),
                                           "dec": round(float(plan.star_sky["dec"]), 6)}]}}
    n = plan.stars["n_listed"]
    roles = ", ".join(f"{k} {r}" for k, r in enumerate(plan.stars["role"][:n]) if r != "comparison")
    return (f"# {header or 'Written by bandersnake.simulate'}: true 0-based positions in the first science frame.\n"
            f"# Star roles (truth.yaml): {roles}; the others are constant comparison stars.\n"
            + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def night_yaml(plan):
    """Per-night settings text with ``star0_positions`` for the plan's target."""
    x, y = first_frame_positions(plan)[0]
    data = {"centroid_settings": {"star0_positions": {plan.cfg.target: [x, y]}}}
    return (f"# {plan.night_id}: simulated demo night (bandersnake.simulate.demo_config).\n"
            + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


# --------------------------------------------------------------------------------------------------
# Rendering and writing
# --------------------------------------------------------------------------------------------------

def _science_star_electrons(plan, i, rng):
    """Expected e- of every star in science frame ``i`` and its realised scintillation factor."""
    cfg, sci, inst = plan.cfg, plan.science, plan.instrument
    nstar = len(plan.stars["flux"])
    model = np.ones(nstar)
    model[0] = sci["transit"][i]
    if plan.variable is not None:
        model[plan.variable["index"]] = sci["variability"][i]
    ext = 10 ** (-0.4 * cfg.extinction_mag_per_airmass * sci["airmass"][i])
    if cfg.scintillation:
        sc = inst.get("scintillation") or {}
        sigma = scintillation_sigma(cfg.science_exptime_s, sci["airmass"][i], inst["telescope_diameter_m"],
                                    inst["site"]["altitude_m"], sc.get("C_Y", 1.5), sc.get("H_m", 8000.0))
        scint = 1.0 + sigma * rng.standard_normal(nstar)
    else:
        sigma, scint = 0.0, np.ones(nstar)
    electrons = plan.stars["flux"] * model * ext * scint * cfg.science_exptime_s
    return electrons, model, ext, scint, float(sigma)


def _cosmics(plan, f, rng):
    cfg = plan.cfg
    if f["kind"] == "science" or (f["kind"] == "dark" and cfg.cr_in_darks):
        lam = cfg.cr_rate_per_mpix_s * plan.shape[0] * plan.shape[1] / 1e6 * f["exptime"]
        return render.cosmic_rays(plan.shape, rng, rng.poisson(lam), cfg.cr_mean_length_px, cfg.cr_median_e)
    return None


def render_frame(plan, det, f):
    """Raw uint16 pixels of frame ``f`` plus its truth rows.

    Returns
    -------
    data : ndarray, uint16
    star_rows : list of dict
        Science frames only: one row per star.
    cr : tuple or None
        Cosmic-ray hits (x, y, e-).
    extra : dict
        Per-frame truth (sky level...).
    """
    cfg = plan.cfg
    rng = _rng(cfg.seed, f["kind"], f["index"])
    t = f["exptime"]
    image = np.zeros(plan.shape, np.float32)
    star_rows, extra = [], {}
    if f["kind"] == "flat":
        image += np.float32(f["sky_e"])
        render.add_stars(image, f["star_x"], f["star_y"], f["star_e"], f["fwhm_px"], cfg.moffat_beta, cfg.psf_half_px)
        extra = {"sky_e_per_s_px": f["sky_e"] / t, "fwhm_px": f["fwhm_px"], "dx": f["dx"], "dy": f["dy"],
                 "sun_alt_deg": f["sun_alt_deg"], "session": f["session"]}
    elif f["kind"] == "science":
        i = f["index"]
        sci = plan.science
        e, model, ext, scint, sigma = _science_star_electrons(plan, i, _rng(cfg.seed, "scint", i))
        x = plan.stars["x0"] + sci["dx"][i]
        y = plan.stars["y0"] + sci["dy"][i]
        image += np.float32(sci["sky_e_per_s"][i] * t)
        render.add_stars(image, x, y, e, sci["fwhm_px"][i], cfg.moffat_beta, cfg.psf_half_px)
        for k in range(len(x)):
            star_rows.append({"frame": i, "file": f["file"], "star": k, "listed": bool(plan.stars["listed"][k]),
                              "role": plan.stars["role"][k], "x": x[k], "y": y[k],
                              "jd_mid_utc": sci["jd_mid"][i], "bjd_tdb_mid": sci["bjd_tdb_mid"][i],
                              "flux0_e_per_s": plan.stars["flux"][k],
                              "transit": sci["transit"][i] if k == 0 else 1.0,
                              "variability": model[k] if (plan.variable and k == plan.variable["index"]) else 1.0,
                              "flux_e_per_s": plan.stars["flux"][k] * model[k],
                              "airmass": sci["airmass"][i], "extinction": ext, "scint_sigma": sigma,
                              "scint_factor": scint[k], "expected_e": e[k], "fwhm_px": sci["fwhm_px"][i],
                              "dx": sci["dx"][i], "dy": sci["dy"][i], "sky_e_per_s_px": sci["sky_e_per_s"][i]})
        extra = {"sky_e_per_s_px": sci["sky_e_per_s"][i], "fwhm_px": sci["fwhm_px"][i], "dx": sci["dx"][i],
                 "dy": sci["dy"][i], "sun_alt_deg": sci["sun_alt_deg"][i], "bjd_tdb_mid": sci["bjd_tdb_mid"][i],
                 "crpix1": plan.wcs.wcs.crpix[0] + sci["dx"][i] - sci["dx"][0],
                 "crpix2": plan.wcs.wcs.crpix[1] + sci["dy"][i] - sci["dy"][0]}
    if f["kind"] != "bias":
        image *= det.flat
        image += det.dark_e_per_s * np.float32(t)
    cr = _cosmics(plan, f, _rng(cfg.seed, "cosmics", len(_STREAM) * f["index"] + _STREAM[f["kind"]]))
    data = render.expose(image, rng, det.bias_adu, plan.gain, plan.read_noise_e, cr, adc_max=2 ** plan.cfg.adc_bits - 1)
    extra["mean_adu"] = float(data.mean())
    extra["n_saturated"] = int(np.count_nonzero(data == 2 ** plan.cfg.adc_bits - 1))
    return data, star_rows, cr, extra


def _check_dirs(raw_root, truth_dir, night_dir, overwrite):
    raw_root, truth_dir = Path(raw_root).resolve(), Path(truth_dir).resolve()
    if truth_dir == raw_root or raw_root in truth_dir.parents:
        raise ConfigError(f"simulate: truth_dir {truth_dir} must not be inside the raw tree {raw_root}")
    # Files of the night: in the night folder, or (ASTEP) in its -CAMS* sub-folders.
    existing = [p for p in night_dir.glob("**/*") if is_raw_fits_name(p.name)] if night_dir.is_dir() else []
    if existing and not overwrite:
        raise ConfigError(f"simulate: {night_dir} already holds {len(existing)} FITS files; "
                          "remove them or pass overwrite=True (--overwrite)")
    for p in existing:
        p.unlink()


def _plain(value):
    """numpy scalars/arrays/tuples to plain Python for YAML."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def simulate_night(raw_root, truth_dir, config: SimConfig, instrument: dict, overwrite=False) -> dict:
    """Write a raw night and its ground truth; return the truth dictionary (``truth.yaml``).

    Parameters
    ----------
    raw_root : str or Path
        Top of the raw tree; frames go to ``<raw_root>/<INST>/images/<YYYYMMDD>/`` (layout
        "maxim") or ``<raw_root>/<YYYY-MM-DD>/<YYYY-MM-DD>-CAMS[_SKYFLAT]/`` (layout "astep").
    truth_dir : str or Path
        Folder for the truth products (must not be inside ``raw_root``).
    config : SimConfig
        See :func:`demo_config`, :func:`small_config`.
    instrument : dict
        Instrument file contents (``config/instruments/<INST>.yaml``).
    overwrite : bool
        Replace FITS files already in the night folder (else a ConfigError).

    Returns
    -------
    dict
        The contents of ``truth.yaml`` (plain Python types).
    """
    t_begin = time.perf_counter()
    cfg = config
    inst_name = instrument.get("name") or cfg.instrument
    out = writer(cfg.layout)
    if cfg.layout == "astep":
        night_dir = astep.night_dir(raw_root, cfg.night_date)
    else:
        night_dir = Path(raw_root) / inst_name / "images" / cfg.night_date
    truth_dir = Path(truth_dir)
    _check_dirs(raw_root, truth_dir, night_dir, overwrite)
    night_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)

    plan = plan_night(cfg, instrument)
    det = sim_detector.make_detector(plan.shape, _rng(cfg.seed, "detector"), cfg)
    log.info("simulating %s: %d frames %dx%d into %s", plan.night_id, len(plan.frames), plan.shape[1],
             plan.shape[0], night_dir)

    frame_rows, star_rows, cr_rows = [], [], []
    for f in plan.frames:
        data, rows, cr, extra = render_frame(plan, det, f)
        folder = night_dir / astep.folder(f, cfg.night_date) if cfg.layout == "astep" else night_dir
        hdr = header_style(out.header(f, instrument, cfg), f, instrument, cfg)
        if cfg.header_wcs and f["kind"] == "science":
            hdr.update(frame_wcs(plan, f["index"]).to_header())
        out.write_raw(folder / f["file"], data, hdr)
        star_rows += rows
        n_cr = 0
        if cr is not None and len(cr[0]):
            n_cr = len(cr[0])
            cr_rows += [{"file": f["file"], "type": f["kind"], "x": int(x), "y": int(y), "electrons": float(e)}
                        for x, y, e in zip(*cr)]
        frame_rows.append({"file": f["file"], "type": f["kind"], "session": extra.get("session", ""),
                           "date_obs": f["date_obs"], "exptime": f["exptime"], "jd_start_utc": f["jd_start"],
                           "jd_mid_utc": f["jd_start"] + 0.5 * f["exptime"] / 86400.0,
                           "bjd_tdb_mid": extra.get("bjd_tdb_mid", np.nan), "airmass": f.get("airmass", np.nan),
                           "sun_alt_deg": extra.get("sun_alt_deg", np.nan), "fwhm_px": extra.get("fwhm_px", np.nan),
                           "dx": extra.get("dx", np.nan), "dy": extra.get("dy", np.nan),
                           "sky_e_per_s_px": extra.get("sky_e_per_s_px", np.nan),
                           "crpix1": extra.get("crpix1", np.nan), "crpix2": extra.get("crpix2", np.nan),
                           "mean_adu": extra["mean_adu"], "n_saturated": extra["n_saturated"],
                           "n_cosmic_pixels": n_cr, "compressed": f["compressed"]})

    truth = _truth_dict(plan, det, night_dir, len(cr_rows))
    _write_truth(truth_dir, plan, det, truth, frame_rows, star_rows, cr_rows)
    elapsed = time.perf_counter() - t_begin
    log.info("wrote %d raw frames and the truth in %.1f s", len(plan.frames), elapsed)
    return truth


def _truth_dict(plan, det, night_dir, n_cr_pixels):
    cfg, inst = plan.cfg, plan.instrument
    n_listed = plan.stars["n_listed"]
    x_first = plan.stars["x0"] + (plan.science["dx"][0] if cfg.n_science else 0.0)
    y_first = plan.stars["y0"] + (plan.science["dy"][0] if cfg.n_science else 0.0)
    stars = [{"index": k, "role": str(plan.stars["role"][k]), "listed": bool(k < n_listed),
              "x_first": float(x_first[k]), "y_first": float(y_first[k]),
              "flux_e_per_s": float(plan.stars["flux"][k]),
              "ra_deg": float(plan.star_sky["ra_deg"][k]), "dec_deg": float(plan.star_sky["dec_deg"][k])}
             for k in range(len(plan.stars["flux"]))]
    sc = inst.get("scintillation") or {}
    kinds = [f["kind"] for f in plan.frames]
    sci = plan.science
    return _plain({
        "simulator": {"package_version": __version__, "seed": cfg.seed, "layout": cfg.layout,
                      "config": dataclasses.asdict(cfg)},
        "night": {"night_id": plan.night_id, "instrument": inst["name"], "date": cfg.night_date,
                  "raw_dir": str(night_dir), "shape": list(plan.shape), **plan.geometry,
                  "n_frames": {k: kinds.count(k) for k in ("bias", "dark", "flat", "science")}},
        "detector": {"gain_e_per_adu": plan.gain, "read_noise_e": plan.read_noise_e,
                     "read_noise_adu": plan.read_noise_e / plan.gain,
                     "bias_level_adu": float(np.mean(det.bias_adu)), "bias_level_config_adu": cfg.bias_level_adu,
                     "dark_current_e_per_s": cfg.dark_current_e_per_s,
                     "dark_current_adu_per_s": cfg.dark_current_e_per_s / plan.gain,
                     "median_dark_e_per_s": float(np.median(det.dark_e_per_s)),
                     "adc_max_adu": render.ADC_MAX, "saturation_adu_instrument": inst.get("saturation_adu"),
                     "n_bad_pixels": int(np.count_nonzero(det.bpm)),
                     "n_hot_bpm": int(np.count_nonzero(det.bpm & sim_detector.BPM_HOT)),
                     "n_dead_bpm": int(np.count_nonzero(det.bpm & sim_detector.BPM_DEAD)), **det.info},
        "target": {"name": cfg.target, "ra_deg": plan.star_sky["ra"], "dec_deg": plan.star_sky["dec"],
                   "ra": sim_site.sexagesimal(plan.star_sky["ra"], hours=True, plus=False),
                   "dec": sim_site.sexagesimal(plan.star_sky["dec"], precision=1), "filter": cfg.filter},
        "transit": plan.transit,
        "variable_star": plan.variable,
        "tracking_star": 1,
        "stars": stars,
        "n_listed_stars": int(n_listed),
        "psf": {"model": "Moffat, pixel-integrated, all flux in the stamp", "beta": cfg.moffat_beta,
                "stamp_half_px": cfg.psf_half_px, "fwhm_px_min": float(np.min(sci["fwhm_px"], initial=np.inf)),
                "fwhm_px_max": float(np.max(sci["fwhm_px"], initial=0))},
        "atmosphere": {"extinction_mag_per_airmass": cfg.extinction_mag_per_airmass,
                       "airmass_min": float(np.min(sci["airmass"], initial=np.inf)),
                       "airmass_max": float(np.max(sci["airmass"], initial=0)),
                       "scintillation": {"enabled": cfg.scintillation, "C_Y": sc.get("C_Y", 1.5),
                                         "H_m": sc.get("H_m", 8000.0), "D_m": inst["telescope_diameter_m"],
                                         "altitude_m": inst["site"]["altitude_m"]},
                       "sky_e_per_s_px": cfg.sky_e_per_s},
        "pointing": {"jump_frame": sci["jump_frame"], "jump_px": list(cfg.jump_px), "jump_gap_s": cfg.jump_gap_s,
                     "drift_px_per_h": list(cfg.drift_px_per_h), "jitter_px": cfg.jitter_px,
                     "rotation_deg": cfg.rotation_deg,
                     "plate_scale_arcsec_per_px": inst["plate_scale_arcsec_per_px"]},
        "cosmic_rays": {"rate_per_mpix_s": cfg.cr_rate_per_mpix_s, "in_darks": cfg.cr_in_darks,
                        "n_pixels": n_cr_pixels},
        "wcs": {k: v for k, v in plan.wcs.to_header().items()},
        "files": {"truth": "truth.yaml", "masters": "master_truth.fits", "frames": "frames.ecsv",
                  "stars": "stars.ecsv", "cosmic_rays": "cosmic_rays.ecsv", "wcs": "wcs.fits",
                  "targets": "targets.yaml"},
    })


def _table(rows, names):
    if rows:
        return Table(rows=[[r[n] for n in names] for r in rows], names=names)
    return Table(names=names)


def _write_truth(truth_dir, plan, det, truth, frame_rows, star_rows, cr_rows):
    cfg = plan.cfg
    prim = fits.PrimaryHDU()
    prim.header["GAIN"] = (plan.gain, "e-/ADU")
    prim.header["RDNOISE"] = (plan.read_noise_e, "e-")
    prim.header["SEED"] = cfg.seed
    prim.header["NIGHT"] = plan.night_id
    hdus = [prim]
    for name, arr, unit, comment in (("BIAS", det.bias_adu, "adu", "true bias level and structure"),
                                     ("DARK", det.dark_e_per_s / np.float32(plan.gain), "adu/s", "true dark rate"),
                                     ("FLAT", det.flat, "", "true relative response, median 1"),
                                     ("BPM", det.bpm, "", "1 hot, 2 dead/low response")):
        hdu = fits.ImageHDU(arr, name=name)
        hdu.header["BUNIT"] = unit
        hdu.header["COMMENT"] = comment
        hdus.append(hdu)
    write_fits(fits.HDUList(hdus), truth_dir / "master_truth.fits")
    wcs_hdu = fits.PrimaryHDU(header=plan.wcs.to_header())
    wcs_hdu.header["COMMENT"] = "True WCS of the first science frame; later frames: CRPIX shifted by (dx, dy)"
    write_fits(wcs_hdu, truth_dir / "wcs.fits")

    fcols = ["file", "type", "session", "date_obs", "exptime", "jd_start_utc", "jd_mid_utc", "bjd_tdb_mid",
             "airmass", "sun_alt_deg", "fwhm_px", "dx", "dy", "sky_e_per_s_px", "crpix1", "crpix2", "mean_adu",
             "n_saturated", "n_cosmic_pixels", "compressed"]
    ft = _table(frame_rows, fcols)
    for c, u in (("exptime", "s"), ("jd_start_utc", "d"), ("jd_mid_utc", "d"), ("bjd_tdb_mid", "d"),
                 ("sun_alt_deg", "deg"), ("fwhm_px", "pix"), ("dx", "pix"), ("dy", "pix"),
                 ("sky_e_per_s_px", "electron / (s pix)"), ("mean_adu", "adu")):
        ft[c].unit = u
    scols = ["frame", "file", "star", "listed", "role", "x", "y", "jd_mid_utc", "bjd_tdb_mid", "flux0_e_per_s",
             "transit", "variability", "flux_e_per_s", "airmass", "extinction", "scint_sigma", "scint_factor",
             "expected_e", "fwhm_px", "dx", "dy", "sky_e_per_s_px"]
    st = _table(star_rows, scols)
    st.meta["comment"] = ["x, y: true 0-based centre (px); flux_e_per_s: above the atmosphere incl. transit and",
                          "variability; expected_e = flux_e_per_s * extinction * scint_factor * exptime",
                          "(e- in the flat-fielded frame, all inside the 2*psf_half_px+1 square stamp)"]
    ct = _table(cr_rows, ["file", "type", "x", "y", "electrons"])
    for name, tab in (("frames.ecsv", ft), ("stars.ecsv", st), ("cosmic_rays.ecsv", ct)):
        with atomic_path(truth_dir / name) as tmp:
            tab.write(tmp, format="ascii.ecsv", overwrite=True)
    write_text(yaml.safe_dump(truth, sort_keys=False), truth_dir / "truth.yaml")
    write_text(targets_yaml(plan), truth_dir / "targets.yaml")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _default_instrument_path():
    local = Path("config/instruments/SPIRIT2.yaml")
    return local if local.exists() else Path(__file__).resolve().parents[3] / "config" / "instruments" / "SPIRIT2.yaml"


def load_instrument_file(path):
    """Instrument dict from a YAML file (validated against the schema, defaults filled)."""
    from ..config import load_yaml, validate

    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a mapping")
    return validate(data, "instrument.schema.yaml", str(path))


def _parse_set(items):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv=None):
    """``bandersnake-simulate``: write a simulated raw night and its truth."""
    parser = argparse.ArgumentParser(prog="bandersnake-simulate", description=main.__doc__)
    parser.add_argument("--raw-root", default="demo/raw", help="top of the raw tree (default demo/raw)")
    parser.add_argument("--truth-dir", default=None, help="truth folder (default demo/truth/<INST>_<DATE>)")
    parser.add_argument("--instrument", default=None, help="instrument YAML (default config/instruments/SPIRIT2.yaml)")
    parser.add_argument("--date", default=None, help="night date YYYYMMDD (evening, local)")
    parser.add_argument("--small", action="store_true", help="fast 256x256 test night")
    parser.add_argument("--layout", choices=sorted(_WRITERS), default=None,
                        help="raw layout: maxim (default) or astep (<raw_root>/YYYY-MM-DD/YYYY-MM-DD-CAMS*/)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--n-science", type=int, default=None)
    parser.add_argument("--no-gzip", action="store_true", help="write no .fits.gz files")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any SimConfig field (YAML value)")
    parser.add_argument("--overwrite", action="store_true", help="replace FITS files already in the night folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        inst_path = Path(args.instrument) if args.instrument else _default_instrument_path()
        instrument = load_instrument_file(inst_path)
        overrides = _parse_set(args.set)
        for key, value in (("date", args.date), ("seed", args.seed), ("n_science", args.n_science)):
            if value is not None:
                overrides[key] = value
        if args.layout:
            overrides["layout"] = args.layout
        if args.no_gzip:
            overrides["gzip_every"] = 0
        overrides.setdefault("instrument", instrument["name"])
        cfg = small_config(**overrides) if args.small else demo_config(**overrides)
        truth_dir = args.truth_dir or f"demo/truth/{instrument['name']}_{cfg.night_date}"
        t0 = time.perf_counter()
        truth = simulate_night(args.raw_root, truth_dir, cfg, instrument, overwrite=args.overwrite)
    except BandersnakeError as err:
        print(f"bandersnake-simulate: {err}", file=sys.stderr)
        return 2
    print(f"{truth['night']['raw_dir']}: {sum(truth['night']['n_frames'].values())} frames; truth in {truth_dir} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
