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
    or ``aperture.py`` would leave ``process_frame`` running stale inlined code (and editing
    ``flags.py`` stale constants). A hash of the four sources is kept beside the cache; on
    mismatch their cache files are removed.
    """
    here = Path(__file__).resolve().parent  # aperture.py is imported first by the other two
    names = ("aperture", "centroid", "kernel")
    sources = [here / f"{n}.py" for n in names] + [here.parent / "flags.py"]  # flags: constants frozen into the kernel
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
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


# fdlibm's asin (e_asin.c, Sun Microsystems 1993): (asin(t) - t) / t as a rational function of
# t**2 on |t| < 0.5, and asin(t) = pi/2 - 2 asin(sqrt((1 - |t|) / 2)) above.
_PIO2_HI = 1.57079632679489655800e+00
_PIO2_LO = 6.12323399573676603587e-17
_PS = (1.66666666666666657415e-01, -3.25565818622400915405e-01, 2.01212532134862925881e-01,
       -4.00555345006794114027e-02, 7.91534994289814532176e-04, 3.47933107596021167570e-05)
_QS = (-2.40339491173441421878e+00, 2.02094576023350569471e+00, -6.88283971605453293030e-01,
       7.70381505559019352791e-02)


@numba.njit(cache=True, inline="always")
def _asin(u):
    """``asin(u)`` for ``|u| <= 1``, within 2 ulp of the C library's, and free of branches.

    fdlibm's method, with its 0.5 <= |u| < 0.975 refinement (1 ulp rather than 2) left out so
    that both ranges share one rational function and every choice is a select: a loop over it
    vectorises (~0.9 ns per value against ~3.7 ns for libm's ``asin``, which the aperture
    tables call ~330 times per star).
    """
    a = abs(u)
    small = a < 0.5
    t = u * u if small else 0.5 * (1.0 - a)
    num = t * (_PS[0] + t * (_PS[1] + t * (_PS[2] + t * (_PS[3] + t * (_PS[4] + t * _PS[5])))))
    den = 1.0 + t * (_QS[0] + t * (_QS[1] + t * (_QS[2] + t * _QS[3])))
    w = num / den
    s = math.sqrt(t)
    v = a + a * w if small else _PIO2_HI - (2.0 * (s + s * w) - _PIO2_LO)
    return v if u >= 0.0 else -v


@numba.njit(cache=True, inline="always")
def _p(x, r):
    """Twice the integral of ``sqrt(r**2 - t**2)`` for t from 0 to x (|x| <= r; clamped beyond)."""
    u = min(max(x / r, -1.0), 1.0)
    return math.sqrt(max(1.0 - u * u, 0.0)) * x * r + r * r * _asin(u)


@numba.njit(cache=True, error_model="numpy")
def _p_at(x, r, out):
    """``out[k] = _p(x[k], r)``; a separate function so that the loop vectorises (``r > 0``, no
    division can fail: numpy's error model drops the checks that would stop it)."""
    for k in range(x.shape[0]):
        out[k] = _p(x[k], r)


@numba.njit(cache=True, error_model="numpy")
def _chords_at(y, r, s, ps):
    """Chord half-widths ``s[k] = sqrt(r**2 - y[k]**2)`` (0 where ``|y[k]| >= r``) and ``ps[k] = _p(s[k], r)``."""
    for k in range(y.shape[0]):
        sk = math.sqrt(max(r * r - y[k] * y[k], 0.0))
        s[k] = sk
        ps[k] = _p(sk, r)


@numba.njit(cache=True, inline="always")
def _g(x, h, r):
    """Integral of ``sqrt(r**2 - t**2) - h`` for t from 0 to x (|x| <= sqrt(r**2 - h**2))."""
    return 0.5 * (_p(x, r) - 2.0 * h * x)


@numba.njit(cache=True, inline="always")
def _area_above(x0, x1, h, r):
    """Area of the circle (centre 0, radius r) with x0 < X < x1 and Y > h, for h >= 0."""
    if h >= r:
        return 0.0
    s = math.sqrt(r * r - h * h)
    a = min(max(x0, -s), s)
    b = min(max(x1, -s), s)
    if a == b:          # rectangle beyond the chord: g(b) - g(a) would be exactly 0.0
        return 0.0
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


@numba.njit(cache=True, inline="always")
def _above(x0, x1, px0, px1, h, r, s, ps):
    """:func:`_area_above` from ``s = sqrt(r**2 - h**2)`` and ``_p`` at ``x0``, ``x1`` and ``s``
    (``_p`` is odd: ``_p(-s) = -_p(s)``), without evaluating ``_p``."""
    if h >= r:
        return 0.0
    if x0 < -s:
        a = -s
        pa = -ps
    elif x0 > s:
        a = s
        pa = ps
    else:
        a = x0
        pa = px0
    if x1 < -s:
        b = -s
        pb = -ps
    elif x1 > s:
        b = s
        pb = ps
    else:
        b = x1
        pb = px1
    if a == b:
        return 0.0
    return 0.5 * (pb - 2.0 * h * b) - 0.5 * (pa - 2.0 * h * a)


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

    Notes
    -----
    The weight of a pixel the circle cuts is the exact overlap of :func:`circle_rect_overlap`
    (rows folded onto ``y >= 0``; columns kept signed, the band integral handles them). Its
    costly part, ``_p`` (an ``asin`` and a ``sqrt``), is needed at the column edges and at the
    chord ends ``sqrt(r**2 - h**2)`` of the row edges only: both are computed once per radius
    and edge (shared by the two pixels an edge separates) and each weight is then a few
    products (:func:`_above`).

    With radii in increasing order, a pixel has weight 0 for the radii up to its nearest
    point, an exact partial weight for the (one or two) radii that cut it, and weight 1 for
    all the larger ones. The latter are added once, to the first such radius, and summed
    over radii at the end (a cumulative sum), so a pixel costs O(1) rather than O(radii).
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
    order = np.argsort(radii)
    rs = radii[order]
    r2s = np.empty(nap)
    for q in range(nap):
        r2s[q] = rs[q] * rs[q]
    rmax = rs[nap - 1]
    h, w = sci.shape
    i0 = max(int(math.floor(xc - rmax + 0.5)) - ox, 0)
    i1 = min(int(math.floor(xc + rmax + 0.5)) - ox, w - 1)
    j0 = max(int(math.floor(yc - rmax + 0.5)) - oy, 0)
    j1 = min(int(math.floor(yc + rmax + 0.5)) - oy, h - 1)
    if i1 < i0 or j1 < j0:
        return
    ncol = i1 - i0 + 1
    nrow = j1 - j0 + 1
    # Edges (signed, relative to the centre) of the columns and rows; per radius, _p at the
    # column edges, and the chord half-width s and _p(s) at the row edges.
    xe = np.empty(ncol + 1)
    for c in range(ncol + 1):
        xe[c] = ((ox + i0 + c) - xc) - 0.5
    ye = np.empty(nrow + 1)
    for e in range(nrow + 1):
        ye[e] = ((oy + j0 + e) - yc) - 0.5
    pxe = np.empty((nap, ncol + 1))
    sre = np.empty((nap, nrow + 1))
    pse = np.empty((nap, nrow + 1))
    ps_r = np.empty(nap)
    for q in range(nap):
        r = rs[q]
        ps_r[q] = _p(r, r)
        # At every edge (|x| >= r + 1 is never read): whole vectorised rows beat skipping.
        _p_at(xe, r, pxe[q])
        _chords_at(ye, r, sre[q], pse[q])
    # Full-weight contributions, by the first (sorted) radius that holds the whole pixel.
    f_sum = np.zeros(nap)
    f_var = np.zeros(nap)
    f_cnt = np.zeros((5, nap), np.int64)      # pixels, bad, saturated, NaN, off the image
    r2max = r2s[nap - 1]
    q_near = 0
    for j in range(j0, j1 + 1):
        jr = j - j0
        ay = abs((oy + j) - yc)
        ny_ = max(ay - 0.5, 0.0)
        fy = ay + 0.5
        ny2 = ny_ * ny_
        fy2 = fy * fy
        ylo = ye[jr]
        yhi = ye[jr + 1]
        for i in range(i0, i1 + 1):
            ax = abs((ox + i) - xc)
            nx_ = max(ax - 0.5, 0.0)
            near2 = nx_ * nx_ + ny2
            if r2max <= near2:
                continue
            fx = ax + 0.5
            far2 = fx * fx + fy2
            m = msk[j, i]
            v = sci[j, i]
            e = err[j, i]
            outside = (m & MASK_OUTSIDE) != 0
            isnan = math.isnan(v)
            # First radius reaching past the pixel's nearest point (r2s[q] > near2; the largest
            # does). It changes by a step or none from one pixel to the next: moved from the
            # previous pixel's, rather than counted up from 0 with a trip count that varies
            # from pixel to pixel (a mispredicted loop exit per pixel).
            q = q_near
            while q > 0 and r2s[q - 1] > near2:
                q -= 1
            while r2s[q] <= near2:
                q += 1
            q_near = q
            # Radii cutting the pixel: exact weights.
            ic = i - i0
            x0 = xe[ic]
            x1 = xe[ic + 1]
            while q < nap and r2s[q] < far2:
                r = rs[q]
                px0 = pxe[q, ic]
                px1 = pxe[q, ic + 1]
                if ylo >= 0.0:
                    wgt = (_above(x0, x1, px0, px1, ylo, r, sre[q, jr], pse[q, jr])
                           - _above(x0, x1, px0, px1, yhi, r, sre[q, jr + 1], pse[q, jr + 1]))
                elif yhi <= 0.0:
                    wgt = (_above(x0, x1, px0, px1, -yhi, r, sre[q, jr + 1], pse[q, jr + 1])
                           - _above(x0, x1, px0, px1, -ylo, r, sre[q, jr], pse[q, jr]))
                else:
                    # Central row: two bands from the axis, as circle_rect_overlap.
                    a0 = _above(x0, x1, px0, px1, 0.0, r, r, ps_r[q])
                    wgt = ((a0 - _above(x0, x1, px0, px1, -ylo, r, sre[q, jr], pse[q, jr]))
                           + (a0 - _above(x0, x1, px0, px1, yhi, r, sre[q, jr + 1], pse[q, jr + 1])))
                if wgt > 0.0:
                    k = order[q]
                    if outside:
                        out_nout[k] += 1
                    elif isnan:
                        out_nnan[k] += 1
                    else:
                        out_sum[k] += wgt * v
                        out_area[k] += wgt
                        out_var[k] += wgt * wgt * e * e
                        if m & MASK_BAD:
                            out_nbad[k] += 1
                        if m & MASK_SATURATED:
                            out_nsat[k] += 1
                q += 1
            if q < nap:
                if outside:
                    f_cnt[4, q] += 1
                elif isnan:
                    f_cnt[3, q] += 1
                else:
                    f_sum[q] += v
                    f_var[q] += e * e
                    f_cnt[0, q] += 1
                    if m & MASK_BAD:
                        f_cnt[1, q] += 1
                    if m & MASK_SATURATED:
                        f_cnt[2, q] += 1
    # A full pixel of radius q is full for every larger radius: cumulative sums over radii.
    s = 0.0
    sv = 0.0
    c0 = 0
    c1 = 0
    c2 = 0
    c3 = 0
    c4 = 0
    for q in range(nap):
        s += f_sum[q]
        sv += f_var[q]
        c0 += f_cnt[0, q]
        c1 += f_cnt[1, q]
        c2 += f_cnt[2, q]
        c3 += f_cnt[3, q]
        c4 += f_cnt[4, q]
        k = order[q]
        out_sum[k] += s
        out_area[k] += c0
        out_var[k] += sv
        out_nbad[k] += c1
        out_nsat[k] += c2
        out_nnan[k] += c3
        out_nout[k] += c4


_SIGN = np.uint64(1) << np.uint64(63)
_BYTE = np.uint64(0xFF)
_SIGN32 = np.uint32(1) << np.uint32(31)


@numba.njit(cache=True, inline="always")
def _bit_span(varying):
    """Lowest and highest set bit of a nonzero uint64 (the bits in which sort keys differ)."""
    low = 0
    while (varying >> np.uint64(low)) & np.uint64(1) == 0:
        low += 1
    top = 63
    while (varying >> np.uint64(top)) & np.uint64(1) == 0:
        top -= 1
    return low, top


@numba.njit(cache=True)
def _radix3(keys, work, low, bits, to_float64):
    """:func:`radix_sort` of keys whose varying bits lie in ``[low, low + 3 * bits)``, ``bits <= 11``.

    Three fixed passes with the three histograms counted in one read: written out rather than
    looped over digits, this runs ~3x faster than the general loop (~11 us for 1225 values).
    ``keys`` (uint64 or uint32) are left sorted; with ``to_float64`` turned back into the float64
    bits they were made from.
    """
    n = keys.shape[0]
    nb = 1 << bits
    m = np.uint64(nb - 1)
    s0 = np.uint64(low)
    s1 = np.uint64(low + bits)
    s2 = np.uint64(low + 2 * bits)
    c0 = np.zeros(nb, np.int64)
    c1 = np.zeros(nb, np.int64)
    c2 = np.zeros(nb, np.int64)
    for i in range(n):
        k = keys[i]
        c0[(k >> s0) & m] += 1
        c1[(k >> s1) & m] += 1
        c2[(k >> s2) & m] += 1
    t0 = 0
    t1 = 0
    t2 = 0
    for b in range(nb):
        x = c0[b]
        c0[b] = t0
        t0 += x
        x = c1[b]
        c1[b] = t1
        t1 += x
        x = c2[b]
        c2[b] = t2
        t2 += x
    for i in range(n):
        k = keys[i]
        b = (k >> s0) & m
        work[c0[b]] = k
        c0[b] += 1
    for i in range(n):
        k = work[i]
        b = (k >> s1) & m
        keys[c1[b]] = k
        c1[b] += 1
    for i in range(n):
        k = keys[i]
        b = (k >> s2) & m
        work[c2[b]] = k
        c2[b] += 1
    if to_float64:
        for i in range(n):
            k = work[i]
            keys[i] = k ^ _SIGN if k & _SIGN else ~k
    else:
        for i in range(n):
            keys[i] = work[i]


@numba.njit(cache=True)
def _radix_float32(v, keys, work):
    """Sort float32-exact ``v`` on 32-bit keys (3 passes); False, ``v`` untouched, if one is not.

    Values of both signs make the 64-bit keys differ from the sign bit down (> 33 bits), but
    their float32 keys differ in 32 bits at most: a low-sky frame's annulus (negative pixels)
    sorts in ~4 us this way against ~15 us in the general loop.
    """
    n = v.shape[0]
    fk = keys.view(np.float32)
    for i in range(n):
        f = np.float32(v[i])
        if np.float64(f) != v[i] or math.isnan(v[i]):
            return False
        fk[i] = f
    lo = ~np.uint32(0)
    hi = np.uint32(0)
    for i in range(n):
        k = keys[i]
        k = ~k if k & _SIGN32 else k | _SIGN32
        keys[i] = k
        lo &= k
        hi |= k
    varying = lo ^ hi
    if varying != 0:
        low, top = _bit_span(np.uint64(varying))
        _radix3(keys, work, low, (top - low) // 3 + 1, False)
    for i in range(n):
        k = keys[i]
        keys[i] = k ^ _SIGN32 if k & _SIGN32 else ~k
        v[i] = np.float64(fk[i])
    return True


@numba.njit(cache=True)
def radix_sort(v, work):
    """Sort a contiguous 1-D float64 array of non-NaN values in place, ascending.

    Same sorted sequence as ``np.sort`` (values comparing equal are bitwise equal, except that
    -0.0 comes before +0.0), so sums over the sorted values do not change. An LSD radix sort
    on order-preserving 64-bit keys over the bits that differ between keys. The float32-exact
    values of a calibrated window (their low 29 mantissa bits are zero; sky and star share the
    sign and most of the exponent: <= 33 varying bits) take :func:`_radix3`'s three fixed
    passes, ~8 us for a 35x35 stamp with its star, against ~22 us for the general loop below
    (8 bits per pass, passes whose digit is equal in all keys skipped), which takes any other
    float64 values. Float32-exact values of both signs (a low sky, its negative pixels) vary
    in more bits as float64 but not as float32: they are sorted on 32-bit keys
    (:func:`_radix_float32`), also in three passes. numba's quicksort, whose comparisons are
    unpredictable branches, takes ~70 us for the same stamps.

    Parameters
    ----------
    v : 1-D float64 array, contiguous
        Values (any unit); sorted in place.
    work : 1-D uint64 array, at least ``len(v)``
        Scratch space.
    """
    n = v.shape[0]
    if n < 2:
        return
    keys = v.view(np.uint64)
    lo = ~np.uint64(0)
    hi = np.uint64(0)
    for i in range(n):
        k = keys[i]
        # Negative floats: flip all bits; positive: flip the sign bit. Unsigned order = float order.
        k = ~k if k & _SIGN else k | _SIGN
        keys[i] = k
        lo &= k
        hi |= k
    varying = lo ^ hi
    if varying == 0:
        passes = 0
        low = 0
    else:
        # 8-bit digits from the lowest varying bit (not from byte boundaries): the ~24 varying
        # bits of float32-exact sky values then take 3 passes rather than 4.
        low, top = _bit_span(varying)
        if top - low < 33:
            _radix3(keys, work[:n], low, (top - low) // 3 + 1, True)
            return
        # Wider: float32-exact values of both signs still take three passes, on 32-bit keys.
        for i in range(n):
            k = keys[i]
            keys[i] = k ^ _SIGN if k & _SIGN else ~k
        w32 = work[:n].view(np.uint32)
        if _radix_float32(v, w32[:n], w32[n:]):
            return
        for i in range(n):
            k = keys[i]
            keys[i] = ~k if k & _SIGN else k | _SIGN
        passes = (top - low) // 8 + 1
    cnt = np.empty(256, np.int64)
    src = keys
    dst = work[:n]
    for d in range(passes):
        shift = np.uint64(low + 8 * d)
        if (varying >> shift) & _BYTE == 0:
            continue
        cnt[:] = 0
        for i in range(n):
            cnt[(src[i] >> shift) & _BYTE] += 1
        tot = 0
        for b in range(256):
            c = cnt[b]
            cnt[b] = tot
            tot += c
        for i in range(n):
            k = src[i]
            b = (k >> shift) & _BYTE
            dst[cnt[b]] = k
            cnt[b] += 1
        src, dst = dst, src
    for i in range(n):
        k = src[i]
        keys[i] = k ^ _SIGN if k & _SIGN else ~k


@numba.njit(cache=True)
def mean_std(v):
    """Mean and standard deviation (ddof=0) of ``v`` in one pass.

    Sums of ``v - c`` and ``(v - c)**2`` about ``c = v[n // 2]`` (the median of sorted values)
    in four interleaved partial sums: no long chain of dependent additions (a sequential sum
    waits ~4 cycles per value), and shifted sums keep ``var = <d**2> - <d>**2`` free of
    cancellation (relative error ~1e-16 (1 + ((mean - c) / std)**2) plus the rounding of the
    sums, ~1e-14 for a sky annulus; the tests compare with numpy at 1e-12).
    """
    n = v.shape[0]
    c = v[n // 2]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    q0 = 0.0
    q1 = 0.0
    q2 = 0.0
    q3 = 0.0
    m = n - n % 4
    for i in range(0, m, 4):
        d0 = v[i] - c
        d1 = v[i + 1] - c
        d2 = v[i + 2] - c
        d3 = v[i + 3] - c
        s0 += d0
        s1 += d1
        s2 += d2
        s3 += d3
        q0 += d0 * d0
        q1 += d1 * d1
        q2 += d2 * d2
        q3 += d3 * d3
    for i in range(m, n):
        d = v[i] - c
        s0 += d
        q0 += d * d
    md = ((s0 + s1) + (s2 + s3)) / n
    var = ((q0 + q1) + (q2 + q3)) / n - md * md
    return c + md, math.sqrt(var) if var > 0.0 else 0.0


@numba.njit(cache=True)
def _clip_sorted(vals, sigma, maxiters):
    """:func:`sigma_clip_sorted` also returning the mean and std of the last iteration and
    whether they are those of the survivors (True when it stopped because nothing changed)."""
    a = 0
    b = vals.shape[0]
    it = 0
    mean = np.nan
    std = np.nan
    fresh = False
    while it < maxiters and b > a:
        it += 1
        n = b - a
        if n % 2 == 1:
            med = vals[a + n // 2]
        else:
            med = 0.5 * (vals[a + n // 2 - 1] + vals[a + n // 2])
        mean, std = mean_std(vals[a:b])
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
            fresh = True
            break
    return a, b, mean, std, fresh


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
    a, b, mean, std, fresh = _clip_sorted(vals, sigma, maxiters)
    return a, b


@numba.njit(cache=True, inline="always")
def _in_circle(ox, i, xc, dy2, r2):
    """The membership test of the window loops: ``((ox + i) - xc)**2 + dy**2 < r**2``."""
    dx = (ox + i) - xc
    return dx * dx + dy2 < r2


@numba.njit(cache=True)
def _chord(ox, xc, dy2, r2, i0, i1):
    """Window columns ``[a, b)`` within ``[i0, i1]`` passing :func:`_in_circle` on one row.

    The squared distance only grows away from the column nearest ``xc``, so the passing columns
    form one run; it is located with a square root and its ends settled with the exact test,
    so the run is the one a test of every column gives.
    """
    if i1 < i0:
        return i0, i0
    c = min(max(int(round(xc)) - ox, i0), i1)
    if not _in_circle(ox, c, xc, dy2, r2):
        return i0, i0
    half = math.sqrt(max(r2 - dy2, 0.0))
    a = min(max(int(math.ceil(xc - half)) - ox, i0), c)
    while a > i0 and _in_circle(ox, a - 1, xc, dy2, r2):
        a -= 1
    while not _in_circle(ox, a, xc, dy2, r2):
        a += 1
    b = max(min(int(math.floor(xc + half)) - ox, i1), c)
    while b < i1 and _in_circle(ox, b + 1, xc, dy2, r2):
        b += 1
    while not _in_circle(ox, b, xc, dy2, r2):
        b -= 1
    return a, b + 1


@numba.njit(cache=True)
def annulus_values(sci, msk, excl, ox, oy, xc, yc, r_in, r_out, buf):
    """Collect the usable annulus pixel values of a window into ``buf``.

    A pixel belongs to the annulus when its centre satisfies ``r_in**2 <= d**2 < r_out**2``.
    Pixels off the image, NaN, bad (``MASK_BAD``), saturated or marked in ``excl`` are left out.
    Each row is visited over its chord of the outer circle minus that of the inner one
    (:func:`_chord`), in increasing column order.

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
        dy2 = dy * dy
        a, b = _chord(ox, xc, dy2, rout2, i0, i1)
        if b <= a:
            continue
        ia, ib = _chord(ox, xc, dy2, rin2, a, b - 1)
        if ib <= ia:
            ia = b
            ib = b
        for seg in range(2):
            s0 = a if seg == 0 else ib
            s1 = ia if seg == 0 else b
            for i in range(s0, s1):
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
    radix_sort(v, np.empty(n, np.uint64))
    a, b, mean, std, fresh = _clip_sorted(v, sigma, maxiters)
    if b <= a:
        return np.nan, np.nan, np.nan, 0
    s = v[a:b]
    m = b - a
    if m % 2 == 1:
        med = s[m // 2]
    else:
        med = 0.5 * (s[m // 2 - 1] + s[m // 2])
    if not fresh:       # stopped by maxiters: the last statistics were of the previous slice
        mean, std = mean_std(s)
    return mean, med, std, m


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
