"""Centroiding on stamps: bandersnatch's connected-component method, flux-weighted and unbiased.

Method (per star, on a stamp of half-width ``boxsize`` in image coordinates):

1. Sky of the stamp: median / MAD clipping of the stamp pixels (``mad_clip_stats``): drop the
   ``nlimit`` highest values, take the median and ``1.4826 * MAD`` of the rest, keep the pixels
   within ``clip`` of that median; the sky is the mean and ``sd`` the standard deviation of the
   kept pixels (e-/px).
2. Pixels at least ``sky_sigma * sd`` above the sky form 4-connected components.
3. The tracking star uses the largest component (ties: the one whose centroid is closest to the
   prediction), checked against the star's recent flux and size by the kernel; after a jump, the
   component most like the tracking star (:func:`match_component`). Other stars use the central
   component (the one with a pixel closest to the predicted position; ties: the larger).
4. Position = flux-weighted mean of the component pixels, weights ``value - sky``, in absolute
   pixel coordinates. bandersnatch took the unweighted mean of the indices of an
   ``int()``-truncated stamp and added it to the untruncated position, which is off by the
   fractional part of the start position (up to ~0.8 px).
5. Optional refinement (``refine_each_star``): Gaussian-windowed flux-weighted centroid
   iterated from the component position (SExtractor's XWIN iteration
   ``x += 2 sum(w (v - sky) (x_i - x)) / sum(w (v - sky))``), window sigma from the component's
   flux-weighted RMS width. For a symmetric PSF its fixed point is the true centre, and it no
   longer depends on which pixels crossed the detection threshold.

Widths are the flux-weighted RMS of the component about its centroid (px). Stamp diagnostics
follow bandersnatch: ``peak_*`` is the brightest stamp pixel (e-, sky included),
``n_pixels_above`` counts pixels above ``flux_above_value`` (e-), ``sigK_pixels`` counts
pixels with ``|value - sky| >= K * sd``.

All functions take a window ``sci[j, i]`` holding image pixel ``(ox + i, oy + j)`` and a window
mask with :mod:`bandersnake.aperture` ``MASK_*`` bits. Bad pixels are left out of the stamp sky
but enter the centroid with their interpolated values: dropping a pixel of the core would pull
the flux-weighted centroid away from it by up to ~0.1 px.
"""

import math

import numba
import numpy as np

from .aperture import MASK_BAD, MASK_OUTSIDE, MASK_SATURATED, mean_std, radix_sort

MAD_TO_SIGMA = 1.4826
CHOOSE_LARGEST = 0
CHOOSE_CENTRAL = 1


@numba.njit(cache=True, inline="always")
def _dev(t, p, med, side, i):
    """``i``-th smallest deviation ``|t - med|`` on one side of ``p`` (side 0: t[:p], 1: t[p:])."""
    return abs(t[p - 1 - i] - med) if side == 0 else abs(t[p + i] - med)


@numba.njit(cache=True)
def _kth_abs_dev(t, med, p, k):
    """The ``k``-th smallest (0-based) of ``|t - med|`` for sorted ``t`` with ``t[:p] < med <= t[p:]``.

    The deviations of ``t[:p]`` read backwards and of ``t[p:]`` read forwards are two sorted
    runs; the k-th of their union is found by bisection on how many come from the first run,
    so the median absolute deviation needs neither a second sort nor a merge walk.
    """
    m = t.shape[0]
    nl = p
    nr = m - p
    lo = max(0, k + 1 - nr)
    hi = min(k + 1, nl)
    while lo < hi:
        i = (lo + hi) // 2
        if _dev(t, p, med, 0, i) < _dev(t, p, med, 1, k - i):
            lo = i + 1
        else:
            hi = i
    j = k + 1 - lo
    best = -np.inf
    if lo > 0:
        best = _dev(t, p, med, 0, lo - 1)
    if j > 0:
        best = max(best, _dev(t, p, med, 1, j - 1))
    return best


