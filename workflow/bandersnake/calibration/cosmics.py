"""Cosmic-ray detection (L.A.Cosmic, van Dokkum 2001, via astroscrappy) on calibrated frames.

Gain is applied exactly once. Our calibrated SCI is already in electrons, so astroscrappy is
called with ``gain=1.0``, ``readnoise`` in e-, ``satlevel`` in e- and (when the product has an
ERR extension) ``invar = ERR**2`` in e-^2. astroscrappy 1.3 multiplies its input by ``gain``
internally and divides the cleaned image by it again on return (the older ``gain_apply``
switch is gone); with gain 1 both are no-ops, so the mask and the cleaned image are in e-.
Passing the camera gain here would count the gain twice and under-flag by ~sqrt(gain).

The result is OR-ed into bit 2 of the product's MASK; SCI is left untouched unless the caller
asks for the cleaned image (photometry prefers flagged pixels over interpolated ones).
"""

import logging
from dataclasses import dataclass

import astroscrappy
import numpy as np
from astropy.io import fits
from scipy import ndimage

from .mef import MASK_BAD, MASK_CR, MASK_SATURATED, read_calibrated
from ..errors import ConfigError, FrameError
from ..fitsio import write_fits

log = logging.getLogger(__name__)

#: astroscrappy parameters we accept from the config (``cosmics:`` block), with our defaults.
#: sigclip/sigfrac/objlim/niter follow astroscrappy; psffwhm only matters for fsmode='convolve'.
DEFAULTS = {
    "sigclip": 4.5,
    "sigfrac": 0.3,
    "objlim": 5.0,
    "niter": 4,
    "sepmed": True,
    "cleantype": "meanmask",
    "fsmode": "median",
    "psfmodel": "gauss",
    "psffwhm": 2.5,
    "psfsize": 7,
    "psfbeta": 4.765,
    "grow": 0,  # ours: dilate the CR mask by this many px (0 = none)
}


@dataclass
class CosmicResult:
    """Output of :func:`detect_cosmic_rays`.

    Attributes
    ----------
    mask : ndarray of bool
        True where a cosmic ray was found.
    clean : ndarray of float32 or None
        Image with CR pixels replaced (e-), when requested.
    n_pixels : int
        Number of flagged pixels.
    params : dict
        Parameters actually used (for the product header).
    """

    mask: np.ndarray
    clean: np.ndarray | None
    n_pixels: int
    params: dict


def cosmic_params(config=None):
    """Merge a ``cosmics`` config dict onto :data:`DEFAULTS`, rejecting unknown keys.

    Raises
    ------
    ConfigError
        For a key astroscrappy does not know (typos would otherwise be silently ignored).
    """
    config = dict(config or {})
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"cosmics: unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **config}
    if params["sigclip"] <= 0 or params["objlim"] <= 0 or params["niter"] < 1:
        raise ConfigError(f"cosmics: sigclip, objlim must be > 0 and niter >= 1 (got {params})")
    return params


def detect_cosmic_rays(sci_e, read_noise_e, saturation_e=np.inf, err_e=None, bad=None, config=None,
                       return_clean=False):
    """Find cosmic rays in a calibrated image.

    Parameters
    ----------
    sci_e : ndarray
        Calibrated image including the sky (e-); the noise model needs the sky level.
    read_noise_e : float
        Read noise (e-).
    saturation_e : float
        Saturation level (e-); pixels at or above it (and their saturated star) are protected.
    err_e : ndarray, optional
        1-sigma uncertainty (e-); used as astroscrappy's ``invar`` when given.
    bad : ndarray of bool, optional
        Pixels to ignore (bad, saturated, NaN); never reported as cosmic rays.
    config : dict, optional
        astroscrappy parameters, see :data:`DEFAULTS`.
    return_clean : bool
        Also return the cleaned image (e-).

    Returns
    -------
    CosmicResult
    """
    params = cosmic_params(config)
    sci = np.asarray(sci_e, dtype=np.float32)
    ignore = ~np.isfinite(sci)
    if bad is not None:
        ignore |= np.asarray(bad, dtype=bool)
    # NaNs poison the median filters; replace them by the median and keep them masked.
    data = np.where(ignore, np.nanmedian(sci[~ignore]) if (~ignore).any() else 0.0, sci).astype(np.float32)
    invar = None
    if err_e is not None:
        err = np.asarray(err_e, dtype=np.float32)
        good_err = np.isfinite(err) & (err > 0)
        fill = np.median(err[good_err]) if good_err.any() else read_noise_e
        invar = np.where(good_err, err, fill).astype(np.float32) ** 2
    kw = {k: params[k] for k in DEFAULTS if k != "grow"}
    crmask, clean = astroscrappy.detect_cosmics(
        data, inmask=ignore, invar=invar, gain=1.0, readnoise=float(read_noise_e),
        satlevel=float(saturation_e) if np.isfinite(saturation_e) else 1e30, verbose=False, **kw)
    crmask = np.asarray(crmask, dtype=bool)
    if params["grow"] > 0:
        crmask = ndimage.binary_dilation(crmask, iterations=int(params["grow"]))
    crmask &= ~ignore
    clean_out = None
    if return_clean:
        clean_out = np.where(crmask, clean, sci).astype(np.float32)
    return CosmicResult(crmask, clean_out, int(crmask.sum()), params)


