"""The common tangent-plane grid of a stack and the resampling of one frame onto it.

Resampling is done here (not by ``reproject``'s functions) so one coordinate transformation serves
the image, its variance and every MASK bit: the output-to-input pixel map is computed exactly
(``astropy.wcs.utils.pixel_to_pixel``) on a coarse grid of nodes and interpolated bilinearly in
between (a TAN or TAN-SIP map is smooth: the interpolation error is below 1e-4 px on 16-px
nodes, see tests/test_stack.py), then ``scipy.ndimage.map_coordinates`` samples the arrays.
``tests/test_stack.py`` keeps the SCI result equal to ``reproject.reproject_interp`` with the same
interpolation order.

* SCI: bicubic spline (order 3) by default: bilinear interpolation at random sub-pixel shifts
  broadens a 3-px FWHM PSF by ~5 %, the cubic spline by < 1 %. Pixels flagged bad (bit 1) or
  cosmic ray (bit 2) are first replaced by a Gaussian-weighted mean of their good neighbours,
  so their garbage values never ring into good pixels through the spline.
* Variance (ERR**2): bilinear. The variance of one output pixel is interpolated, not reduced by
  the averaging of neighbours, so sums over apertures (where the correlation the resampling
  introduces matters) keep about the right variance.
* MASK: each bit resampled bilinearly as a 0/1 image; an output pixel gets the bit when any input
  pixel of that bit has a non-zero interpolation weight on it. A bad pixel never becomes good.
  Output pixels outside the frame get bit 1 (no data).
"""

import numpy as np
from astropy.wcs import WCS
from astropy.wcs.utils import pixel_to_pixel, proj_plane_pixel_scales
from scipy import ndimage

from ..calibration.mef import MASK_BAD, MASK_CR, MASK_NEIGHBOUR, MASK_SATURATED

MASK_BITS = (MASK_BAD, MASK_CR, MASK_SATURATED, MASK_NEIGHBOUR)
ORDERS = {"nearest": 0, "bilinear": 1, "bicubic": 3}


def pixel_scale_arcsec(wcs):
    """Mean pixel scale of a celestial WCS (arcsec/px)."""
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def frame_center(wcs, shape):
    """Sky position (RA, Dec in deg) of the centre of a frame of ``shape`` (ny, nx)."""
    ny, nx = shape
    ra, dec = wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
    return float(ra[0]), float(dec[0])


def mean_center(centres):
    """Mean of sky positions (deg) on the unit sphere (safe across RA = 0)."""
    ra, dec = np.radians(np.asarray(centres, float).T)
    v = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0), float(np.degrees(np.arcsin(v[2] / np.linalg.norm(v))))


def tangent_grid(ra_deg, dec_deg, scale_arcsec, shape):
    """North-up, east-left TAN WCS centred on (``ra_deg``, ``dec_deg``).

    Parameters
    ----------
    ra_deg, dec_deg : float
        Grid centre (deg, ICRS); the centre of pixel ((nx-1)/2, (ny-1)/2) (0-based).
    scale_arcsec : float
        Pixel scale (arcsec/px).
    shape : tuple of int
        ``(ny, nx)``.

    Returns
    -------
    astropy.wcs.WCS
    """
    ny, nx = (int(shape[0]), int(shape[1]))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = [float(ra_deg), float(dec_deg)]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    s = float(scale_arcsec) / 3600.0
    w.wcs.cd = np.array([[-s, 0.0], [0.0, s]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    w.pixel_shape = (nx, ny)
    return w


def footprint_shape(wcs_list, shapes, grid_wcs, margin_px=2):
    """Shape (ny, nx) of a grid centred on ``grid_wcs``'s CRVAL that holds every frame's footprint."""
    half_x = half_y = 0.0
    cx, cy = grid_wcs.wcs.crpix[0] - 1.0, grid_wcs.wcs.crpix[1] - 1.0
    for w, (ny, nx) in zip(wcs_list, shapes):
        xs = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2, (nx - 1) / 2, 0, nx - 1], float)
        ys = np.array([0, 0, ny - 1, ny - 1, 0, ny - 1, (ny - 1) / 2, (ny - 1) / 2], float)
        ra, dec = w.all_pix2world(xs, ys, 0)
        gx, gy = grid_wcs.all_world2pix(ra, dec, 0)
        half_x = max(half_x, float(np.max(np.abs(gx - cx))))
        half_y = max(half_y, float(np.max(np.abs(gy - cy))))
    return (2 * int(np.ceil(half_y + margin_px)) + 1, 2 * int(np.ceil(half_x + margin_px)) + 1)


