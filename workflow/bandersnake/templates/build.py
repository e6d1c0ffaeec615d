"""The first two steps of a template: the PSF kernel and the cell <-> tile mapping.

* :func:`write_psf` - the coarse instrument's optical PSF tabulated on the supersampled grid:
  a Gaussian of a given FWHM (arcsec), or an effective PSF measured on the coarse frame's own
  bright isolated stars (photutils' ``EPSFBuilder`` at ``k`` times oversampling) with the
  coarse pixel's box removed (Richardson-Lucy), because the box is applied again when the
  template is binned onto the coarse pixels.
* :func:`write_mapping` - which reference cells cover which tiles of the coarse grid, with the
  fine-pixel section each tile job reads (``mapping.ecsv``).
"""

import logging
import math

import numpy as np
from astropy.io import fits
from astropy.nddata import NDData
from astropy.stats import sigma_clipped_stats
from astropy.table import Table

from ..errors import BandersnakeError, FrameError
from ..fitsio import atomic_path, write_fits
from . import geometry
from .offsets import offset_margin
from .psf import FWHM_PER_SIGMA, array_kernel, box_deconvolve, gaussian_kernel

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
    peaks = find_peaks(np.nan_to_num(sub - med), threshold=snr_min * std / max(fwhm_px, 1.0),
                       box_size=2 * half + 1, border_width=half + 1)
    if peaks is None or len(peaks) == 0:
        return np.empty(0), np.empty(0), med
    x = np.asarray(peaks["x_peak"], float)
    y = np.asarray(peaks["y_peak"], float)
    v = np.asarray(peaks["peak_value"], float)
    keep = np.ones(len(x), bool)
    if saturation is not None:
        keep &= v + med < saturation
    # isolated: no other peak above 1 % of this one within 2 half-widths
    for i in range(len(x)):
        d2 = (x - x[i]) ** 2 + (y - y[i]) ** 2
        close = (d2 > 0) & (d2 < (2 * half) ** 2) & (v > 0.01 * v[i])
        if close.any():
            keep[i] = False
    order = np.argsort(-v[keep])[:n_max]
    return x[keep][order] + x0, y[keep][order] + y0, med


def measure_epsf(frame, k, fwhm_guess_px=2.0, saturation=None, n_max=200):
    """Optical PSF of the coarse frame, tabulated on the k-times supersampled grid.

    Parameters
    ----------
    frame : geometry.Frame
    k : int
        Supersampling factor (the ePSF's oversampling).
    fwhm_guess_px : float
        Rough FWHM (coarse px) used to size the star cut-outs.
    saturation : float or None
        Stars with a peak above this (frame units) are not used.

    Returns
    -------
    kernel : ndarray
        Normalised, odd-sized, pixel box removed.
    n_stars : int
    """
    from photutils.psf import EPSFBuilder, extract_stars

    data = read_frame_data(frame)
    x, y, sky = _isolated_stars(data, frame.region, fwhm_guess_px, n_max=n_max, saturation=saturation)
    if len(x) < 5:
        raise FrameError(frame.path, f"only {len(x)} bright isolated stars: cannot measure an ePSF "
                                     "(use psf: {model: gaussian, fwhm_arcsec: ...})")
    size = 2 * int(math.ceil(3 * fwhm_guess_px)) + 3
    stars = extract_stars(NDData(np.nan_to_num(data - sky)), Table({"x": x, "y": y}), size=(size, size))
    builder = EPSFBuilder(oversampling=k, maxiters=8, progress_bar=False)
    epsf, _ = builder(stars)
    table = np.asarray(epsf.data, float)
    if table.shape[0] % 2 == 0:
        table = table[:-1, :-1]
    kernel = box_deconvolve(table, k)
    log.info("ePSF from %d stars, %s supersampled px", len(x), kernel.shape)
    return kernel, len(x)


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
        kernel, n = measure_epsf(frame, k, fwhm_guess_px=guess, saturation=saturation)
        header["PSFMODEL"] = "epsf"
        header["NSTARS"] = (n, "stars in the ePSF")
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
