"""Numba per-frame kernel: calibrate only the pixels needed, centroid, and sum all apertures.

A science frame goes through two calls (:func:`process_frame` makes both):

1. :func:`track_frame` (tracking star, cheap, in frame order: it needs the previous frame's
   offset and the tracking star's recent flux and size). Tracking star: a stamp (half-width
   ``boxsize``) around its predicted position (reference position + the previous frame's offset)
   is calibrated and centroided (largest component). The component is accepted if it is
   consistent with the tracking star of the last frames (not touching the stamp border, not
   ``tracking_consistency_factor`` times fainter or smaller than their median). If it is not
   (a hot pixel, a faint neighbour, the star's wing after a jump), or it lies ``boxsize / 2`` px or more
   from the prediction, the search is widened to ``reacquire_radius`` and the consistent
   component closest in flux is taken. Nothing consistent: bit 1 and the previous offset is kept.
2. :func:`measure_frame` (all stars, independent of other frames, so frames can be measured
   in parallel threads; the functions release the GIL). Every star: stamp at reference + offset, centroid on its central component,
   optional windowed refinement, stamp diagnostics.
   Then every star: photometry window around the final centroid, sigma-clipped annulus
   sky, exact-overlap sums for every radius.

Raw pixels are read where they lie in the file's data unit when possible (``code``,
:func:`raw_value`): big-endian 16-bit integers are decoded (byte swap, BZERO) only for the
pixels a frame needs, so a frame is never converted as a whole.

``mode`` selects where calibrated pixel values come from: ``MODE_RAW`` calibrates raw ADU on the
fly (streaming), ``MODE_REDUCED`` copies them from a calibrated frame held in memory
(traditional path, or streaming when calibrated frames are saved). Both go through
:func:`calib_pixel` and round values through float32 exactly as the SCI/ERR extensions store
them, so the two paths see bit-identical float64 inputs and give identical tables.

Calibration of one pixel (ADU -> e-)::

    c   = (raw - offset - bias) * gain              # e-, signal*flat + dark
    sci = (c - dark * exptime * gain) / flat        # e-
    err = sqrt(max(c, 0) + read_noise**2) / flat    # e-: Poisson (signal + dark) and read noise

A bad pixel (``MASK_BAD`` in the static mask: hot, dead, invalid flat) takes the mean of its
usable 8 neighbours (``err``: root-mean-square of theirs), as bandersnatch's interpolation.
"""

import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .aperture import (MASK_BAD, MASK_OUTSIDE, MASK_SATURATED, _chord, aperture_sums, annulus_values,
                       clipped_stats)
from .centroid import (CHOOSE_CENTRAL, CHOOSE_LARGEST, consistent_with, find_component, match_component,
                       refine_sigma, stamp_diagnostics, stamp_sky, windowed_centroid)
from ..flags import (FLAG_BAD_PIXEL, FLAG_CORRUPT, FLAG_LOST, FLAG_NAN, FLAG_OFF_CHIP,  # noqa: F401
                    FLAG_REACQUIRED, FLAG_SATURATED)

MODE_RAW = 0
MODE_REDUCED = 1

# How raw pixel values are stored in the array handed to the kernel (see raw_value).
RAW_NATIVE = 0      # native-endian numbers (float32 ADU)
RAW_BE_U16 = 1      # big-endian 16-bit of BITPIX=16, BZERO=32768, BSCALE=1 (unsigned), as uint16
RAW_BE_I16 = 2      # big-endian 16-bit of BITPIX=16, BZERO=0, BSCALE=1 (signed), as uint16

# Integer parameters (ipar) and float parameters (fpar) of process_frame.
IP_BOXSIZE, IP_REACQ, IP_NLIMIT, IP_REFINE, IP_MASKCPIX, IP_STAMPS, IP_SKYITERS, IP_SKYSUPP = range(8)
FP_CLIP, FP_SKYSIGMA, FP_FLUXABOVE, FP_RIN, FP_ROUT, FP_SKYCLIP, FP_JUMP, FP_TRACKF = range(8)
N_FPAR = 8
# Calibration scalars (cpar): overscan level (ADU), exposure (s), gain (e-/ADU), read noise**2
# (e-**2), saturation (raw ADU).
CP_OFFSET, CP_EXPTIME, CP_GAIN, CP_RN2, CP_SAT = range(5)
N_CPAR = 5

# Columns of cent_out and phot_out.
C_XC, C_YC, C_XW, C_YW, C_PX, C_PY, C_PV, C_NABOVE, C_N3, C_N5, C_N10 = range(11)
N_CENT = 11
P_FLUX, P_FLUXERR, P_SKY, P_SKYERR, P_NBAD, P_NSKY, P_AREA = range(7)
N_PHOT = 7

# Entries of a frame's tracking state (out of track_frame): field offset (px), frame flag bits, and
# what the tracker saw in the stamp at the prediction: component flux above the sky (e-, 0 if
# none), its pixels, its distance from the prediction (px, NaN if none), and the reference it was
# checked against (median of the last TRACK_HIST accepted frames; NaN before the first).
(ST_DX, ST_DY, ST_FLAG, ST_FLUX, ST_NPIX, ST_DIST, ST_REF_FLUX, ST_REF_NPIX) = range(8)
N_STATE = 8
# Accepted tracking-star components remembered (flux e-, pixels) for the consistency check.
TRACK_HIST = 5
# Two centroids closer than this (px) are taken as the same component seen in two stamps.
SAME_COMPONENT_PX = 2.0



