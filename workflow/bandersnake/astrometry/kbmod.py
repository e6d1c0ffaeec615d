"""KBMOD-ready frames: science, mask, variance + WCS + mid-exposure MJD, one FITS per frame.

Conventions followed (KBMOD, github.com/dirac-institute/kbmod, checked in its source:
``kbmod.util_functions.load_deccam_layered_image``, ``ImageStackPy`` and the
``KBMODV0_5`` FITS standardizer):

* HDU 0: header only. ``MJD`` = mid-exposure time, UTC MJD (float; the first key KBMOD's
  legacy loader looks for, before ``DATE-AVG`` and ``MJD-OBS``); also ``DATE-AVG`` (ISO, UTC,
  ``TIMESYS = 'UTC'``), which the ``KBMODV0_5`` standardizer requires.
* HDU 1 science, HDU 2 mask, HDU 3 variance: KBMOD reads them **by position** in this order
  (science, mask, variance); we name them ``SCI``, ``MASK``, ``VAR`` for humans.
  Science in e-, background subtracted by default (KBMOD's likelihood assumes zero-mean sky;
  the subtracted level is in ``SKYSUB``); variance in e-^2 (= ERR^2, the same units squared).
* The WCS goes into every image header (the standardizer takes it from the science HDU).
* Mask: any non-zero value masks the pixel in KBMOD's legacy loader (``mask > 0`` -> NaN in
  ``ImageStackPy``). The value is an LSST-style bit field, so the ``KBMODV0_5`` standardizer's
  ``bit_flag_map`` understands it: our bit 1 bad -> ``BAD`` (1), 2 cosmic ray -> ``CR`` (8),
  4 saturated -> ``SAT`` (2), 8 neighbour of a bad pixel -> ``SUSPECT`` (128), non-finite
  SCI/ERR -> ``NO_DATA`` (256). The standardizer's default ``mask_flags`` are BAD, EDGE,
  NO_DATA, SUSPECT, UNMASKEDNAN: add ``"CR"`` and ``"SAT"`` to its ``mask_flags`` to mask
  those too (the legacy loader already masks everything non-zero).
"""

import math
import warnings

import numpy as np
from astropy.io import fits
from astropy.time import Time, TimeDelta
from astropy.wcs import WCS, FITSFixedWarning

from ..calibration.mef import MASK_BAD, MASK_CR, MASK_NEIGHBOUR, MASK_SATURATED, read_calibrated
from .solve import _wcs_cards, background_mesh, read_wcs, strip_wcs
from ..errors import FrameError
from ..fitsio import write_fits

#: Our MASK bit -> LSST/KBMOD bit value.
KBMOD_BITS = {MASK_BAD: 1, MASK_CR: 8, MASK_SATURATED: 2, MASK_NEIGHBOUR: 128}
KBMOD_NO_DATA = 256


def translate_mask(mask, sci=None, var=None):
    """Our uint8 MASK -> KBMOD/LSST-style int32 bit field (see module docstring).

    Parameters
    ----------
    mask : ndarray of uint8 or None
    sci, var : ndarray, optional
        Pixels where either is non-finite (or var <= 0) get ``NO_DATA``.
    """
    shape = (sci if mask is None else mask).shape
    out = np.zeros(shape, np.int32)
    if mask is not None:
        mask = np.asarray(mask)
        for ours, theirs in KBMOD_BITS.items():
            out[(mask & ours) > 0] |= theirs
    if sci is not None:
        out[~np.isfinite(sci)] |= KBMOD_NO_DATA
    if var is not None:
        out[~(np.isfinite(var) & (var > 0))] |= KBMOD_NO_DATA
    return out


def mid_exposure_mjd(header, date_obs_key="DATE-OBS", exptime_key="EXPTIME", date_obs_is="start"):
    """Mid-exposure UTC MJD from a header.

    Uses, in order: ``MJD-MID``; ``JD_UTC`` (mid-exposure JD, our product convention);
    ``DATE-OBS`` (+ ``EXPTIME`` / 2 when it marks the start).

    Raises
    ------
    ValueError
        When no usable time is present (callers turn it into a FrameError with the path).
    """
    if "MJD-MID" in header:
        return float(header["MJD-MID"])
    if "JD_UTC" in header:
        return float(header["JD_UTC"]) - 2400000.5
    if date_obs_key not in header:
        raise ValueError(f"no {date_obs_key}, JD_UTC or MJD-MID keyword")
    t = Time(str(header[date_obs_key]), scale="utc")
    if date_obs_is == "start":
        exptime = header.get(exptime_key)
        if exptime is None:
            raise ValueError(f"{date_obs_key} marks the exposure start but there is no {exptime_key}")
        t = t + TimeDelta(float(exptime) / 2.0, format="sec")
    return float(t.mjd)


