"""Exact circle-pixel overlap, multi-radius aperture sums and sigma-clipped annulus statistics.

The numba functions here are the per-star building blocks shared by the streaming kernel and
the traditional path (:mod:`bandersnake.kernel`); the plain-Python wrappers at the bottom
(:func:`aperture_sum`, :func:`annulus_stats`) apply them to a whole image and are what the
tests compare with photutils.

Conventions: pixel ``(j, i)`` of an image covers ``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]``
(0-based pixel centres, ``x`` = column). Images are in electrons (e-), radii in px.

* Aperture weights are the exact area of the pixel inside the circle, as photutils'
  ``method='exact'``.
* Annulus membership uses pixel centres (photutils' ``method='center'``, which is also what
  ``ApertureStats`` uses for every statistic but the sum): ``r_in**2 <= d**2 < r_out**2``.
* Sky clipping reproduces astropy's ``SigmaClip(sigma, maxiters, cenfunc='median',
  stdfunc='std')``: bounds ``median +- sigma * std`` (inclusive), iterated until nothing
  changes or ``maxiters`` is reached; the sky is the mean of the survivors and its scatter
  their standard deviation (ddof=0), as ``ApertureStats.mean`` / ``.std``.
"""

import hashlib
import math
import os
from pathlib import Path

import numba
import numpy as np


