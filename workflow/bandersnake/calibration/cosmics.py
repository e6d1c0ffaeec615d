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
import math
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
#: ``psffwhm``/``psfsize`` None: from the seeing and the instrument's plate scale
#: (:func:`psf_settings`); ``protect_stars`` 'auto': on when the PSF is undersampled.
DEFAULTS = {
    "sigclip": 4.5,
    "sigfrac": 0.3,
    "objlim": 5.0,
    "niter": 4,
    "sepmed": True,
    "cleantype": "meanmask",
    "fsmode": "median",
    "psfmodel": "gauss",
    "psffwhm": None,
    "psfsize": None,
    "psfbeta": 4.765,
    "grow": 0,  # ours: dilate the CR mask by this many px (0 = none)
    "seeing_arcsec": 2.5,  # ours: typical seeing FWHM (arcsec), with the plate scale gives psffwhm
    "protect_stars": "auto",  # ours: mask star-like peaks before astroscrappy (see star_mask)
}
#: Ours, not astroscrappy's: resolved here, never passed to detect_cosmics.
OWN_KEYS = ("grow", "seeing_arcsec", "protect_stars")
#: A PSF narrower than this (FWHM, px) is undersampled: L.A.Cosmic's Laplacian cannot tell a star
#: core from a cosmic ray (5"/px frames: 0.75 % of the pixels flagged, every star core included),
#: so star-like peaks are protected (``protect_stars: auto``).
UNDERSAMPLED_FWHM_PX = 2.0
#: astroscrappy's own defaults, used when neither the config nor a plate scale gives the PSF.
ASTROSCRAPPY_PSF = {"psffwhm": 2.5, "psfsize": 7}


def psf_settings(seeing_arcsec, plate_scale_arcsec_per_px):
    """astroscrappy's PSF kernel settings for a seeing and a plate scale.

    Parameters
    ----------
    seeing_arcsec : float
        Seeing FWHM (arcsec).
    plate_scale_arcsec_per_px : float
        arcsec per pixel.

    Returns
    -------
    dict
        ``psffwhm`` (px, at least 0.5), ``psfsize`` (odd, 3..15 px: about three FWHM) and
        ``undersampled`` (FWHM below :data:`UNDERSAMPLED_FWHM_PX`).
    """
    fwhm = max(float(seeing_arcsec) / float(plate_scale_arcsec_per_px), 0.5)
    size = int(min(15, max(3, 2 * math.ceil(1.5 * fwhm) + 1)))
    return {"psffwhm": round(fwhm, 3), "psfsize": size, "undersampled": fwhm < UNDERSAMPLED_FWHM_PX}


def star_mask(image_e, read_noise_e, nsigma=3.0, min_fraction=0.05, grow=2):
    """Pixels around star-like peaks, to keep them out of the cosmic-ray search.

    A star, however undersampled, spreads light into its four neighbours on both axes (a
    Gaussian of FWHM 1 px puts ~9 % of its flux in each); a cosmic ray is one pixel or a track
    along one direction. A local maximum more than 5 sigma above the sky whose left+right and
    up+down neighbour sums both exceed ``nsigma`` times their noise and ``min_fraction`` of the
    peak is a star; it and ``grow`` px around it are returned.

    Parameters
    ----------
    image_e : ndarray
        Image with sky (e-).
    read_noise_e : float

    Returns
    -------
    ndarray of bool
    """
    img = np.asarray(image_e, dtype=np.float64)
    finite = np.isfinite(img)
    sky = float(np.median(img[finite])) if finite.any() else 0.0
    d = np.where(finite, img - sky, 0.0)
    sigma = math.sqrt(max(sky, 0.0) + float(read_noise_e) ** 2)
    pad = np.pad(d, 1, mode="edge")
    horizontal = pad[1:-1, :-2] + pad[1:-1, 2:]
    vertical = pad[:-2, 1:-1] + pad[2:, 1:-1]
    weaker = np.minimum(horizontal, vertical)
    peaks = (d > 5 * sigma) & (d == ndimage.maximum_filter(d, 3))
    stars = peaks & (weaker > nsigma * math.sqrt(2.0) * sigma) & (weaker > min_fraction * d)
    return ndimage.binary_dilation(stars, iterations=grow) if grow and stars.any() else stars


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


def cosmic_params(config=None, plate_scale_arcsec_per_px=None):
    """Merge a ``cosmics`` config dict onto :data:`DEFAULTS`, rejecting unknown keys, and resolve
    the PSF: ``psffwhm``/``psfsize`` left None follow ``seeing_arcsec`` and the plate scale
    (:func:`psf_settings`); ``protect_stars: auto`` becomes True when the PSF is undersampled.

    Parameters
    ----------
    config : dict, optional
        The night's ``cosmics`` settings.
    plate_scale_arcsec_per_px : float, optional
        The instrument's; without it the PSF is astroscrappy's default (FWHM 2.5 px).

    Raises
    ------
    ConfigError
        For a key astroscrappy does not know (typos would otherwise be silently ignored).
    """
    config = {k: v for k, v in dict(config or {}).items() if k != "replace_sci"}
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"cosmics: unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **config}
    if params["sigclip"] <= 0 or params["objlim"] <= 0 or params["niter"] < 1:
        raise ConfigError(f"cosmics: sigclip, objlim must be > 0 and niter >= 1 (got {params})")
    if plate_scale_arcsec_per_px:
        psf = psf_settings(params["seeing_arcsec"], plate_scale_arcsec_per_px)
    else:
        psf = dict(ASTROSCRAPPY_PSF, undersampled=False)
    for key in ("psffwhm", "psfsize"):
        if params[key] is None:
            params[key] = psf[key]
    if params["protect_stars"] == "auto":
        params["protect_stars"] = bool(params["psffwhm"] < UNDERSAMPLED_FWHM_PX)
    if params["psfsize"] % 2 == 0:
        params["psfsize"] += 1  # astroscrappy needs an odd kernel
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
    stars = None
    if params["protect_stars"] is True:
        stars = star_mask(data, read_noise_e) & ~ignore
        ignore = ignore | stars
    invar = None
    if err_e is not None:
        err = np.asarray(err_e, dtype=np.float32)
        good_err = np.isfinite(err) & (err > 0)
        fill = np.median(err[good_err]) if good_err.any() else read_noise_e
        invar = np.where(good_err, err, fill).astype(np.float32) ** 2
    kw = {k: params[k] for k in DEFAULTS if k not in OWN_KEYS}
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