@numba.njit(cache=True)
def mad_clip_stats(vals, clip, nlimit):
    """Median/MAD-clipped mean and standard deviation of finite values (sorted in place).

    Parameters
    ----------
    vals : 1-D float64 array
    clip : float
        Clip at this many robust sigma (``1.4826 * MAD``) from the median.
    nlimit : int
        Number of highest values left out of the median and MAD (when at least ``10 * nlimit``
        values exist): protects the robust estimate from the star itself.

    Returns
    -------
    mean, sd : float
        NaN when ``vals`` is empty.
    """
    n = vals.shape[0]
    if n == 0:
        return np.nan, np.nan
    radix_sort(vals, np.empty(n, np.uint64))
    m = n - nlimit if (nlimit > 0 and n >= 10 * nlimit) else n
    t = vals[:m]
    med = 0.5 * (t[(m - 1) // 2] + t[m // 2])
    p = np.searchsorted(t, med)
    d1 = _kth_abs_dev(t, med, p, (m - 1) // 2)
    d2 = d1 if m % 2 == 1 else _kth_abs_dev(t, med, p, m // 2)
    mad = 0.5 * (d1 + d2)
    sig = MAD_TO_SIGMA * mad
    if not sig > 0.0:
        sig = 1e-10
    # |v - med| falls then rises along the sorted values: the kept ones are one run [lo, hi).
    lim = clip * sig
    lo = 0
    while lo < n and not abs(vals[lo] - med) <= lim:
        lo += 1
    hi = n
    while hi > lo and not abs(vals[hi - 1] - med) <= lim:
        hi -= 1
    if hi == lo:
        return med, 0.0
    return mean_std(vals[lo:hi])


@numba.njit(cache=True)
def stamp_sky(sci, msk, clip, nlimit):
    """Sky level and scatter (e-/px) of a stamp: :func:`mad_clip_stats` over its usable pixels."""
    h, w = sci.shape
    buf = np.empty(h * w, np.float64)
    n = 0
    for j in range(h):
        for i in range(w):
            v = sci[j, i]
            if msk[j, i] & (MASK_OUTSIDE | MASK_BAD) or math.isnan(v):
                continue
            buf[n] = v
            n += 1
    return mad_clip_stats(buf[:n], clip, nlimit)


@numba.njit(cache=True)
def label_components(above, labels):
    """4-connected labelling of a boolean stamp; ``labels`` gets 1..n (0 = background).

    Returns
    -------
    n : int
        Number of components.
    """
    h, w = above.shape
    labels[:, :] = 0
    stack = np.empty(h * w, np.int64)
    n = 0
    for j0 in range(h):
        for i0 in range(w):
            if not above[j0, i0] or labels[j0, i0] != 0:
                continue
            n += 1
            labels[j0, i0] = n
            top = 0
            stack[top] = j0 * w + i0
            top += 1
            while top > 0:
                top -= 1
                p = stack[top]
                j = p // w
                i = p - j * w
                for d in range(4):
                    jj = j + (1 if d == 0 else (-1 if d == 1 else 0))
                    ii = i + (1 if d == 2 else (-1 if d == 3 else 0))
                    if 0 <= jj < h and 0 <= ii < w and above[jj, ii] and labels[jj, ii] == 0:
                        labels[jj, ii] = n
                        stack[top] = jj * w + ii
                        top += 1
    return n


@numba.njit(cache=True)
def detect_components(sci, msk, sky, sd, sky_sigma, labels):
    """Label the 4-connected components of pixels at least ``sky_sigma * sd`` above ``sky``.

    Pixels off the image (``MASK_OUTSIDE``) or NaN never belong to a component.

    Returns
    -------
    n : int
        Number of components; ``labels`` gets 1..n (0 = background).
    """
    h, w = sci.shape
    above = np.zeros((h, w), np.bool_)
    thr = sky + sky_sigma * sd
    for j in range(h):
        for i in range(w):
            v = sci[j, i]
            if msk[j, i] & MASK_OUTSIDE or math.isnan(v):
                continue
            if v >= thr and v > sky:
                above[j, i] = True
    return label_components(above, labels)


@numba.njit(cache=True)
def component_sums(sci, labels, nlab, ox, oy, sky, tx, ty):
    """Per-component sums over a labelled stamp (origin ``ox, oy``), index = label (0 unused).

    Returns
    -------
    cnt : int64 array
        Pixels.
    sw, swx, swy : float64 arrays
        Sums of ``w = value - sky`` (e-), ``w * x`` and ``w * y`` (absolute px).
    mind2 : float64 array
        Smallest squared distance (px**2) of a pixel centre from ``(tx, ty)``.
    edge : bool array
        The component reaches the stamp border.
    """
    h, w = sci.shape
    cnt = np.zeros(nlab + 1, np.int64)
    sw = np.zeros(nlab + 1)
    swx = np.zeros(nlab + 1)
    swy = np.zeros(nlab + 1)
    mind2 = np.full(nlab + 1, np.inf)
    edge = np.zeros(nlab + 1, np.bool_)
    for j in range(h):
        for i in range(w):
            lab = labels[j, i]
            if lab == 0:
                continue
            x = ox + i
            y = oy + j
            wt = sci[j, i] - sky
            cnt[lab] += 1
            sw[lab] += wt
            swx[lab] += wt * x
            swy[lab] += wt * y
            d2 = (x - tx) ** 2 + (y - ty) ** 2
            if d2 < mind2[lab]:
                mind2[lab] = d2
            if i == 0 or j == 0 or i == w - 1 or j == h - 1:
                edge[lab] = True
    return cnt, sw, swx, swy, mind2, edge


@numba.njit(cache=True)
def find_component(sci, msk, ox, oy, tx, ty, sky, sd, sky_sigma, choose, labels):
    """Detect, label and choose a star's component in a stamp.

    Parameters
    ----------
    sci, msk : 2-D arrays
        Stamp values (e-) and mask bits.
    ox, oy : int
        Image coordinates of stamp pixel ``[0, 0]``.
    tx, ty : float
        Predicted position (px).
    sky, sd : float
        Stamp sky and scatter (e-/px).
    sky_sigma : float
        Detection threshold in ``sd`` above the sky.
    choose : int
        ``CHOOSE_LARGEST`` (tracking star) or ``CHOOSE_CENTRAL`` (per-star refinement).
    labels : 2-D int64 array, shape of ``sci``
        Work array; on return ``labels == label`` marks the chosen component.

    Returns
    -------
    label : int
        Chosen label, 0 if none.
    cx, cy : float
        Flux-weighted centroid (px).
    xw, yw : float
        Flux-weighted RMS widths (px).
    npix : int
        Pixels in the component.
    touches : bool
        The component reaches the stamp border (star maybe cut by the stamp).
    nsat : int
        Saturated pixels in the component.
    flux : float
        Sum of ``value - sky`` over the component (e-), 0 if none.
    """
    h, w = sci.shape
    nlab = detect_components(sci, msk, sky, sd, sky_sigma, labels)
    if nlab == 0:
        return 0, np.nan, np.nan, np.nan, np.nan, 0, False, 0, 0.0
    cnt, sw, swx, swy, mind2, edge = component_sums(sci, labels, nlab, ox, oy, sky, tx, ty)
    best = 0
    for lab in range(1, nlab + 1):
        if best == 0:
            best = lab
            continue
        if choose == CHOOSE_LARGEST:
            if cnt[lab] > cnt[best]:
                best = lab
            elif cnt[lab] == cnt[best]:
                d_new = (swx[lab] / sw[lab] - tx) ** 2 + (swy[lab] / sw[lab] - ty) ** 2
                d_old = (swx[best] / sw[best] - tx) ** 2 + (swy[best] / sw[best] - ty) ** 2
                if d_new < d_old:
                    best = lab
        else:
            if mind2[lab] < mind2[best] or (mind2[lab] == mind2[best] and cnt[lab] > cnt[best]):
                best = lab
    cx = swx[best] / sw[best]
    cy = swy[best] / sw[best]
    sxx = 0.0
    syy = 0.0
    nsat = 0
    for j in range(h):
        for i in range(w):
            if labels[j, i] != best:
                continue
            wt = sci[j, i] - sky
            sxx += wt * (ox + i - cx) ** 2
            syy += wt * (oy + j - cy) ** 2
            if msk[j, i] & MASK_SATURATED:
                nsat += 1
    return (best, cx, cy, math.sqrt(sxx / sw[best]), math.sqrt(syy / sw[best]), cnt[best], edge[best], nsat,
            sw[best])


@numba.njit(cache=True)
def consistent_with(flux, npix, ref_flux, ref_npix, factor):
    """A component (flux e-, ``npix`` pixels) is not ``factor`` times fainter or smaller than a reference.

    Only a lower bound: a star that brightens (clouds clearing) stays consistent, while a hot pixel,
    a cosmic ray, a faint neighbour or noise (hundreds of times fainter, or a few pixels) is not.
    """
    return flux * factor >= ref_flux and npix * factor >= ref_npix


@numba.njit(cache=True)
def match_component(sci, msk, ox, oy, sky, sd, sky_sigma, ref_flux, ref_npix, factor, labels):
    """The component of a stamp most like a reference star (the tracking star's recent median).

    Candidates are the components that do not reach the stamp border and are consistent with the
    reference (:func:`consistent_with`); the chosen one has the flux closest to ``ref_flux`` in
    ratio (``|log(flux / ref_flux)|``), so a brighter or a fainter neighbour loses to the star.

    Parameters
    ----------
    sci, msk, ox, oy, sky, sd, sky_sigma, labels
        As :func:`find_component`.
    ref_flux : float
        Reference flux above the sky (e-).
    ref_npix : float
        Reference number of pixels of the component.
    factor : float
        Consistency factor (> 1).

    Returns
    -------
    label : int
        0 if no candidate.
    cx, cy : float
        Flux-weighted centroid (px), as :func:`find_component` computes it.
    flux : float
        Sum of ``value - sky`` over the component (e-).
    npix : int
    """
    nlab = detect_components(sci, msk, sky, sd, sky_sigma, labels)
    if nlab == 0:
        return 0, np.nan, np.nan, 0.0, 0
    cnt, sw, swx, swy, mind2, edge = component_sums(sci, labels, nlab, ox, oy, sky, ox, oy)
    best = 0
    best_d = np.inf
    for lab in range(1, nlab + 1):
        if edge[lab] or not sw[lab] > 0.0 or not consistent_with(sw[lab], cnt[lab], ref_flux, ref_npix, factor):
            continue
        d = abs(math.log(sw[lab] / ref_flux))
        if d < best_d:
            best = lab
            best_d = d
    if best == 0:
        return 0, np.nan, np.nan, 0.0, 0
    return best, swx[best] / sw[best], swy[best] / sw[best], sw[best], cnt[best]


@numba.njit(cache=True)
def windowed_centroid(sci, msk, ox, oy, x0, y0, sky, sigma_w, max_iter, max_shift):
    """Gaussian-windowed flux-weighted centroid (SExtractor XWIN iteration) from ``(x0, y0)``.

    Parameters
    ----------
    sigma_w : float
        Window sigma (px).
    max_iter : int
    max_shift : float
        Give up (return ok=False) when the estimate wanders farther than this from the start.

    Returns
    -------
    ok : bool
    x, y : float
        Centroid (px); the start position when not ok.
    """
    h, w = sci.shape
    x = x0
    y = y0
    rad = 4.0 * sigma_w
    inv2s2 = 0.5 / (sigma_w * sigma_w)
    # The Gaussian window is separable: exp(-(dx2 + dy2) k) = exp(-dx2 k) exp(-dy2 k), and along
    # the unit steps of the pixel grid exp(-(d + 1)**2 k) = exp(-d**2 k) exp(-(2d + 1) k), the
    # ratio shrinking by exp(-2k) a step: three exp per axis and iteration instead of one per
    # column and row (~40 a pass at 12.6 ns each); the recurrence's rounding, at most 5.3e-14
    # relative over 35 px (sigma 0.8-8 px), moved the benchmark's centroids by <= 1e-13 px.
    gx = np.empty(w)
    step = math.exp(-2.0 * inv2s2)
    for it in range(max_iter):
        i0 = max(int(math.floor(x - rad)) - ox, 0)
        i1 = min(int(math.ceil(x + rad)) - ox, w - 1)
        j0 = max(int(math.floor(y - rad)) - oy, 0)
        j1 = min(int(math.ceil(y + rad)) - oy, h - 1)
        d = ox + i0 - x
        g = math.exp(-d * d * inv2s2)
        ratio = math.exp(-(2.0 * d + 1.0) * inv2s2)
        for i in range(i0, i1 + 1):
            gx[i] = g
            g *= ratio
            ratio *= step
        d = oy + j0 - y
        gy_next = math.exp(-d * d * inv2s2)
        ratio_y = math.exp(-(2.0 * d + 1.0) * inv2s2)
        s = 0.0
        sx = 0.0
        sy = 0.0
        for j in range(j0, j1 + 1):
            dy = oy + j - y
            gy = gy_next
            gy_next *= ratio_y
            ratio_y *= step
            for i in range(i0, i1 + 1):
                v = sci[j, i]
                if msk[j, i] & MASK_OUTSIDE or math.isnan(v):
                    continue
                dx = ox + i - x
                d2 = dx * dx + dy * dy
                if d2 > rad * rad:
                    continue
                wt = gx[i] * gy * (v - sky)
                s += wt
                sx += wt * dx
                sy += wt * dy
        if not s > 0.0:
            return False, x0, y0
        ddx = 2.0 * sx / s
        ddy = 2.0 * sy / s
        x += ddx
        y += ddy
        if (x - x0) ** 2 + (y - y0) ** 2 > max_shift * max_shift:
            return False, x0, y0
        if abs(ddx) < 1e-5 and abs(ddy) < 1e-5:   # 1e-5 px: far below the noise of any star
            break
    return True, x, y


@numba.njit(cache=True)
def stamp_diagnostics(sci, msk, ox, oy, sky, sd, flux_above):
    """bandersnatch's per-stamp diagnostics.

    Returns
    -------
    peak_x, peak_y, peak_value : float
        Brightest finite pixel (px, px, e-).
    n_above, n3, n5, n10 : int
        Pixels with value > ``flux_above`` (e-) and with ``|value - sky| >= K * sd``.
    n_nan, n_out : int
        NaN pixels and pixels off the image in the stamp.
    """
    h, w = sci.shape
    px = np.nan
    py = np.nan
    pv = -np.inf
    na = 0
    n3 = 0
    n5 = 0
    n10 = 0
    nnan = 0
    nout = 0
    lim3 = 2.99 * sd
    for j in range(h):
        for i in range(w):
            if msk[j, i] & MASK_OUTSIDE:
                nout += 1
                continue
            v = sci[j, i]
            if math.isnan(v):
                nnan += 1
                continue
            if v > pv:
                pv = v
                px = ox + i
                py = oy + j
            if v > flux_above:
                na += 1
            # Below 2.99 sd the quotient is certainly < 3 (rounding included): no division.
            if sd > 0.0 and abs(v - sky) >= lim3:
                z = abs(v - sky) / sd
                if z >= 3.0:
                    n3 += 1
                if z >= 5.0:
                    n5 += 1
                if z >= 10.0:
                    n10 += 1
    if pv == -np.inf:
        pv = np.nan
    return px, py, pv, na, n3, n5, n10, nnan, nout


def centroid_stamp(image, x, y, boxsize=17, sky_sigma=5.0, clip=5.0, nlimit=5, choose="central",
                   refine=True):
    """Centroid one star of a whole image (tests and notebooks).

    Parameters
    ----------
    image : 2-D array
        Calibrated image (e-).
    x, y : float
        Predicted position (px, 0-based).
    boxsize : int
        Stamp half-width (px).
    choose : {'central', 'largest'}
    refine : bool
        Apply the windowed refinement after the component centroid.

    Returns
    -------
    dict
        ``ok``, ``x``, ``y`` (px), ``x_width``, ``y_width`` (px), ``sky``, ``sd`` (e-/px),
        ``npix``, ``touches``.
    """
    img = np.ascontiguousarray(image, np.float64)
    ny, nx = img.shape
    ix = int(round(x))
    iy = int(round(y))
    ox = ix - boxsize
    oy = iy - boxsize
    n = 2 * boxsize + 1
    sci = np.full((n, n), np.nan)
    msk = np.full((n, n), MASK_OUTSIDE, np.uint8)
    ys = slice(max(oy, 0), min(oy + n, ny))
    xs = slice(max(ox, 0), min(ox + n, nx))
    sci[ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox] = img[ys, xs]
    msk[ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox] = 0
    sky, sd = stamp_sky(sci, msk, clip, nlimit)
    labels = np.zeros((n, n), np.int64)
    mode = CHOOSE_LARGEST if choose == "largest" else CHOOSE_CENTRAL
    lab, cx, cy, xw, yw, npix, touches, _, _ = find_component(sci, msk, ox, oy, float(x), float(y), sky, sd,
                                                           sky_sigma, mode, labels)
    ok = lab > 0
    if ok and refine:
        sig = refine_sigma(xw, yw)
        ok2, rx, ry = windowed_centroid(sci, msk, ox, oy, cx, cy, sky, sig, 50, float(boxsize))
        if ok2:
            cx, cy = rx, ry
    return {"ok": ok, "x": cx, "y": cy, "x_width": xw, "y_width": yw, "sky": sky, "sd": sd,
            "npix": npix, "touches": touches}


@numba.njit(cache=True)
def refine_sigma(xw, yw):
    """Window sigma (px) for :func:`windowed_centroid` from the component RMS widths.

    The thresholded component under-samples the wings, so its RMS underestimates the PSF
    sigma; 1.2x brings it close for Moffat/Gaussian stars. Clamped to 0.8..8 px.
    """
    s = 1.2 * math.sqrt(0.5 * (xw * xw + yw * yw))
    if not s > 0.8:
        s = 0.8
    if s > 8.0:
        s = 8.0
    return s