def calib_params(offset, exptime, gain, read_noise, saturation):
    """``cpar`` array of the kernel functions (units: ADU, s, e-/ADU, e-, ADU)."""
    p = np.empty(N_CPAR)
    p[CP_OFFSET] = offset
    p[CP_EXPTIME] = exptime
    p[CP_GAIN] = gain
    p[CP_RN2] = read_noise * read_noise
    p[CP_SAT] = saturation
    return p


@numba.njit(cache=True, inline="always")
def raw_value(raw, y, x, code):
    """Raw value (ADU, float64) of pixel ``(x, y)`` of an array stored as ``code`` says.

    ``RAW_BE_U16`` / ``RAW_BE_I16``: the array holds the file's big-endian bytes read as
    native uint16; swapping the two bytes gives the stored 16-bit integer, and BZERO=32768
    (unsigned convention) flips its top bit. Both are exact, as astropy's scaling is.
    """
    if code == RAW_NATIVE:
        return np.float64(raw[y, x])
    u = np.int64(raw[y, x])
    u = ((u & 0xFF) << 8) | (u >> 8)
    if code == RAW_BE_U16:
        return np.float64(u ^ 0x8000)
    return np.float64(u - 65536 if u >= 32768 else u)


@numba.njit(cache=True, inline="always")
def _calib_one(raw, code, bias, dark, flat, y, x, offset, exptime, gain, rn2):
    r = raw_value(raw, y, x, code)
    f = np.float64(flat[y, x])
    c = (r - offset - np.float64(bias[y, x])) * gain
    sci = (c - np.float64(dark[y, x]) * exptime * gain) / f
    err = math.sqrt(max(c, 0.0) + rn2) / f
    return sci, err


