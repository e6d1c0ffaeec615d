"""The first two steps of a template: the PSF kernel and the cell <-> tile mapping.

* :func:`write_psf` - the coarse instrument's optical PSF tabulated on the supersampled grid:
  a Gaussian of a given FWHM (arcsec), or the PSF measured on the coarse frame's own bright
  isolated stars (``epsf``: elliptical Gaussians integrated over the coarse pixels fitted to
  them, so the pixel's box - applied again when the template is binned - is not counted twice).
* :func:`write_mapping` - which reference cells cover which tiles of the coarse grid, with the
  fine-pixel section each tile job reads (``mapping.ecsv``).
"""

import logging
import math

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats

from ..errors import BandersnakeError, FrameError
from ..fitsio import atomic_path, write_fits
from . import geometry
from .offsets import offset_margin
from .psf import FWHM_PER_SIGMA, array_kernel, gaussian_kernel

log = logging.getLogger(__name__)


def read_frame_data(frame):
    """The coarse frame's image (float64) as stored, from its image HDU."""
    try:
        with fits.open(frame.path, memmap=True) as hdul:
            return np.asarray(hdul[frame.hdu].data, dtype=np.float64)
    except (OSError, ValueError, TypeError) as err:
        raise FrameError(frame.path, f"unreadable coarse frame ({err})") from err


def _isolated_stars(data, region, fwhm_px, n_max=200, snr_min=50.0, saturation=None):
    """Positions (x, y) of bright, isolated, unsaturated stars of the coarse frame."""
    from photutils.detection import find_peaks

    x0, x1, y0, y1 = region
    sub = data[y0:y1, x0:x1]
    _, med, std = sigma_clipped_stats(sub[np.isfinite(sub)], sigma=3.0, maxiters=5)
    half = int(math.ceil(3 * fwhm_px)) + 2
    # small boxes: every neighbour is a peak of its own, so the isolation test below sees it
    peaks = find_peaks(np.nan_to_num(sub - med), threshold=3 * std, box_size=5, border_width=half + 1)
    if peaks is None or len(peaks) == 0:
        return np.empty(0), np.empty(0), med
    x = np.asarray(peaks["x_peak"], float)
    y = np.asarray(peaks["y_peak"], float)
    v = np.asarray(peaks["peak_value"], float)
    keep = v > snr_min * std / max(fwhm_px, 1.0)
    if saturation is not None:
        keep &= v + med < saturation
    # isolated: no other peak above 1 % of this one within the fit stamp (+ 1 px)
    iso = int(math.ceil(2 * fwhm_px)) + 3
    for i in range(len(x)):
        d2 = (x - x[i]) ** 2 + (y - y[i]) ** 2
        close = (d2 > 0) & (d2 < iso**2) & (v > 0.01 * v[i])
        if close.any():
            keep[i] = False
    order = np.argsort(-v[keep])[:n_max]
    return x[keep][order] + x0, y[keep][order] + y0, med


def _gauss_model(params, shape, sub=5):
    """Pixel-integrated elliptical Gaussian (+ constant) on a stamp (sub x sub samples per pixel).

    The covariance is ``cxx``, ``cyy`` and the correlation ``rho`` (``cxy = rho sqrt(cxx cyy)``), so
    every parameter set within the bounds (|rho| < 1) is a valid Gaussian.
    """
    flux, x0, y0, cxx, cyy, rho, b = params
    cxy = rho * np.sqrt(cxx * cyy)
    ny, nx = shape
    o = (np.arange(sub) + 0.5) / sub - 0.5
    ys = (np.arange(ny)[:, None] + o[None, :]).ravel()
    xs = (np.arange(nx)[:, None] + o[None, :]).ravel()
    dx = xs[None, :] - x0
    dy = ys[:, None] - y0
    det = cxx * cyy - cxy**2
    q = (cyy * dx**2 - 2 * cxy * dx * dy + cxx * dy**2) / det
    g = np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(det))
    g = g.reshape(ny, sub, nx, sub).mean(axis=(1, 3))
    return flux * g + b


