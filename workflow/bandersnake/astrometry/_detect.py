"""Whole-frame passes of :func:`bandersnake.astrometry.solve.detect_sources` in one sweep each (numba).

The numpy version built the background and its RMS as two full-frame float64 images (bilinear
interpolation of the box grid, :func:`bandersnake.astrometry.solve._upsample`) and then
subtracted, masked and thresholded in more full-frame passes: ~3.7 CPU-s for a 4096x4096 frame,
more than the whole per-frame budget of an ASTEP night (issue 22). Here the bilinear value is
computed per pixel as it is used, with the same operations in the same order (float64, no
fast-math), so the results are bit-identical (tests/test_astrometry.py compares them).

Interpolation axes (``y0, y1, fy`` and ``x0, x1, fx``) are those of ``_upsample``: pixel ``i``
lies between box centres ``i0[i]`` and ``i1[i]`` at fraction ``f[i]``.
"""

import numba
import numpy as np
from numba import prange


@numba.njit(inline="always")
def _bilinear(grid, y0, y1, fy, x0, x1, fx, y, x):
    # rows = grid[y0] * (1 - fy) + grid[y1] * fy, then rows[x0] * (1 - fx) + rows[x1] * fx
    r0 = grid[y0[y], x0[x]] * (1.0 - fy[y]) + grid[y1[y], x0[x]] * fy[y]
    r1 = grid[y0[y], x1[x]] * (1.0 - fy[y]) + grid[y1[y], x1[x]] * fy[y]
    return r0 * (1.0 - fx[x]) + r1 * fx[x]


@numba.njit(parallel=True, nogil=True, cache=True)
def subtract_background(data, bad, grid, y0, y1, fy, x0, x1, fx, out):
    """``out = where(bad, 0, data - float32(background))`` (float32), rows in parallel."""
    ny, nx = data.shape
    for y in prange(ny):
        for x in range(nx):
            if bad[y, x]:
                out[y, x] = np.float32(0.0)
            else:
                out[y, x] = data[y, x] - np.float32(_bilinear(grid, y0, y1, fy, x0, x1, fx, y, x))


@numba.njit(parallel=True, nogil=True, cache=True)
def above_threshold(filt, grid, y0, y1, fy, x0, x1, fx, nsigma, denom, border):
    """Row and column (row-major order, as ``np.nonzero``) of the pixels at least ``border`` px
    from the edges where ``filt > nsigma * rms / denom``, ``rms`` interpolated from ``grid``."""
    ny, nx = filt.shape
    counts = np.zeros(ny, np.int64)
    for y in prange(border, ny - border):
        c = 0
        for x in range(border, nx - border):
            if filt[y, x] > nsigma * _bilinear(grid, y0, y1, fy, x0, x1, fx, y, x) / denom:
                c += 1
        counts[y] = c
    start = np.zeros(ny + 1, np.int64)
    for y in range(ny):
        start[y + 1] = start[y] + counts[y]
    py = np.empty(start[ny], np.int64)
    px = np.empty(start[ny], np.int64)
    for y in prange(border, ny - border):
        k = start[y]
        for x in range(border, nx - border):
            if filt[y, x] > nsigma * _bilinear(grid, y0, y1, fy, x0, x1, fx, y, x) / denom:
                py[k] = y
                px[k] = x
                k += 1
    return py, px


def bilinear_at(grid, axes, py, px):
    """The interpolated grid value at pixels ``(py, px)`` (numpy, same operations as above)."""
    y0, y1, fy, x0, x1, fx = axes
    r0 = grid[y0[py], x0[px]] * (1 - fy[py]) + grid[y1[py], x0[px]] * fy[py]
    r1 = grid[y0[py], x1[px]] * (1 - fy[py]) + grid[y1[py], x1[px]] * fy[py]
    return r0 * (1 - fx[px]) + r1 * fx[px]


@numba.njit(parallel=True, nogil=True, cache=True)
def local_peaks(filt, py, px, h):
    """True where ``filt[py, px]`` is the maximum of its ``(2h+1)^2`` neighbourhood (indices
    clipped at the edges, ties kept): the numpy neighbourhood gather of ``detect_sources`` without
    its ``n x (2h+1)^2`` array (2 million candidates on a crowded 4096x4096 frame: 2.4 -> ~0.05 CPU-s)."""
    ny, nx = filt.shape
    out = np.empty(py.shape[0], np.bool_)
    for i in prange(py.shape[0]):
        y, x = py[i], px[i]
        v = filt[y, x]
        peak = True
        for dy in range(-h, h + 1):
            yy = min(max(y + dy, 0), ny - 1)
            for dx in range(-h, h + 1):
                xx = min(max(x + dx, 0), nx - 1)
                if filt[yy, xx] > v:
                    peak = False
        out[i] = peak
    return out