def kbmod_hdulist(sci_e, var_e2, mask, wcs, mjd_mid, header=None, subtract_background=True, box=64):
    """Build the KBMOD frame (HDU 0 header, 1 SCI, 2 MASK, 3 VAR) from arrays.

    Parameters
    ----------
    sci_e : ndarray
        Calibrated image (e-).
    var_e2 : ndarray
        Variance (e-^2).
    mask : ndarray
        Our uint8 bitmask (1 bad, 2 CR, 4 saturated, 8 neighbour) or None.
    wcs : astropy.wcs.WCS or None
        Celestial WCS (KBMOD needs one to turn trajectories into RA/Dec).
    mjd_mid : float
        Mid-exposure time, UTC MJD.
    header : astropy.io.fits.Header, optional
        Source primary header: ``FILTER``, ``EXPTIME``, ``OBJECT`` and site keys are copied.
    subtract_background : bool
        Subtract a mesh background (e-) from the science layer.
    box : int
        Background mesh size (px).

    Returns
    -------
    astropy.io.fits.HDUList
    """
    sci = np.asarray(sci_e, dtype=np.float32)
    var = np.asarray(var_e2, dtype=np.float32)
    kmask = translate_mask(mask, sci, var)
    sky_level = 0.0
    if subtract_background:
        good = kmask == 0
        bkg, _ = background_mesh(np.where(good, sci, np.nan), box)
        sci = (sci - bkg).astype(np.float32)
        sky_level = float(np.nanmedian(bkg))
    primary = fits.Header()
    if header is not None:
        for key in ("OBJECT", "FILTER", "EXPTIME", "TELESCOP", "INSTRUME", "OBSERVAT", "OBS-LAT", "OBS-LONG",
                    "OBS-ELEV", "DATE-OBS", "AIRMASS", "JD_UTC", "BJD_TDB"):
            if key in header:
                primary[key] = header[key]
    primary["MJD"] = (float(mjd_mid), "[d] mid-exposure, UTC MJD (KBMOD obstime)")
    primary["DATE-AVG"] = (Time(mjd_mid, format="mjd", scale="utc").isot, "mid-exposure, UTC")
    primary["TIMESYS"] = "UTC"
    primary["SKYSUB"] = (sky_level, "[e-] median background subtracted from SCI")
    primary["BUNIT"] = "electron"
    primary["KBMASK"] = ("LSST bits", "MASK: BAD=1 SAT=2 CR=8 SUSPECT=128 NO_DATA=256")
    cards = _wcs_cards(wcs) if wcs is not None else fits.Header()
    primary.update(cards)
    hdus = [fits.PrimaryHDU(header=primary)]
    for data, name, unit in ((sci, "SCI", "electron"), (kmask, "MASK", ""), (var, "VAR", "electron2")):
        h = fits.ImageHDU(data, name=name)
        h.header.update(cards)
        if unit:
            h.header["BUNIT"] = unit
        h.header["MJD"] = primary["MJD"]
        hdus.append(h)
    return fits.HDUList(hdus)


def write_kbmod_frame(out_path, sci_e, var_e2, mask, wcs, mjd_mid, header=None, subtract_background=True):
    """Build (:func:`kbmod_hdulist`) and write one KBMOD frame atomically."""
    write_fits(kbmod_hdulist(sci_e, var_e2, mask, wcs, mjd_mid, header, subtract_background), out_path)


def kbmod_from_calibrated(cal_path, out_path, wcs=None, mjd_mid=None, date_obs_is="start",
                          subtract_background=True):
    """KBMOD frame from a calibrated product (SCI, ERR, MASK; WCS from its header unless given).

    Parameters
    ----------
    cal_path, out_path : str or Path
    wcs : astropy.wcs.WCS or str or Path, optional
        Solution (or header-only WCS file); default the product's own header WCS.
    mjd_mid : float, optional
        Mid-exposure UTC MJD; default from the header (:func:`mid_exposure_mjd`).
    date_obs_is : {'start', 'mid'}
        Meaning of DATE-OBS (instrument file).
    subtract_background : bool

    Raises
    ------
    FrameError
        Unreadable product, no ERR extension, no usable time or no celestial WCS.
    """
    cal = read_calibrated(cal_path)
    if cal.err is None:
        raise FrameError(cal_path, "no ERR extension: KBMOD needs a variance layer")
    header = cal.primary.copy()
    if mjd_mid is None:
        try:
            mjd_mid = mid_exposure_mjd(header, date_obs_is=date_obs_is)
        except ValueError as err:
            raise FrameError(cal_path, f"no mid-exposure time: {err}") from None
    if wcs is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, relax=True)
            if not wcs.has_celestial:
                wcs = WCS(cal.sci_header, relax=True)
        if not wcs.has_celestial:
            raise FrameError(cal_path, "no celestial WCS in the header (solve the frame first)")
    elif not isinstance(wcs, WCS):
        wcs = read_wcs(wcs)
    strip_wcs(header)
    var = np.where(np.isfinite(cal.err), cal.err.astype(np.float64) ** 2, np.nan).astype(np.float32)
    write_kbmod_frame(out_path, cal.sci, var, cal.mask, wcs, mjd_mid, header, subtract_background)


def read_kbmod_frame(path):
    """Read a KBMOD frame the way KBMOD's legacy loader does (by position) -- for checks.

    Returns
    -------
    dict
        ``sci`` (e-), ``mask`` (int32 LSST bits), ``var`` (e-^2), ``mjd`` (float), ``wcs``.
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            if len(hdul) < 4:
                raise FrameError(path, f"{len(hdul)} HDUs; a KBMOD frame has 4 (header, sci, mask, var)")
            mjd = hdul[0].header.get("MJD", math.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                wcs = WCS(hdul[1].header, relax=True)
            return {"sci": hdul[1].data.astype(np.float32), "mask": hdul[2].data.astype(np.int32),
                    "var": hdul[3].data.astype(np.float32), "mjd": float(mjd), "wcs": wcs}
    except FrameError:
        raise
    except FileNotFoundError:
        raise FrameError(path, "file not found") from None
    except Exception as err:
        raise FrameError(path, f"unreadable KBMOD frame ({type(err).__name__}: {err})") from None