def _fit_star(stamp, fwhm_px):
    """Covariance (cxx, cyy, cxy; coarse px^2) of a pixel-integrated elliptical Gaussian fitted to a star."""
    from scipy.optimize import least_squares

    ny, nx = stamp.shape
    s2 = (fwhm_px / 2.3548) ** 2
    b0 = float(np.median(np.concatenate([stamp[0], stamp[-1], stamp[:, 0], stamp[:, -1]])))
    p0 = [float(stamp.sum() - b0 * stamp.size), (nx - 1) / 2, (ny - 1) / 2, s2, s2, 0.0, b0]
    lo = [0, 0, 0, 0.01, 0.01, -0.95, -np.inf]
    hi = [np.inf, nx - 1, ny - 1, 100, 100, 0.95, np.inf]
    res = least_squares(lambda p: (_gauss_model(p, stamp.shape) - stamp).ravel(), p0, bounds=(lo, hi), x_scale="jac")
    cxx, cyy, rho = res.x[3:6]
    cxy = rho * math.sqrt(cxx * cyy)
    if not res.success or cxx * cyy - cxy**2 <= 0:
        return None
    return cxx, cyy, cxy


def measure_epsf(frame, k, fwhm_guess_px=2.0, saturation=None, n_max=100):
    """The coarse frame's optical PSF from its stars, tabulated on the k-times supersampled grid.

    Each bright, isolated, unsaturated star is fitted with an elliptical Gaussian integrated over
    the coarse pixels (so the pixel's own box is not counted in the PSF, which the template
    applies when binning); the PSF is the Gaussian of the median covariance. Wings beyond a
    Gaussian are not modelled (they remain in the difference image).

    Parameters
    ----------
    frame : geometry.Frame
    k : int
        Supersampling factor.
    fwhm_guess_px : float
        Rough FWHM (coarse px): star cut-out size and first guess.
    saturation : float or None
        Stars with a peak above this (frame units) are not used.

    Returns
    -------
    kernel : ndarray
        Normalised, odd-sized, on the supersampled grid.
    info : dict
        ``n_stars``, ``cxx``, ``cyy``, ``cxy`` (coarse px^2).
    """
    data = read_frame_data(frame)
    x, y, sky = _isolated_stars(data, frame.region, fwhm_guess_px, n_max=n_max, saturation=saturation)
    h = int(math.ceil(2 * fwhm_guess_px)) + 2
    fits_ = []
    for xi, yi in zip(x, y):
        xi, yi = int(round(xi)), int(round(yi))
        stamp = data[yi - h : yi + h + 1, xi - h : xi + h + 1]
        if stamp.shape != (2 * h + 1, 2 * h + 1) or not np.all(np.isfinite(stamp)):
            continue
        cov = _fit_star(stamp - sky, fwhm_guess_px)
        if cov is not None:
            fits_.append(cov)
    if len(fits_) < 3:
        raise FrameError(frame.path, f"only {len(fits_)} bright isolated stars could be fitted: cannot "
                                     "measure the PSF (use psf: {model: gaussian, fwhm_arcsec: ...})")
    cxx, cyy, cxy = np.median(np.array(fits_), axis=0)
    sig = math.sqrt(max(cxx, cyy))
    r = int(math.ceil(5 * sig * k)) + 1
    sub = 3
    o = ((np.arange(sub) + 0.5) / sub - 0.5) / k
    grid = (np.arange(-r, r + 1) / k)[:, None] + o[None, :]
    dx = grid.ravel()[None, :]
    dy = grid.ravel()[:, None]
    det = cxx * cyy - cxy**2
    g = np.exp(-0.5 * (cyy * dx**2 - 2 * cxy * dx * dy + cxx * dy**2) / det)
    n = 2 * r + 1
    kernel = g.reshape(n, sub, n, sub).mean(axis=(1, 3))
    log.info("PSF from %d stars: cxx %.4f cyy %.4f cxy %.4f coarse px^2 (FWHM %.3f px)", len(fits_), cxx, cyy, cxy,
             2.3548 * math.sqrt(0.5 * (cxx + cyy)))
    return kernel / kernel.sum(), dict(n_stars=len(fits_), cxx=cxx, cyy=cyy, cxy=cxy)