@intrinsic
def _prefetch(typingctx, arr, y, x):
    """Ask the CPU to start loading element ``[y, x]`` of a 2-D array into its caches (``llvm.prefetch``).

    A hint only: it returns at once, never faults and changes no value.
    """
    sig = types.void(arr, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])   # read, keep, data
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True)
def _prefetch_rows(img, cx, cy, half):
    ny, nx = img.shape
    x0 = max(cx - half, 0)
    x1 = min(cx + half, nx - 1)
    if x1 < x0:
        return
    step = max(64 // img.itemsize, 1)       # one request per 64-byte cache line
    for y in range(max(cy - half, 0), min(cy + half + 1, ny)):
        for x in range(x0, x1, step):
            _prefetch(img, y, x)
        _prefetch(img, y, x1)


@numba.njit(cache=True)
def prefetch_window(mode, raw, sci_f, cx, cy, half):
    """Start loading the frame rows of the window of half-width ``half`` around pixel ``(cx, cy)``.

    The raw frame (or, in ``MODE_REDUCED``, the calibrated one) is new in every frame and read
    row by row, each row a few cache lines the hardware cannot guess: filling a cold window
    took 16-18 us per star against 10 us for one in cache (1024x1024 frames, 12 stars), a wait
    mostly hidden by asking for the next star's rows while the current star is measured. The
    masters, the same every frame, stay cached.
    """
    if mode == MODE_RAW:
        _prefetch_rows(raw, cx, cy, half)
    else:
        _prefetch_rows(sci_f, cx, cy, half)


@numba.njit(cache=True)
def calib_bad(raw, code, bias, dark, flat, smask, y, x, offset, exptime, gain, rn2):
    """Mean of the usable 8 neighbours (value) and their root-mean-square error, or NaN."""
    ny, nx = raw.shape
    s = 0.0
    se2 = 0.0
    k = 0
    for yy in range(y - 1, y + 2):
        for xx in range(x - 1, x + 2):
            if (yy == y and xx == x) or yy < 0 or xx < 0 or yy >= ny or xx >= nx:
                continue
            if smask[yy, xx] & MASK_BAD or math.isnan(raw_value(raw, yy, xx, code)):
                continue
            v, e = _calib_one(raw, code, bias, dark, flat, yy, xx, offset, exptime, gain, rn2)
            s += v
            se2 += e * e
            k += 1
    if k == 0:
        return np.nan, np.nan
    return s / k, math.sqrt(se2 / k)


@numba.njit(cache=True, inline="always")
def calib_pixel(raw, code, bias, dark, flat, smask, y, x, offset, exptime, gain, rn2, sat):
    """Calibrated value, error (e-, float64) and mask bits of raw pixel ``(x, y)``.

    Bad pixels (``MASK_BAD``) come out with their plain calibrated value: callers replace it
    with :func:`calib_bad` in a second pass (a call in this hot path makes it ~30x slower).
    """
    m = smask[y, x]
    r = raw_value(raw, y, x, code)
    if r >= sat:
        m |= MASK_SATURATED
    if math.isnan(r):
        return np.nan, np.nan, m
    sci, err = _calib_one(raw, code, bias, dark, flat, y, x, offset, exptime, gain, rn2)
    return sci, err, m


@numba.njit(parallel=True, nogil=True, cache=True)
def calibrate_full(raw, code, bias, dark, flat, smask, offset, exptime, gain, rn2, sat,
                   sci_out, err_out, msk_out):
    """Calibrate a whole frame into float32 SCI/ERR (e-) and uint8 MASK arrays (rows in parallel)."""
    ny, nx = raw.shape
    for y in prange(ny):
        for x in range(nx):
            s, e, m = calib_pixel(raw, code, bias, dark, flat, smask, y, x, offset, exptime, gain, rn2, sat)
            sci_out[y, x] = np.float32(s)
            err_out[y, x] = np.float32(e)
            msk_out[y, x] = m
        for x in range(nx):
            if smask[y, x] & MASK_BAD:
                s, e = calib_bad(raw, code, bias, dark, flat, smask, y, x, offset, exptime, gain, rn2)
                sci_out[y, x] = np.float32(s)
                err_out[y, x] = np.float32(e)


@numba.njit(cache=True)
def fill_window(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, err_f, msk_f,
                ox, oy, sci_w, err_w, msk_w, e0, e1, rlim):
    """Fill a window (origin ``(ox, oy)``) with calibrated float64 values rounded through float32.

    ``sci_w`` (e-) and ``msk_w``: pixels off the image get NaN and ``MASK_OUTSIDE``. With
    ``rlim > 0`` only the pixels within ``rlim`` px of the window's centre pixel, and the
    ``[e0, e1)`` square, are calibrated; the others are left as NaN with ``MASK_OUTSIDE``
    (a photometry window is read within ``r_out`` of the centroid only: ~25 % fewer pixels).
    ``err_w`` (e-) is filled for window rows and columns in ``[e0, e1)`` only: the per-pixel
    error is needed inside the apertures only. Values are those of :func:`calib_pixel` and
    :func:`calib_bad` (same operations in the same order).
    """
    h, w = sci_w.shape
    if mode == MODE_RAW:
        ny, nx = raw.shape
    else:
        ny, nx = sci_f.shape
    offset = cpar[CP_OFFSET]
    exptime = cpar[CP_EXPTIME]
    gain = cpar[CP_GAIN]
    rn2 = cpar[CP_RN2]
    sat = cpar[CP_SAT]
    nbad = 0
    cw = w // 2      # centre pixel of the window
    for j in range(h):
        y = oy + j
        # Calibrated columns [i0, i1): in the image (the inner loops then run without bound
        # checks) and, with rlim, within the disc and the err square.
        lo = 0
        hi = w
        if rlim > 0.0:
            hw = int(math.floor(math.sqrt(max(rlim * rlim - (j - cw) * (j - cw), 0.0))))
            lo = max(cw - hw, 0)
            hi = min(cw + hw + 1, w)
            if e0 <= j < e1 and e1 > e0:
                lo = min(lo, e0)
                hi = max(hi, e1)
        if 0 <= y < ny and hi > lo:
            i0 = min(max(-ox, lo), hi)
            i1 = max(min(nx - ox, hi), i0)
        else:
            i0 = w
            i1 = w
        for i in range(0, i0):
            sci_w[j, i] = np.nan
            err_w[j, i] = np.nan
            msk_w[j, i] = MASK_OUTSIDE
        for i in range(i1, w):
            sci_w[j, i] = np.nan
            err_w[j, i] = np.nan
            msk_w[j, i] = MASK_OUTSIDE
        if i1 <= i0:
            continue
        k0 = max(i0, e0)
        k1 = min(i1, e1) if e0 <= j < e1 else k0
        if mode == MODE_RAW:
            # Columns [i0, c0) and [c1, i1): value only; [c0, c1) (= [k0, k1)): value and error.
            c0 = min(k0, i1)
            c1 = min(max(k1, c0), i1)
            for part in range(3):
                a = i0 if part == 0 else (c0 if part == 1 else c1)
                b = c0 if part == 0 else (c1 if part == 1 else i1)
                with_err = part == 1
                for i in range(a, b):
                    x = ox + i
                    r = raw_value(raw, y, x, code)
                    m = smask[y, x]
                    if r >= sat:
                        m |= MASK_SATURATED
                    f = np.float64(flat[y, x])
                    c = (r - offset - np.float64(bias[y, x])) * gain
                    sci = (c - np.float64(dark[y, x]) * exptime * gain) / f
                    nan = math.isnan(r)
                    sci_w[j, i] = np.float64(np.float32(sci)) if not nan else np.nan
                    msk_w[j, i] = m
                    nbad += m & MASK_BAD
                    if with_err:
                        err = math.sqrt(max(c, 0.0) + rn2) / f
                        err_w[j, i] = np.float64(np.float32(err)) if not nan else np.nan
        else:
            for i in range(i0, i1):
                sci_w[j, i] = np.float64(sci_f[y, ox + i])
                msk_w[j, i] = msk_f[y, ox + i]
            for i in range(k0, k1):
                err_w[j, i] = np.float64(err_f[y, ox + i])
    if mode == MODE_RAW and nbad > 0:
        for j in range(h):
            for i in range(w):
                if msk_w[j, i] & MASK_BAD and not msk_w[j, i] & MASK_OUTSIDE:
                    s, e = calib_bad(raw, code, bias, dark, flat, smask, oy + j, ox + i, offset, exptime,
                                     gain, rn2)
                    sci_w[j, i] = np.float64(np.float32(s))
                    if e0 <= j < e1 and e0 <= i < e1:
                        err_w[j, i] = np.float64(np.float32(e))


@numba.njit(cache=True)
def fill_disc(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, msk_f, ox, oy, sci_w, msk_w, xc, yc, r,
              q0, q1):
    """Fill the window pixels whose centres lie within ``r`` px of ``(xc, yc)``, outside a square.

    For the sky annulus: values and mask bits as :func:`fill_window` computes them, but no error
    and no interpolation of bad pixels (the annulus leaves them out). Window rows and columns
    ``[q0, q1)`` (a square already filled) are skipped; other window pixels are left as they
    were. The pixels taken are those passing the test of
    :func:`bandersnake.aperture.annulus_values` (:func:`bandersnake.aperture._chord`): with
    ``r = r_out`` every pixel the annulus reads is filled.
    """
    h, w = sci_w.shape
    if mode == MODE_RAW:
        ny, nx = raw.shape
    else:
        ny, nx = sci_f.shape
    offset = cpar[CP_OFFSET]
    exptime = cpar[CP_EXPTIME]
    gain = cpar[CP_GAIN]
    sat = cpar[CP_SAT]
    r2 = r * r
    for j in range(h):
        y = oy + j
        dy = y - yc
        a, b = _chord(ox, xc, dy * dy, r2, 0, w - 1)
        inside = q0 <= j < q1
        for seg in range(2):
            # The chord less the square: [a, q0) and [q1, b) on the square's rows.
            s0 = a if seg == 0 else (max(q1, a) if inside else b)
            s1 = (min(q0, b) if inside else b) if seg == 0 else b
            if s1 <= s0:
                continue
            if 0 <= y < ny:
                i0 = min(max(-ox, s0), s1)
                i1 = max(min(nx - ox, s1), i0)
            else:
                i0 = s1
                i1 = s1
            for i in range(s0, i0):
                sci_w[j, i] = np.nan
                msk_w[j, i] = MASK_OUTSIDE
            for i in range(i1, s1):
                sci_w[j, i] = np.nan
                msk_w[j, i] = MASK_OUTSIDE
            if mode != MODE_RAW:
                for i in range(i0, i1):
                    sci_w[j, i] = np.float64(sci_f[y, ox + i])
                    msk_w[j, i] = msk_f[y, ox + i]
                continue
            # fill_window's value loop, written out again: shared as an inlined function, it made
            # fill_window ~30 % slower (whole-kernel A/B).
            for i in range(i0, i1):
                x = ox + i
                rv = raw_value(raw, y, x, code)
                m = smask[y, x]
                if rv >= sat:
                    m |= MASK_SATURATED
                f = np.float64(flat[y, x])
                c = (rv - offset - np.float64(bias[y, x])) * gain
                sci = (c - np.float64(dark[y, x]) * exptime * gain) / f
                sci_w[j, i] = np.float64(np.float32(sci)) if not math.isnan(rv) else np.nan
                msk_w[j, i] = m


@numba.njit(cache=True)
def _search(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, err_f, msk_f,
            tx, ty, half, clip, nlimit, sky_sigma, ref_flux, ref_npix, factor):
    """Tracking-star component in a stamp of half-width ``half`` around (tx, ty).

    With ``factor > 0`` the component most like the reference (:func:`match_component`: not
    touching the border, consistent, closest flux), else the largest one.

    Returns
    -------
    label : int
        0 if none.
    cx, cy : float
        Centroid (px).
    touches : bool
        The component reaches the stamp border.
    flux : float
        Sum above the sky (e-).
    npix : int
    """
    n = 2 * half + 1
    ox = int(round(tx)) - half
    oy = int(round(ty)) - half
    sci = np.empty((n, n))
    msk = np.empty((n, n), np.uint8)
    fill_window(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, err_f, msk_f, ox, oy, sci, sci, msk, 0, 0,
                0.0)
    sky, sd = stamp_sky(sci, msk, clip, nlimit)
    if math.isnan(sky):
        return 0, np.nan, np.nan, False, 0.0, 0
    labels = np.empty((n, n), np.int64)
    if factor > 0.0:
        lab, cx, cy, flux, npix = match_component(sci, msk, ox, oy, sky, sd, sky_sigma, ref_flux, ref_npix,
                                                  factor, labels)
        return lab, cx, cy, False, flux, npix
    lab, cx, cy, xw, yw, npix, touches, nsat, flux = find_component(sci, msk, ox, oy, tx, ty, sky, sd,
                                                                    sky_sigma, CHOOSE_LARGEST, labels)
    return lab, cx, cy, touches, flux, npix


@numba.njit(cache=True)
def track_reference(hist):
    """Median flux (e-) and pixel count of the accepted components in ``hist`` (NaN, NaN if none).

    ``hist`` : (TRACK_HIST, 2) float64, rows (flux, npix), NaN rows unused.
    """
    n = 0
    f = np.empty(hist.shape[0])
    p = np.empty(hist.shape[0])
    for k in range(hist.shape[0]):
        if not math.isnan(hist[k, 0]):
            f[n] = hist[k, 0]
            p[n] = hist[k, 1]
            n += 1
    if n == 0:
        return np.nan, np.nan
    return np.median(f[:n]), np.median(p[:n])


@numba.njit(cache=True)
def _remember(hist, flux, npix):
    """Push an accepted component (flux e-, pixels) into ``hist``, dropping the oldest."""
    m = hist.shape[0]
    for k in range(m - 1):
        hist[k, 0] = hist[k + 1, 0]
        hist[k, 1] = hist[k + 1, 1]
    hist[m - 1, 0] = flux
    hist[m - 1, 1] = npix


@numba.njit(nogil=True, cache=True)
def track_frame(mode, code, raw, sci_f, err_f, msk_f, bias, dark, flat, smask, cpar,
                ref_x, ref_y, track, prev_dx, prev_dy, ipar, fpar, state, hist):
    """Offset of the field in one frame from its tracking star (step 1 of the module docstring).

    The largest component of the stamp at the prediction is accepted when it is consistent
    with the tracking star of the previous frames: it does not reach the stamp border and has
    at least ``1 / fpar[FP_TRACKF]`` of the median flux and pixel count of the last
    ``TRACK_HIST`` accepted components (``hist``). Otherwise (a hot pixel, a cosmic ray, a faint
    neighbour or the star's wing where the star used to be), and also when it lies at least
    ``fpar[FP_JUMP]`` px from the prediction (a jump: a neighbour may have landed there), the
    search is widened to ``reacquire_radius`` and the component most like the reference is
    taken (:func:`bandersnake.centroid.match_component`). Nothing consistent: the star is lost
    (``FLAG_LOST``) and the previous offset kept, rather than a wrong position. Before the
    first accepted frame, or with ``fpar[FP_TRACKF] <= 0``, no check is made: largest component,
    widened search when there is none or it touches the border.

    Parameters
    ----------
    mode : int
        ``MODE_RAW`` (calibrate ``raw`` with the masters) or ``MODE_REDUCED`` (read
        ``sci_f``/``err_f``/``msk_f``, float32 e- and uint8 mask). Unused arrays may be 1x1.
    code : int
        Storage of ``raw`` (``RAW_*``, see :func:`raw_value`).
    raw : 2-D array
        Raw frame (ADU as ``code`` says), trimmed to the masters' shape.
    bias, dark, flat, smask : 2-D arrays
        Master bias (ADU), dark (ADU/s), flat (normalised) and static mask (``MASK_*``).
    cpar : 1-D float64
        Calibration scalars, indices ``CP_*`` (:func:`calib_params`).
    ref_x, ref_y : 1-D float64
        Reference star positions (px, 0-based).
    track : int
        Index of the tracking star.
    prev_dx, prev_dy : float
        Offset of the field found in the previous frame (px).
    ipar, fpar : 1-D int64 / float64
        Parameters, indices ``IP_*`` / ``FP_*``.
    state : (N_STATE,) float64
        Out: entries ``ST_*``: field offset dx, dy (px), the frame flag bits, and what the
        tracker saw in the stamp at the prediction (for the log).
    hist : (TRACK_HIST, 2) float64
        In/out: (flux e-, pixels) of the last accepted tracking-star components, NaN rows
        unused (all NaN before the first frame); carried from frame to frame like the offset.
    """
    b = ipar[IP_BOXSIZE]
    reacq = ipar[IP_REACQ]
    nlimit = ipar[IP_NLIMIT]
    clip = fpar[FP_CLIP]
    sky_sigma = fpar[FP_SKYSIGMA]
    factor = fpar[FP_TRACKF]
    ref_flux, ref_npix = track_reference(hist)
    checked = factor > 0.0 and not math.isnan(ref_flux)
    tx = ref_x[track] + prev_dx
    ty = ref_y[track] + prev_dy
    lab, cx, cy, touches, flux, npix = _search(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, err_f,
                                               msk_f, tx, ty, b, clip, nlimit, sky_sigma, 0.0, 0.0, 0.0)
    state[ST_FLUX] = flux
    state[ST_NPIX] = npix
    state[ST_DIST] = math.hypot(cx - tx, cy - ty) if lab > 0 else np.nan
    state[ST_REF_FLUX] = ref_flux
    state[ST_REF_NPIX] = ref_npix
    frame_flag = 0
    widened = False
    if checked:
        ok = lab > 0 and not touches and consistent_with(flux, npix, ref_flux, ref_npix, factor)
        widen = not ok or (lab > 0 and state[ST_DIST] >= fpar[FP_JUMP])
    else:
        ok = lab > 0            # unchecked: any component, widened only when none or cut by the border
        widen = lab == 0 or touches
    if widen and reacq > b:
        lab2, cx2, cy2, touches2, flux2, npix2 = _search(mode, code, raw, bias, dark, flat, smask, cpar, sci_f,
                                                         err_f, msk_f, tx, ty, reacq, clip, nlimit, sky_sigma,
                                                         ref_flux, ref_npix, factor if checked else 0.0)
        # The widened stamp holds the narrow one: a consistent narrow component found again
        # there keeps its narrow-stamp centroid.
        same = checked and ok and lab2 > 0 and math.hypot(cx2 - cx, cy2 - cy) < SAME_COMPONENT_PX
        if lab2 > 0 and not same:
            lab, cx, cy, flux, npix = lab2, cx2, cy2, flux2, npix2
            widened = True
            ok = True
    if not ok:
        lab = 0
    if lab > 0:
        dx = cx - ref_x[track]
        dy = cy - ref_y[track]
        if widened or math.hypot(cx - tx, cy - ty) >= fpar[FP_JUMP]:
            frame_flag |= FLAG_REACQUIRED
        _remember(hist, flux, npix)
    else:
        dx = prev_dx
        dy = prev_dy
        frame_flag |= FLAG_LOST
    state[ST_DX] = dx
    state[ST_DY] = dy
    state[ST_FLAG] = frame_flag


@numba.njit(cache=True)
def _centroid_star(sci, msk, ox, oy, px, py, s, nx, ny, frame_flag, ipar, fpar, labels,
                   cent_out, cflag, stamps, comp):
    """Centroid and stamp diagnostics of star ``s`` on its stamp (origin ``ox, oy``)."""
    n = sci.shape[0]
    b = ipar[IP_BOXSIZE]
    if ipar[IP_STAMPS]:
        for j in range(n):
            for i in range(n):
                stamps[s, j, i] = np.float32(sci[j, i])
    flag = frame_flag
    sky, sd = stamp_sky(sci, msk, fpar[FP_CLIP], ipar[IP_NLIMIT])
    pxk, pyk, pv, na, n3, n5, n10, nnan, nout = stamp_diagnostics(sci, msk, ox, oy, sky, sd,
                                                                  fpar[FP_FLUXABOVE])
    labels[:, :] = 0
    lab_s = 0
    ccx = np.nan
    ccy = np.nan
    xw = np.nan
    yw = np.nan
    nsat = 0
    if not math.isnan(sky):
        lab_s, ccx, ccy, xw, yw, npix, tch, nsat, _ = find_component(sci, msk, ox, oy, px, py, sky, sd,
                                                                  fpar[FP_SKYSIGMA], CHOOSE_CENTRAL, labels)
    xc = px
    yc = py
    if lab_s > 0 and ipar[IP_REFINE] != 0:
        xc = ccx
        yc = ccy
        ok, rx, ry = windowed_centroid(sci, msk, ox, oy, ccx, ccy, sky, refine_sigma(xw, yw),
                                       50, float(b))
        if ok:
            xc = rx
            yc = ry
    for j in range(n):
        for i in range(n):
            comp[s, j, i] = 1 if (lab_s > 0 and labels[j, i] == lab_s) else 0
    if nsat > 0:
        flag |= FLAG_SATURATED
    if nnan > 0:
        flag |= FLAG_NAN
    if xc < -0.5 or yc < -0.5 or xc > nx - 0.5 or yc > ny - 0.5:
        flag |= FLAG_OFF_CHIP
    elif lab_s > 0:
        for j in range(n):
            for i in range(n):
                if comp[s, j, i] and (ox + i == 0 or oy + j == 0 or ox + i == nx - 1 or oy + j == ny - 1):
                    flag |= FLAG_OFF_CHIP
    cent_out[s, C_XC] = xc
    cent_out[s, C_YC] = yc
    cent_out[s, C_XW] = xw
    cent_out[s, C_YW] = yw
    cent_out[s, C_PX] = pxk
    cent_out[s, C_PY] = pyk
    cent_out[s, C_PV] = pv
    cent_out[s, C_NABOVE] = na
    cent_out[s, C_N3] = n3
    cent_out[s, C_N5] = n5
    cent_out[s, C_N10] = n10
    cflag[s] = flag


@numba.njit(cache=True)
def _photometry_star(sci, err, msk, excl, ox, oy, s, frame_flag, ipar, fpar, radii, cent_out, buf,
                     sums, area, var, nbad, nsatp, nnanp, noutp, phot_out, pflag):
    """Sky annulus and aperture sums of star ``s`` around its centroid on a window (origin ``ox, oy``)."""
    nap = radii.shape[0]
    xc = cent_out[s, C_XC]
    yc = cent_out[s, C_YC]
    nsky, nan_ann = annulus_values(sci, msk, excl, ox, oy, xc, yc, fpar[FP_RIN], fpar[FP_ROUT], buf)
    sky, med, sky_sd, nused = clipped_stats(buf, nsky, fpar[FP_SKYCLIP], ipar[IP_SKYITERS])
    aperture_sums(sci, err, msk, ox, oy, xc, yc, radii, sums, area, var, nbad, nsatp, nnanp, noutp)
    for k in range(nap):
        flag = frame_flag
        if noutp[k] > 0:
            flag |= FLAG_OFF_CHIP
        if nsatp[k] > 0:
            flag |= FLAG_SATURATED
        if nbad[k] > 0:
            flag |= FLAG_BAD_PIXEL
        if nnanp[k] > 0 or nan_ann > 0:
            flag |= FLAG_NAN
        if ipar[IP_SKYSUPP]:
            flux = sums[k]
            fvar = var[k]
        elif nused > 0:
            flux = sums[k] - sky * area[k]
            fvar = var[k] + area[k] * area[k] * sky_sd * sky_sd / nused
        else:
            flux = np.nan
            fvar = np.nan
        if nnanp[k] > 0 or area[k] <= 0.0:
            flux = np.nan
            fvar = np.nan
        phot_out[k, s, P_FLUX] = flux
        phot_out[k, s, P_FLUXERR] = math.sqrt(fvar) if fvar >= 0.0 else np.nan
        phot_out[k, s, P_SKY] = 0.0 if ipar[IP_SKYSUPP] else sky
        phot_out[k, s, P_SKYERR] = sky_sd
        phot_out[k, s, P_NBAD] = nbad[k]
        phot_out[k, s, P_NSKY] = nused
        phot_out[k, s, P_AREA] = area[k]
        pflag[k, s] = flag


# Centroid shift (px, from the predicted position's pixel) up to which the photometry of a star
# reuses the window calibrated for its stamp (else a window is calibrated around the centroid).
SHARE_MARGIN = 2


@numba.njit(nogil=True, cache=True)
def measure_frame(mode, code, raw, sci_f, err_f, msk_f, bias, dark, flat, smask, cpar,
                  ref_x, ref_y, ipar, fpar, radii, state,
                  cent_out, cflag, phot_out, pflag, stamps, stamp_org, comp):
    """Centroids and multi-aperture photometry of all stars of one frame (step 2).

    Parameters
    ----------
    mode, code, raw, sci_f, err_f, msk_f, bias, dark, flat, smask, cpar, ref_x, ref_y, ipar, fpar
        As :func:`track_frame`.
    radii : 1-D float64
        Aperture radii (px).
    state : (N_STATE,) float64
        Field offset dx, dy (px) and frame flag bits (``ST_*``), from :func:`track_frame`.
    cent_out : (n_stars, N_CENT) float64, cflag : (n_stars,) int32
    phot_out : (n_ap, n_stars, N_PHOT) float64, pflag : (n_ap, n_stars) int32
    stamps : (n_stars, 2b+1, 2b+1) float32, stamp_org : (n_stars, 2) int64
        Centroid stamps (written when ``ipar[IP_STAMPS]``) and their origins (x, y).
    comp : (n_stars, 2b+1, 2b+1) uint8
        Work array: centroid component of each star.

    Notes
    -----
    Without ``mask_centroid_pixels`` each star is done at once: one window, centred on the
    predicted position, serves both its stamp and its photometry. The stamp's square (holding
    the apertures of a centroid up to ``SHARE_MARGIN`` px away) is calibrated first, and once
    the centroid is known only the annulus pixels outside it (:func:`fill_disc`): ~20 % fewer
    pixels than a disc reaching the annulus of any such centroid. With it, every star's
    centroid component must be known before any sky is measured: stamps first, then a window
    around each centroid. The next star's frame rows are requested (:func:`prefetch_window`)
    while a star is measured.
    Either way the pixel values are the same (:func:`fill_window`), and so are the results.
    """
    if mode == MODE_RAW:
        ny, nx = raw.shape
    else:
        ny, nx = sci_f.shape
    b = ipar[IP_BOXSIZE]
    mask_cpix = ipar[IP_MASKCPIX] != 0
    n_stars = ref_x.shape[0]
    nap = radii.shape[0]
    dx = state[ST_DX]
    dy = state[ST_DY]
    frame_flag = np.int32(state[ST_FLAG])
    n = 2 * b + 1
    labels = np.zeros((n, n), np.int64)

    # Photometry window around a centroid (half-width `half`).
    r_out = fpar[FP_ROUT]
    rmax = radii.max()
    half = int(math.ceil(max(r_out, rmax))) + 1
    m = 2 * half + 1
    # aperture_sums reads err within floor(xc +- rmax + 0.5) only: a square of half-width
    # ceil(rmax) + 1 around round(xc) holds it.
    ce = int(math.ceil(rmax)) + 1
    e0 = max(half - ce, 0)
    e1 = min(half + ce + 1, m)
    # A pixel centre within r_out of the centroid lies within r_out + sqrt(0.5) of the centre
    # pixel round(xc), round(yc); mask_centroid_pixels reads the same annulus pixels.
    rlim = r_out + 1.0
    # Shared window (stamp + photometry) around the predicted position's pixel, big enough for
    # the photometry window of a centroid up to SHARE_MARGIN px away. Before the centroid, a
    # square of half-width half_a is filled: the stamp, and the aperture pixels (with error)
    # of such a centroid; after it, the annulus disc around the centroid (fill_disc).
    M = SHARE_MARGIN
    half_s = max(half + M, b)
    m_s = 2 * half_s + 1
    e0_s = max(half_s - ce - M, 0)
    e1_s = min(half_s + ce + 1 + M, m_s)
    half_a = max(b, ce + M)
    q0 = half_s - half_a
    q1 = half_s + half_a + 1
    wsize = max(m, m_s)
    sci_w = np.empty((wsize, wsize))
    err_w = np.empty((wsize, wsize))
    msk_w = np.empty((wsize, wsize), np.uint8)
    excl = np.zeros((wsize, wsize), np.bool_)
    buf = np.empty(wsize * wsize)
    sums = np.empty(nap)
    area = np.empty(nap)
    var = np.empty(nap)
    nbad = np.empty(nap, np.int64)
    nsatp = np.empty(nap, np.int64)
    nnanp = np.empty(nap, np.int64)
    noutp = np.empty(nap, np.int64)
    sci_p = sci_w[:m, :m]
    err_p = err_w[:m, :m]
    msk_p = msk_w[:m, :m]
    excl_p = excl[:m, :m]

    if not mask_cpix:
        sci_s = sci_w[:m_s, :m_s]
        err_s = err_w[:m_s, :m_s]
        msk_s = msk_w[:m_s, :m_s]
        excl_s = excl[:m_s, :m_s]
        j0 = half_s - b
        for s in range(n_stars):
            px = ref_x[s] + dx
            py = ref_y[s] + dy
            cx = int(round(px))
            cy = int(round(py))
            if s == 0:
                prefetch_window(mode, raw, sci_f, cx, cy, half_s)
            if s + 1 < n_stars:
                prefetch_window(mode, raw, sci_f, int(round(ref_x[s + 1] + dx)), int(round(ref_y[s + 1] + dy)),
                                half_s)
            ox = cx - b
            oy = cy - b
            stamp_org[s, 0] = ox
            stamp_org[s, 1] = oy
            fill_window(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, err_f, msk_f,
                        cx - half_a, cy - half_a, sci_s[q0:q1, q0:q1], err_s[q0:q1, q0:q1], msk_s[q0:q1, q0:q1],
                        e0_s - q0, e1_s - q0, 0.0)
            _centroid_star(sci_s[j0:j0 + n, j0:j0 + n], msk_s[j0:j0 + n, j0:j0 + n], ox, oy, px, py, s,
                           nx, ny, frame_flag, ipar, fpar, labels, cent_out, cflag, stamps, comp)
            xc = cent_out[s, C_XC]
            yc = cent_out[s, C_YC]
            if math.hypot(round(xc) - cx, round(yc) - cy) <= M:
                fill_disc(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, msk_f, cx - half_s, cy - half_s,
                          sci_s, msk_s, xc, yc, r_out, q0, q1)
                _photometry_star(sci_s, err_s, msk_s, excl_s, cx - half_s, cy - half_s, s, frame_flag, ipar,
                                 fpar, radii, cent_out, buf, sums, area, var, nbad, nsatp, nnanp, noutp,
                                 phot_out, pflag)
            else:
                ox = int(round(xc)) - half
                oy = int(round(yc)) - half
                fill_window(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, err_f, msk_f, ox, oy,
                            sci_p, err_p, msk_p, e0, e1, rlim)
                _photometry_star(sci_p, err_p, msk_p, excl_p, ox, oy, s, frame_flag, ipar, fpar, radii,
                                 cent_out, buf, sums, area, var, nbad, nsatp, nnanp, noutp, phot_out, pflag)
        return

    # mask_centroid_pixels: all stamps first.
    sci_c = sci_w[:n, :n]
    msk_c = msk_w[:n, :n]
    for s in range(n_stars):
        px = ref_x[s] + dx
        py = ref_y[s] + dy
        if s + 1 < n_stars:
            prefetch_window(mode, raw, sci_f, int(round(ref_x[s + 1] + dx)), int(round(ref_y[s + 1] + dy)), b)
        ox = int(round(px)) - b
        oy = int(round(py)) - b
        stamp_org[s, 0] = ox
        stamp_org[s, 1] = oy
        fill_window(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, err_f, msk_f, ox, oy,
                    sci_c, sci_c, msk_c, 0, 0, 0.0)
        _centroid_star(sci_c, msk_c, ox, oy, px, py, s, nx, ny, frame_flag, ipar, fpar, labels,
                       cent_out, cflag, stamps, comp)
    for s in range(n_stars):
        ox = int(round(cent_out[s, C_XC])) - half
        oy = int(round(cent_out[s, C_YC])) - half
        fill_window(mode, code, raw, bias, dark, flat, smask, cpar, sci_f, err_f, msk_f, ox, oy,
                    sci_p, err_p, msk_p, e0, e1, rlim)
        # Pixels of any star's centroid component are left out of this star's sky.
        excl_p[:, :] = False
        for t in range(n_stars):
            tox = stamp_org[t, 0]
            toy = stamp_org[t, 1]
            for j in range(n):
                yy = toy + j - oy
                if yy < 0 or yy >= m:
                    continue
                for i in range(n):
                    xx = tox + i - ox
                    if 0 <= xx < m and comp[t, j, i]:
                        excl_p[yy, xx] = True
        _photometry_star(sci_p, err_p, msk_p, excl_p, ox, oy, s, frame_flag, ipar, fpar, radii,
                         cent_out, buf, sums, area, var, nbad, nsatp, nnanp, noutp, phot_out, pflag)


@numba.njit(nogil=True, cache=True)
def process_frame(mode, code, raw, sci_f, err_f, msk_f, bias, dark, flat, smask, cpar,
                  ref_x, ref_y, track, prev_dx, prev_dy, ipar, fpar, radii,
                  cent_out, cflag, phot_out, pflag, stamps, stamp_org, comp, state, hist):
    """:func:`track_frame` then :func:`measure_frame` on one frame (arguments as theirs)."""
    track_frame(mode, code, raw, sci_f, err_f, msk_f, bias, dark, flat, smask, cpar,
                ref_x, ref_y, track, prev_dx, prev_dy, ipar, fpar, state, hist)
    measure_frame(mode, code, raw, sci_f, err_f, msk_f, bias, dark, flat, smask, cpar,
                  ref_x, ref_y, ipar, fpar, radii, state,
                  cent_out, cflag, phot_out, pflag, stamps, stamp_org, comp)