def pixel_map(wcs_out, shape_out, wcs_in, step=16):
    """Input pixel coordinates (x, y; 0-based) of every output pixel centre.

    Exact (``pixel_to_pixel``) on nodes every ``step`` px (and on the last row/column), bilinear
    in between. ``step=1`` computes every pixel exactly.

    Returns
    -------
    x_in, y_in : ndarray, shape ``shape_out``
    """
    ny, nx = shape_out
    if step <= 1:
        yy, xx = np.mgrid[0:ny, 0:nx]
        return pixel_to_pixel(wcs_out.celestial, wcs_in.celestial, xx.astype(float), yy.astype(float))
    gx = np.unique(np.r_[np.arange(0, nx, step), nx - 1]).astype(float)
    gy = np.unique(np.r_[np.arange(0, ny, step), ny - 1]).astype(float)
    X, Y = np.meshgrid(gx, gy)
    xi, yi = pixel_to_pixel(wcs_out.celestial, wcs_in.celestial, X, Y)
    # Fractional node index of every output pixel, then bilinear interpolation of the node values.
    fy = np.interp(np.arange(ny), gy, np.arange(len(gy)))
    fx = np.interp(np.arange(nx), gx, np.arange(len(gx)))
    FY, FX = np.meshgrid(fy, fx, indexing="ij")
    coords = np.stack([FY, FX])
    x_in = ndimage.map_coordinates(xi, coords, order=1, mode="nearest")
    y_in = ndimage.map_coordinates(yi, coords, order=1, mode="nearest")
    return x_in, y_in


def fill_bad(sci, bad, sigma_px=1.5):
    """``sci`` with the ``bad`` pixels replaced by a Gaussian-weighted mean of good neighbours."""
    if not bad.any():
        return sci
    good = (~bad & np.isfinite(sci)).astype(np.float32)
    num = ndimage.gaussian_filter(np.where(good > 0, sci, 0.0).astype(np.float32), sigma_px, mode="nearest")
    den = ndimage.gaussian_filter(good, sigma_px, mode="nearest")
    fallback = float(np.nanmedian(sci[good > 0])) if good.any() else 0.0
    filled = np.where(den > 1e-3, num / np.maximum(den, 1e-3), fallback)
    return np.where(bad, filled, sci).astype(np.float32)


def resample_frame(sci, var, mask, wcs_in, wcs_out, shape_out, order="bicubic", step=16, affine=None):
    """One frame resampled onto the stack grid.

    Parameters
    ----------
    sci : ndarray
        Image (any unit, e.g. e-/s).
    var : ndarray or None
        Its variance (unit squared); None: not resampled.
    mask : ndarray of uint8 or None
        MASK bits (1 bad, 2 cosmic ray, 4 saturated, 8 near bad).
    wcs_in, wcs_out : astropy.wcs.WCS
    shape_out : tuple of int
        (ny, nx) of the grid.
    order : {'bicubic', 'bilinear', 'nearest'}
    step : int
        Node spacing (px) of the pixel map (:func:`pixel_map`).
    affine : tuple (A, t), optional
        Alignment correction: the true input pixel is ``A @ p + t`` where ``p`` is the pixel
        ``wcs_in`` predicts (:func:`bandersnake.stack.frames.align_to_reference`).

    Returns
    -------
    sci_out : ndarray of float32
        NaN outside the frame.
    var_out : ndarray of float32 or None
    mask_out : ndarray of uint8
        Bits carried through; bit 1 outside the frame.
    """
    ny_in, nx_in = sci.shape
    x_in, y_in = pixel_map(wcs_out, shape_out, wcs_in, step)
    if affine is not None:
        (a, b), (c, d) = np.asarray(affine[0], float)
        t = np.asarray(affine[1], float)
        x_in, y_in = a * x_in + b * y_in + t[0], c * x_in + d * y_in + t[1]
    coords = np.stack([y_in, x_in])
    # Outside: the output pixel centre is off the input frame by more than half a pixel.
    outside = (x_in < -0.5) | (x_in > nx_in - 0.5) | (y_in < -0.5) | (y_in > ny_in - 0.5) | ~np.isfinite(x_in)
    mask = np.zeros(sci.shape, np.uint8) if mask is None else mask
    bad = (mask & (MASK_BAD | MASK_CR)) > 0
    src = fill_bad(np.asarray(sci, np.float32), bad | ~np.isfinite(sci))
    k = ORDERS[order]
    sci_out = ndimage.map_coordinates(src, coords, order=k, mode="nearest", prefilter=k > 1).astype(np.float32)
    sci_out[outside] = np.nan
    var_out = None
    if var is not None:
        v = np.where(np.isfinite(var) & ~bad, var, 0.0).astype(np.float32)
        var_out = ndimage.map_coordinates(v, coords, order=1, mode="nearest").astype(np.float32)
        var_out[outside] = np.nan
    mask_out = np.zeros(shape_out, np.uint8)
    for bit in MASK_BITS:
        plane = (mask & bit) > 0
        if plane.any():
            touched = ndimage.map_coordinates(plane.astype(np.float32), coords, order=1, mode="nearest") > 1e-6
            mask_out[touched] |= np.uint8(bit)
    mask_out[outside] |= np.uint8(MASK_BAD)
    return sci_out, var_out, mask_out