def flag_cosmics_in_calibrated(cal_path, read_noise_e, saturation_e=np.inf, config=None, out_path=None,
                               replace_sci=False):
    """Detect cosmic rays in a calibrated MEF and OR them into MASK bit 2 (atomic rewrite).

    Parameters
    ----------
    cal_path : str or Path
        Calibrated product (SCI e-, ERR e-, MASK uint8).
    read_noise_e, saturation_e : float
        Detector read noise and saturation level (e-).
    config : dict, optional
        ``cosmics`` parameters (see :data:`DEFAULTS`).
    out_path : str or Path, optional
        Where to write; default rewrites ``cal_path`` in place.
    replace_sci : bool
        Replace CR pixels in SCI by astroscrappy's cleaned values (ERR and MASK still flag them).

    Returns
    -------
    int
        Number of pixels flagged as cosmic rays.

    Raises
    ------
    FrameError
        Unreadable or inconsistent product.
    """
    cal = read_calibrated(cal_path)
    bad = None
    if cal.mask is not None:
        bad = (cal.mask & (MASK_BAD | MASK_SATURATED)) > 0
    res = detect_cosmic_rays(cal.sci, read_noise_e, saturation_e, err_e=cal.err, bad=bad, config=config,
                             return_clean=replace_sci)
    mask = cal.mask if cal.mask is not None else np.zeros(cal.sci.shape, np.uint8)
    mask = (mask & ~np.uint8(MASK_CR)) | np.where(res.mask, np.uint8(MASK_CR), np.uint8(0))
    primary = cal.primary
    primary["CRNPIX"] = (res.n_pixels, "pixels flagged as cosmic rays (MASK bit 2)")
    primary["CRMETHOD"] = (f"astroscrappy {astroscrappy.__version__}", "L.A.Cosmic implementation")
    for key, name in (("sigclip", "CRSIGCLP"), ("sigfrac", "CRSIGFRC"), ("objlim", "CROBJLIM"), ("niter", "CRNITER")):
        primary[name] = (params_value(res.params[key]), f"astroscrappy {key}")
    primary["CRGAIN"] = (1.0, "gain passed to astroscrappy (SCI already in e-)")
    primary["CRRDNOIS"] = (float(read_noise_e), "[e-] read noise passed to astroscrappy")
    primary["CRCLEAN"] = (bool(replace_sci), "SCI CR pixels replaced by cleaned values")
    sci = res.clean if replace_sci else cal.sci
    hdus = [fits.PrimaryHDU(header=primary), fits.ImageHDU(sci.astype(np.float32), cal.sci_header, name="SCI")]
    with fits.open(cal_path, memmap=False) as hdul:
        names = [h.name.upper() for h in hdul]
        err_header = hdul["ERR"].header.copy() if "ERR" in names else None
        mask_header = hdul["MASK"].header.copy() if "MASK" in names else None
        extras = [h.copy() for h in hdul[1:] if h.name.upper() not in ("SCI", "ERR", "MASK")]
    if cal.err is not None:
        hdus.append(fits.ImageHDU(cal.err, err_header, name="ERR"))
    hdus.append(fits.ImageHDU(mask.astype(np.uint8), mask_header, name="MASK"))
    hdus.extend(extras)
    try:
        write_fits(fits.HDUList(hdus), out_path or cal_path)
    except OSError as err:
        raise FrameError(out_path or cal_path, f"cannot write ({err})") from None
    log.info("%s: %d cosmic-ray pixels", cal_path, res.n_pixels)
    return res.n_pixels


def params_value(value):
    """A FITS-card-friendly version of a parameter value."""
    return value.item() if isinstance(value, np.generic) else value
