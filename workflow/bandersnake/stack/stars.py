"""Bright-star measurements on one image: detection, centroids, FWHM (frame quality, alignment).

Small and quick on purpose: the stack stage runs them once per input frame. The stack's own
source catalogue and PSF are in :mod:`bandersnake.stack.sources`.
"""

import warnings

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from ..calibration.mef import MASK_BAD, MASK_CR, MASK_SATURATED


def _col(table, axis):
    """photutils 3 renamed ``xcentroid`` to ``x_centroid``: the name this table has."""
    return f"{axis}_centroid" if f"{axis}_centroid" in table.colnames else f"{axis}centroid"


def sky_stats(image, mask=None):
    """Sigma-clipped sky level and noise of an image (its units per pixel).

    Returns
    -------
    level, sigma : float
    """
    good = np.isfinite(image)
    if mask is not None:
        good &= (mask & (MASK_BAD | MASK_CR | MASK_SATURATED)) == 0
    vals = image[good]
    if vals.size > 200_000:  # a regular subsample is enough for two numbers
        vals = vals[:: vals.size // 200_000 + 1]
    _, med, std = sigma_clipped_stats(vals, sigma=3.0, maxiters=5)
    return float(med), float(std)


def find_bright_stars(image, mask=None, fwhm_px=3.0, nsigma=10.0, max_stars=100, edge_px=10):
    """Isolated, unsaturated bright stars of an image, brightest first.

    Parameters
    ----------
    image : ndarray
        Image with sky (any unit).
    mask : ndarray of uint8, optional
        MASK bits; stars with a bad/cosmic-ray/saturated pixel within 2 FWHM are dropped.
    fwhm_px : float
        Guess of the FWHM (px) for the finder's kernel.
    nsigma : float
        Detection threshold above the sky (sky sigma).
    max_stars : int
    edge_px : int
        Stars closer than this to the edge are dropped.

    Returns
    -------
    astropy.table.Table
        ``x``, ``y`` (0-based px), ``peak``, ``flux`` (DAOStarFinder units, above the sky).
    """
    from photutils.detection import DAOStarFinder

    sky, sigma = sky_stats(image, mask)
    data = np.where(np.isfinite(image), image - sky, 0.0)
    bad = None if mask is None else (mask & (MASK_BAD | MASK_CR | MASK_SATURATED)) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # NoDetectionsWarning: an empty table is the answer
        found = DAOStarFinder(threshold=nsigma * sigma, fwhm=fwhm_px, exclude_border=True)(data, mask=bad)
    empty = Table(names=("x", "y", "peak", "flux"), dtype=("f8",) * 4)
    if found is None or len(found) == 0:
        return empty
    x, y = np.asarray(found[_col(found, "x")], float), np.asarray(found[_col(found, "y")], float)
    flux, peak = np.asarray(found["flux"], float), np.asarray(found["peak"], float)
    ny, nx = image.shape
    keep = (x > edge_px) & (x < nx - 1 - edge_px) & (y > edge_px) & (y < ny - 1 - edge_px)
    # Isolated: no other detection within 4 FWHM.
    if len(x) > 1:
        d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
        np.fill_diagonal(d, np.inf)
        keep &= d.min(axis=1) > 4 * fwhm_px
    if mask is not None:
        r = int(np.ceil(2 * fwhm_px))
        flagged = (mask & (MASK_BAD | MASK_SATURATED)) > 0
        for k in np.nonzero(keep)[0]:
            xi, yi = int(round(x[k])), int(round(y[k]))
            if flagged[max(0, yi - r):yi + r + 1, max(0, xi - r):xi + r + 1].any():
                keep[k] = False
    order = np.argsort(-flux[keep])[:max_stars]
    sel = np.nonzero(keep)[0][order]
    return Table({"x": x[sel], "y": y[sel], "peak": peak[sel], "flux": flux[sel]})


def refine_centroids(image, x, y, fwhm_px, sky=0.0):
    """Centroids of stars refined by a 2-D Gaussian fit in a box of ~2.5 FWHM (px, 0-based).

    Returns
    -------
    x, y : ndarray
        NaN where the fit failed.
    """
    from photutils.centroids import centroid_2dg, centroid_sources

    box = int(2 * np.ceil(1.25 * fwhm_px) + 1)
    box = max(box, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xc, yc = centroid_sources(np.where(np.isfinite(image), image - sky, 0.0), x, y, box_size=box,
                                  centroid_func=centroid_2dg)
    return np.asarray(xc, float), np.asarray(yc, float)


def measure_fwhm(image, x, y, fwhm_guess=3.0, sky=0.0):
    """Median FWHM (px) of stars at (x, y) from circular Gaussian fits, NaN if none fits.

    Returns
    -------
    float
    """
    from photutils.psf import fit_fwhm

    if len(x) == 0:
        return float("nan")
    fit_shape = int(2 * np.ceil(1.5 * fwhm_guess) + 1)
    fit_shape = max(fit_shape, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            f = fit_fwhm(np.where(np.isfinite(image), image - sky, 0.0), xypos=np.column_stack([x, y]),
                         fwhm=fwhm_guess, fit_shape=fit_shape)
        except Exception:  # photutils raises on degenerate stamps; a frame without stars is judged by its caller
            return float("nan")
    f = np.asarray(f, float)
    f = f[np.isfinite(f) & (f > 0.5) & (f < 50)]
    return float(np.median(f)) if f.size else float("nan")
