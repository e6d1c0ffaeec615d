"""Exact-overlap (drizzle, pixfrac = 1) resampling of a fine image onto a supersampled coarse grid.

Every fine (reference) pixel is a quadrilateral once its four corners are mapped onto the
output grid; its flux is shared among the output pixels in proportion to the exact area of
overlap (polygon clipping), so the flux of every fine pixel is conserved to rounding. No
interpolation is involved.

Beside the flux, each output pixel accumulates the area of good fine pixels that fell into it
and the flux-weighted first moment of the deposited light about the output pixel's centre.
The moments let the PSF convolution place the light of a sub-pixel source where it really is
(:mod:`.psf`), rather than at the centre of the output pixel that received it.

Coordinates: output pixel ``(v, u)`` (row, column) covers ``u <= s < u + 1``, ``v <= t < v + 1``
in the output's continuous coordinates ``(s, t)``; its centre is at ``(u + 0.5, v + 0.5)``.
"""

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _clip(xs, ys, n, axis, bound, keep_above, ox, oy):
    """Sutherland-Hodgman clip of polygon (xs, ys)[:n] by one axis-aligned half plane."""
    m = 0
    if n == 0:
        return 0
    px = xs[n - 1]
    py = ys[n - 1]
    pv = px if axis == 0 else py
    pin = pv >= bound if keep_above else pv <= bound
    for i in range(n):
        cx = xs[i]
        cy = ys[i]
        cv = cx if axis == 0 else cy
        cin = cv >= bound if keep_above else cv <= bound
        if cin != pin:
            f = (bound - pv) / (cv - pv)
            ox[m] = px + f * (cx - px)
            oy[m] = py + f * (cy - py)
            m += 1
        if cin:
            ox[m] = cx
            oy[m] = cy
            m += 1
        px = cx
        py = cy
        pv = cv
        pin = cin
    return m


@numba.njit(cache=True, inline="always")
def _area_centroid(xs, ys, n):
    """Area and centroid of a simple polygon (shoelace), whatever its orientation."""
    a = 0.0
    cx = 0.0
    cy = 0.0
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        cr = xs[i] * ys[j] - xs[j] * ys[i]
        a += cr
        cx += (xs[i] + xs[j]) * cr
        cy += (ys[i] + ys[j]) * cr
    if a == 0.0:
        return 0.0, 0.0, 0.0
    return abs(a) * 0.5, cx / (3.0 * a), cy / (3.0 * a)


@numba.njit(cache=True)
def _corner_row(mesh_s, mesh_t, step, row, ncols, out_s, out_t):
    """Output coordinates of the fine-pixel corners of corner row ``row`` (bilinear in the mesh)."""
    my = mesh_s.shape[0]
    mx = mesh_s.shape[1]
    fy = row / step
    iy = min(int(fy), my - 2)
    wy = fy - iy
    for c in range(ncols):
        fx = c / step
        ix = min(int(fx), mx - 2)
        wx = fx - ix
        a = (1 - wx) * mesh_s[iy, ix] + wx * mesh_s[iy, ix + 1]
        b = (1 - wx) * mesh_s[iy + 1, ix] + wx * mesh_s[iy + 1, ix + 1]
        out_s[c] = (1 - wy) * a + wy * b
        a = (1 - wx) * mesh_t[iy, ix] + wx * mesh_t[iy, ix + 1]
        b = (1 - wx) * mesh_t[iy + 1, ix] + wx * mesh_t[iy + 1, ix + 1]
        out_t[c] = (1 - wy) * a + wy * b