def write_psf(frame_path, out, *, model, k, fwhm_arcsec=None, saturation=None):
    """Write the PSF kernel file of a template (read back with :func:`read_psf`).

    Parameters
    ----------
    frame_path : str
        Coarse frame (its WCS gives the pixel scale; its stars the ePSF).
    model : {"gaussian", "epsf"}
    k : int
        Supersampling factor.
    fwhm_arcsec : float
        Gaussian FWHM (arcsec), for ``model = "gaussian"``; the ePSF's first guess otherwise.
    saturation : float or None
        Frame level above which stars are not used for the ePSF.
    """
    frame = geometry.read_frame(frame_path)
    scale = frame.pixel_scale_arcsec
    header = fits.Header()
    header["SUPERK"] = (k, "supersampled pixels per coarse pixel")
    header["PIXSCALE"] = (scale, "coarse pixel scale at the frame centre (arcsec)")
    if model == "gaussian":
        if not fwhm_arcsec:
            raise BandersnakeError("templates psf: model gaussian needs fwhm_arcsec")
        sigma = fwhm_arcsec / FWHM_PER_SIGMA / scale * k
        psf = gaussian_kernel(sigma)
        header["PSFMODEL"] = "gaussian"
        header["PSFSIGMA"] = (sigma, "Gaussian sigma (supersampled px)")
        header["FWHM"] = (fwhm_arcsec, "arcsec")
        kernel = psf.kernel
    elif model == "epsf":
        guess = (fwhm_arcsec / scale) if fwhm_arcsec else 2.0
        kernel, info = measure_epsf(frame, k, fwhm_guess_px=guess, saturation=saturation)
        header["PSFMODEL"] = "epsf"
        header["NSTARS"] = (info["n_stars"], "stars fitted")
        for key in ("cxx", "cyy", "cxy"):
            header[key.upper()] = (float(info[key]), "PSF covariance (coarse px^2)")
    else:
        raise BandersnakeError(f"templates psf: unknown model {model!r} (gaussian or epsf)")
    header["PSFRAD"] = (kernel.shape[0] // 2, "kernel half-size (supersampled px)")
    write_fits(fits.HDUList([fits.PrimaryHDU(kernel.astype(np.float64), header=header)]), out)
    return out


def read_psf(path):
    """PSFKernel from a file written by :func:`write_psf`."""
    with fits.open(path) as hdul:
        header = hdul[0].header
        if header["PSFMODEL"] == "gaussian":
            return gaussian_kernel(float(header["PSFSIGMA"]))
        return array_kernel(np.asarray(hdul[0].data, float), meta={"PSFMODEL": header["PSFMODEL"]})


def psf_margin(psf_path, offsets):
    """Coarse pixels drizzled around every tile: the kernel's radius plus the offsets' margin."""
    with fits.open(psf_path) as hdul:
        header = hdul[0].header
        radius = int(header["PSFRAD"]) / int(header["SUPERK"])
    return int(math.ceil(radius)) + offset_margin(offsets)


def write_mapping(frame_path, references, psf_path, out, *, tile_px, offsets, band_weights=None,
                  mask_suffix=None, reference_table=None):
    """Write ``mapping.ecsv``: one row per (reference cell, tile) that overlap.

    Raises
    ------
    BandersnakeError
        When no reference image overlaps the coarse frame.
    """
    frame = geometry.read_frame(frame_path)
    paths = geometry.expand_references(references, mask_suffix)
    bands = set(band_weights or {})
    cells = geometry.read_cells(paths, bands, mask_suffix, reference_table)
    margin = psf_margin(psf_path, offsets)
    table = geometry.build_mapping(frame, cells, tile_px, margin)
    if len(table) == 0:
        raise BandersnakeError(
            f"templates: none of the {len(paths)} reference images ({len(cells)} readable, of the "
            f"configured bands) overlaps the coarse frame {frame_path}"
        )
    table.meta["n_references"] = len(paths)
    with atomic_path(out) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    log.info("mapping: %d references, %d cells overlap, %d (cell, tile) pairs over %d tiles",
             len(paths), len(set(table["cell"])), len(table), table.meta["n_tiles"])
    return out