def _clear_stale_numba_cache():
    """Delete cached machine code when any numba source of the streaming core changed.

    numba's on-disk cache of a function is keyed on its own file only: editing ``centroid.py``
    or ``aperture.py`` would leave ``process_frame`` running stale inlined code. A hash of the
    three sources is kept beside the cache; on mismatch their cache files are removed.
    """
    here = Path(__file__).resolve().parent  # aperture.py is imported first by the other two
    names = ("aperture", "centroid", "kernel")
    digest = hashlib.sha256(b"".join((here / f"{n}.py").read_bytes() for n in names)).hexdigest()
    dirs = [here / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        dirs.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    for d in dirs:
        stamp = d / "bandersnake_core.sha256"
        try:
            if stamp.exists() and stamp.read_text() == digest:
                continue
            for n in names:
                for f in d.rglob(f"{n}.*.nb[ic]"):
                    f.unlink(missing_ok=True)
            if d.is_dir():
                stamp.write_text(digest)
        except OSError:
            pass   # read-only install: numba then compiles in memory


_clear_stale_numba_cache()

# Internal window-mask bits (uint8), the first four as the MASK extension of a calibrated frame.
MASK_BAD = 1          # bad pixel (hot/dead/invalid flat); its value is interpolated
MASK_COSMIC = 2       # cosmic ray (not set by the streaming kernel)
MASK_SATURATED = 4    # raw value at or above the saturation level
MASK_NEAR_BAD = 8     # within `grow` px of a bad pixel
MASK_OUTSIDE = 128    # window pixel lies outside the image (never written to disk)


@numba.njit(cache=True, inline="always")
def _g(x, h, r):
    """Integral of ``sqrt(r**2 - t**2) - h`` for t from 0 to x (|x| <= sqrt(r**2 - h**2))."""
    u = x / r
    if u > 1.0:
        u = 1.0
    elif u < -1.0:
        u = -1.0
    return 0.5 * (math.sqrt(max(1.0 - u * u, 0.0)) * x * r + r * r * math.asin(u) - 2.0 * h * x)


@numba.njit(cache=True, inline="always")
def _area_above(x0, x1, h, r):
    """Area of the circle (centre 0, radius r) with x0 < X < x1 and Y > h, for h >= 0."""
    if h >= r:
        return 0.0
    s = math.sqrt(r * r - h * h)
    a = min(max(x0, -s), s)
    b = min(max(x1, -s), s)
    return _g(b, h, r) - _g(a, h, r)


@numba.njit(cache=True, inline="always")
def _area_band(x0, x1, y0, y1, r):
    """Area of the circle inside x0 < X < x1, y0 < Y < y1 with 0 <= y0 < y1."""
    return _area_above(x0, x1, y0, r) - _area_above(x0, x1, y1, r)


@numba.njit(cache=True)
def circle_rect_overlap(x0, x1, y0, y1, r):
    """Exact area of the circle of radius ``r`` centred on the origin inside a rectangle.

    Parameters
    ----------
    x0, x1, y0, y1 : float
        Rectangle edges relative to the circle centre (px), ``x0 < x1``, ``y0 < y1``.
    r : float
        Radius (px), > 0.

    Returns
    -------
    float
        Overlap area (px**2).
    """
    if y0 < 0.0:
        if y1 <= 0.0:
            return _area_band(x0, x1, -y1, -y0, r)
        return _area_band(x0, x1, 0.0, -y0, r) + _area_band(x0, x1, 0.0, y1, r)
    return _area_band(x0, x1, y0, y1, r)


@numba.njit(cache=True)
def pixel_weight(dx, dy, r):
    """Fraction of the unit pixel centred at ``(dx, dy)`` (relative to the circle centre) in the circle."""
    ax = abs(dx)
    ay = abs(dy)
    nx = max(ax - 0.5, 0.0)
    ny = max(ay - 0.5, 0.0)
    if nx * nx + ny * ny >= r * r:
        return 0.0
    fx = ax + 0.5
    fy = ay + 0.5
    if fx * fx + fy * fy <= r * r:
        return 1.0
    # Fold into the first quadrant: the overlap is symmetric, and the rectangle
    # [ax-0.5, ax+0.5] x [ay-0.5, ay+0.5] keeps the arithmetic away from cancellations.
    return circle_rect_overlap(ax - 0.5, ax + 0.5, ay - 0.5, ay + 0.5, r)


@numba.njit(cache=True)
def aperture_sums(sci, err, msk, ox, oy, xc, yc, radii, out_sum, out_area, out_var,
                  out_nbad, out_nsat, out_nnan, out_nout):
    """Exact-overlap sums in several circular apertures on a window of an image.

    Parameters
    ----------
    sci, err : 2-D float64 arrays
        Window of the calibrated image and its 1-sigma error (e-); window pixel ``[j, i]`` is
        image pixel ``(x, y) = (ox + i, oy + j)``.
    msk : 2-D uint8 array
        Window mask bits (``MASK_*``); ``MASK_OUTSIDE`` marks pixels off the image.
    ox, oy : int
        Image coordinates of window pixel ``[0, 0]``.
    xc, yc : float
        Aperture centre in image coordinates (px, 0-based).
    radii : 1-D float64 array
        Aperture radii (px), any order.
    out_* : 1-D arrays of ``len(radii)``
        Filled with: sum of ``w * sci`` over in-image non-NaN pixels (e-), sum of ``w`` (px**2),
        sum of ``w**2 * err**2`` (e-**2), and the counts of pixels with ``w > 0`` that are bad,
        saturated, NaN or off the image.
    """
    nap = radii.shape[0]
    for k in range(nap):
        out_sum[k] = 0.0
        out_area[k] = 0.0
        out_var[k] = 0.0
        out_nbad[k] = 0
        out_nsat[k] = 0
        out_nnan[k] = 0
        out_nout[k] = 0
    # Radii in increasing order: per pixel, those below its nearest point get weight 0, those
    # beyond its farthest corner weight 1, and only the ones in between need the exact overlap.
    order = np.argsort(radii)
    rs = radii[order]
    rmax = rs[nap - 1]
    h, w = sci.shape
    i0 = max(int(math.floor(xc - rmax + 0.5)) - ox, 0)
    i1 = min(int(math.floor(xc + rmax + 0.5)) - ox, w - 1)
    j0 = max(int(math.floor(yc - rmax + 0.5)) - oy, 0)
    j1 = min(int(math.floor(yc + rmax + 0.5)) - oy, h - 1)
    for j in range(j0, j1 + 1):
        ay = abs((oy + j) - yc)
        ny_ = max(ay - 0.5, 0.0)
        fy = ay + 0.5
        for i in range(i0, i1 + 1):
            ax = abs((ox + i) - xc)
            nx_ = max(ax - 0.5, 0.0)
            fx = ax + 0.5
            near2 = nx_ * nx_ + ny_ * ny_
            far2 = fx * fx + fy * fy
            if rmax * rmax <= near2:
                continue
            m = msk[j, i]
            v = sci[j, i]
            e = err[j, i]
            outside = (m & MASK_OUTSIDE) != 0
            isnan = math.isnan(v)
            for q in range(nap):
                r = rs[q]
                if r * r <= near2:
                    continue
                wgt = 1.0 if r * r >= far2 else circle_rect_overlap(ax - 0.5, ax + 0.5, ay - 0.5, ay + 0.5, r)
                if wgt <= 0.0:
                    continue
                k = order[q]
                if outside:
                    out_nout[k] += 1
                    continue
                if isnan:
                    out_nnan[k] += 1
                    continue
                out_sum[k] += wgt * v
                out_area[k] += wgt
                out_var[k] += wgt * wgt * e * e
                if m & MASK_BAD:
                    out_nbad[k] += 1
                if m & MASK_SATURATED:
                    out_nsat[k] += 1


@numba.njit(cache=True)
def sigma_clip_sorted(vals, sigma, maxiters):
    """astropy-style sigma clipping (median centre, std scale) of sorted values.

    Because the values are sorted the survivors of each iteration form a contiguous slice.

    Parameters
    ----------
    vals : 1-D float64 array, sorted ascending, finite
    sigma : float
    maxiters : int

    Returns
    -------
    a, b : int
        Survivors are ``vals[a:b]``.
    """
    a = 0
    b = vals.shape[0]
    it = 0
    while it < maxiters and b > a:
        it += 1
        n = b - a
        if n % 2 == 1:
            med = vals[a + n // 2]
        else:
            med = 0.5 * (vals[a + n // 2 - 1] + vals[a + n // 2])
        std = np.std(vals[a:b])
        lo = med - sigma * std
        hi = med + sigma * std
        na = a
        while na < b and vals[na] < lo:
            na += 1
        nb = b
        while nb > na and vals[nb - 1] > hi:
            nb -= 1
        changed = (na != a) or (nb != b)
        a = na
        b = nb
        if not changed:
            break
    return a, b


@numba.njit(cache=True)
def annulus_values(sci, msk, excl, ox, oy, xc, yc, r_in, r_out, buf):
    """Collect the usable annulus pixel values of a window into ``buf``.

    A pixel belongs to the annulus when its centre satisfies ``r_in**2 <= d**2 < r_out**2``.
    Pixels off the image, NaN, bad (``MASK_BAD``), saturated or marked in ``excl`` are left out.

    Returns
    -------
    n : int
        Number of values written to ``buf``.
    n_nan : int
        Number of NaN pixels met in the annulus.
    """
    h, w = sci.shape
    rin2 = r_in * r_in
    rout2 = r_out * r_out
    i0 = max(int(math.floor(xc - r_out)) - ox, 0)
    i1 = min(int(math.ceil(xc + r_out)) - ox, w - 1)
    j0 = max(int(math.floor(yc - r_out)) - oy, 0)
    j1 = min(int(math.ceil(yc + r_out)) - oy, h - 1)
    n = 0
    n_nan = 0
    for j in range(j0, j1 + 1):
        dy = (oy + j) - yc
        for i in range(i0, i1 + 1):
            dx = (ox + i) - xc
            d2 = dx * dx + dy * dy
            if d2 < rin2 or d2 >= rout2:
                continue
            m = msk[j, i]
            if m & MASK_OUTSIDE:
                continue
            v = sci[j, i]
            if math.isnan(v):
                n_nan += 1
                continue
            if m & (MASK_BAD | MASK_SATURATED):
                continue
            if excl[j, i]:
                continue
            buf[n] = v
            n += 1
    return n, n_nan


@numba.njit(cache=True)
def clipped_stats(buf, n, sigma, maxiters):
    """Sort ``buf[:n]`` in place and return (mean, median, std, n_used) after sigma clipping."""
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    v = buf[:n]
    v.sort()
    a, b = sigma_clip_sorted(v, sigma, maxiters)
    if b <= a:
        return np.nan, np.nan, np.nan, 0
    s = v[a:b]
    m = b - a
    if m % 2 == 1:
        med = s[m // 2]
    else:
        med = 0.5 * (s[m // 2 - 1] + s[m // 2])
    return np.mean(s), med, np.std(s), m


# ----------------------------------------------------------------------------------------
# Whole-image wrappers (tests, notebooks): same numba code as the kernel.

def _window_of(image, mask=None):
    sci = np.ascontiguousarray(image, dtype=np.float64)
    msk = np.zeros(sci.shape, np.uint8) if mask is None else np.ascontiguousarray(mask, np.uint8)
    return sci, msk


def aperture_sum(image, x, y, radii, error=None, mask=None):
    """Exact-overlap aperture sums of ``image`` around ``(x, y)``.

    Parameters
    ----------
    image : 2-D array
        Image (e-).
    x, y : float
        Aperture centre (px, 0-based, x = column).
    radii : sequence of float
        Radii (px).
    error : 2-D array, optional
        1-sigma per-pixel error (e-); gives the returned variance.
    mask : 2-D uint8 array, optional
        ``MASK_*`` bits, used for the bad/saturated counts.

    Returns
    -------
    dict
        ``sum`` (e-), ``area`` (px**2 on the image), ``var`` (e-**2), ``n_bad``, ``n_sat``,
        ``n_nan``, ``n_off`` (pixel counts), each an array over ``radii``.
    """
    sci, msk = _window_of(image, mask)
    err = np.zeros_like(sci) if error is None else np.ascontiguousarray(error, np.float64)
    radii = np.atleast_1d(np.asarray(radii, np.float64))
    n = radii.size
    out = {k: np.zeros(n) for k in ("sum", "area", "var")}
    cnt = {k: np.zeros(n, np.int64) for k in ("n_bad", "n_sat", "n_nan", "n_off")}
    # Pad with an "outside" border so apertures crossing the edge count their off-image pixels.
    pad = int(math.ceil(radii.max())) + 2
    sci_p = np.pad(sci, pad)
    err_p = np.pad(err, pad)
    msk_p = np.pad(msk, pad, constant_values=MASK_OUTSIDE)
    aperture_sums(sci_p, err_p, msk_p, -pad, -pad, float(x), float(y), radii,
                  out["sum"], out["area"], out["var"], cnt["n_bad"], cnt["n_sat"],
                  cnt["n_nan"], cnt["n_off"])
    out.update(cnt)
    return out


def annulus_stats(image, x, y, r_in, r_out, sigma=3.0, maxiters=5, mask=None, exclude=None):
    """Sigma-clipped statistics of the annulus ``r_in <= d < r_out`` around ``(x, y)``.

    Returns
    -------
    mean, median, std : float
        Of the clipped pixel values (e-/px), as photutils ``ApertureStats`` with
        ``SigmaClip(sigma=sigma, maxiters=maxiters)``.
    n : int
        Number of pixels kept.
    """
    sci, msk = _window_of(image, mask)
    excl = np.zeros(sci.shape, np.bool_) if exclude is None else np.ascontiguousarray(exclude, np.bool_)
    buf = np.empty(sci.size, np.float64)
    n, _ = annulus_values(sci, msk, excl, 0, 0, float(x), float(y), float(r_in), float(r_out), buf)
    mean, med, std, m = clipped_stats(buf, n, float(sigma), int(maxiters))
    return mean, med, std, m