@numba.njit(cache=True)
def drizzle_add(data, good, mesh_s, mesh_t, step, flux, area, mom_s, mom_t):
    """Add one fine image to the accumulators of the output grid (in place).

    Parameters
    ----------
    data : ndarray (ny, nx), float32/64
        Fine image, flux per fine pixel (any unit; kept).
    good : ndarray (ny, nx), bool
        False for masked pixels, which add nothing at all (not even their footprint).
    mesh_s, mesh_t : ndarray (my, mx), float64
        Output coordinates ``s`` (column direction) and ``t`` (row direction) of the fine-pixel
        corners at corner indices ``0, step, 2 step, ..., >= n`` (see :func:`mesh_nodes`);
        corner ``(i, j)`` is the corner at fine coordinates ``(x, y) = (j - 0.5, i - 0.5)``.
        Corners in between are interpolated bilinearly (the mapping is smooth on that scale).
    step : int
        Corner-index spacing of the mesh nodes.
    flux, area, mom_s, mom_t : ndarray (nv, nu), float64
        Accumulators: deposited flux, good overlap area (output-pixel units), and the
        flux-weighted offsets of the deposited light from the output pixel's centre (output px).
    """
    ny, nx = data.shape
    nv, nu = flux.shape
    s0 = np.empty(nx + 1)
    t0 = np.empty(nx + 1)
    s1 = np.empty(nx + 1)
    t1 = np.empty(nx + 1)
    px = np.empty(4)
    py = np.empty(4)
    ax = np.empty(12)
    ay = np.empty(12)
    bx = np.empty(12)
    by = np.empty(12)
    cx = np.empty(12)
    cy = np.empty(12)
    _corner_row(mesh_s, mesh_t, step, 0, nx + 1, s0, t0)
    for i in range(ny):
        _corner_row(mesh_s, mesh_t, step, i + 1, nx + 1, s1, t1)
        for j in range(nx):
            if not good[i, j]:
                continue
            v = data[i, j]
            if not np.isfinite(v):
                continue
            px[0] = s0[j]
            py[0] = t0[j]
            px[1] = s0[j + 1]
            py[1] = t0[j + 1]
            px[2] = s1[j + 1]
            py[2] = t1[j + 1]
            px[3] = s1[j]
            py[3] = t1[j]
            smin = min(min(px[0], px[1]), min(px[2], px[3]))
            smax = max(max(px[0], px[1]), max(px[2], px[3]))
            tmin = min(min(py[0], py[1]), min(py[2], py[3]))
            tmax = max(max(py[0], py[1]), max(py[2], py[3]))
            if smax <= 0.0 or tmax <= 0.0 or smin >= nu or tmin >= nv:
                continue
            u0 = int(np.floor(smin))
            u1 = int(np.floor(smax))
            v0 = int(np.floor(tmin))
            v1 = int(np.floor(tmax))
            total, cs, ct = _area_centroid(px, py, 4)
            if total <= 0.0:
                continue
            if u0 == u1 and v0 == v1:
                # the whole fine pixel lands in one output pixel (most of them)
                if u0 >= 0 and v0 >= 0:
                    flux[v0, u0] += v
                    area[v0, u0] += total
                    mom_s[v0, u0] += v * (cs - u0 - 0.5)
                    mom_t[v0, u0] += v * (ct - v0 - 0.5)
                continue
            for vv in range(max(v0, 0), min(v1, nv - 1) + 1):
                n = _clip(px, py, 4, 1, float(vv), True, ax, ay)
                n = _clip(ax, ay, n, 1, float(vv + 1), False, bx, by)
                if n < 3:
                    continue
                for uu in range(max(u0, 0), min(u1, nu - 1) + 1):
                    m = _clip(bx, by, n, 0, float(uu), True, ax, ay)
                    m = _clip(ax, ay, m, 0, float(uu + 1), False, cx, cy)
                    if m < 3:
                        continue
                    a, ccs, cct = _area_centroid(cx, cy, m)
                    if a <= 0.0:
                        continue
                    f = v * (a / total)
                    flux[vv, uu] += f
                    area[vv, uu] += a
                    mom_s[vv, uu] += f * (ccs - uu - 0.5)
                    mom_t[vv, uu] += f * (cct - vv - 0.5)
        s0, s1 = s1, s0
        t0, t1 = t1, t0


def mesh_nodes(n, step):
    """Corner indices of the mesh nodes along an axis of ``n`` fine pixels (``n + 1`` corners).

    Nodes sit every ``step`` corners, the last one at or beyond corner ``n``, so every corner lies
    inside a mesh interval of uniform length.
    """
    return np.arange(0, n + step, step)[: -(-n // step) + 1]


@numba.njit(cache=True)
def fill_isolated(data, good, min_good=6):
    """Interpolate isolated masked pixels from their good neighbours (in place).

    A masked pixel with at least ``min_good`` good pixels among its 8 neighbours (a lone bad
    pixel, a bad column) is interpolated and becomes good: with all 8 neighbours good, the
    value at the centre of the least-squares quadratic surface through them
    (``sum(edges) / 2 - sum(corners) / 4``, exact for quadratics, so a star's peak is not
    flattened), else the mean of the good neighbours. Larger masked areas (saturated stars,
    cell edges, gaps) are left masked and contribute nothing.

    Parameters
    ----------
    data : ndarray (ny, nx), float64
    good : ndarray (ny, nx), bool

    Returns
    -------
    int
        Number of pixels filled.
    """
    ny, nx = data.shape
    todo_i = []
    todo_j = []
    todo_v = []
    for i in range(ny):
        for j in range(nx):
            if good[i, j]:
                continue
            n = 0
            s = 0.0
            edges = 0.0
            corners = 0.0
            for di in range(-1, 2):
                for dj in range(-1, 2):
                    ii = i + di
                    jj = j + dj
                    if (di != 0 or dj != 0) and 0 <= ii < ny and 0 <= jj < nx and good[ii, jj]:
                        n += 1
                        s += data[ii, jj]
                        if di == 0 or dj == 0:
                            edges += data[ii, jj]
                        else:
                            corners += data[ii, jj]
            if n >= min_good:
                todo_i.append(i)
                todo_j.append(j)
                # all 8 good: the centre of the least-squares quadratic surface through them
                # (exact for any quadratic, so a star's peak is not flattened); else their mean
                todo_v.append(0.5 * edges - 0.25 * corners if n == 8 else s / n)
    for m in range(len(todo_i)):
        data[todo_i[m], todo_j[m]] = todo_v[m]
        good[todo_i[m], todo_j[m]] = True
    return len(todo_i)
