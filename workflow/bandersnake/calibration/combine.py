"""Memory-bounded MAD-clipped mean combine of a stack of 2-D frames.

Semantics (per pixel, over the frames of the stack)
----------------------------------------------------
1. Non-finite values (NaN, inf) are left out, as missing.
2. ``centre`` = median of the values, ``scale`` = 1.482602218505602 * MAD (the MAD-derived
   sigma, astropy's ``mad_std``).
3. Values outside ``[centre - clip_low * scale, centre + clip_high * scale]`` are rejected
   (a value exactly on a bound is kept). One pass, no iteration.
4. The result is the mean of the values kept; ``ncombined`` counts them.

This is exactly ``ccdproc.combine(..., method='average', sigma_clip=True,
sigma_clip_func=np.ma.median, sigma_clip_dev_func=mad_std)``: ccdproc 2.5 calls
``astropy.stats.sigma_clip`` with ``maxiters=1`` (a single pass) and bounds
``cen - std * sigma_lower``, ``cen + std * sigma_upper``; ``tests/test_combine.py`` checks the
equality to 1e-6 relative.

bandersnatch's ``medabsdevclip(cube, clip, nlimit)`` maps onto this as follows:

* it is also a single pass with a median centre and a kept-if-``<= clip`` test, but its scale
  is 1.5 * MAD instead of 1.4826 * MAD, so its ``clip`` is 1.2 % wider than ours for the same
  number;
* ``nlimit`` leaves the highest values of each pixel out of the *estimate* of centre and scale
  (not out of the mean), as insurance against bright contaminants (stars in flats, cosmic rays).
  bandersnatch drops ``nlimit + 1`` values (an off-by-one), and when ``nlimit + 1 >= n`` its
  slice ``[:n - nlimit - 1]`` wraps to a negative index or is empty (NaN master). Here exactly
  ``min(nlimit, (m - 1) // 2)`` values are dropped, ``m`` being the number of finite values, so
  at least half of them always remain. ``nlimit=0`` is the ccdproc combine.
  ``nlimit > 0`` biases the centre low and shrinks the scale on clean data, so high values of
  clean pixels are clipped. Measured on Gaussian noise (bias of the combined value in units of
  the single-frame sigma, clip 3 / clip 5): n=5, nlimit>=2: -0.28 / -0.20; n=10, nlimit=5:
  -0.22 / -0.10; n=20, nlimit=5: -0.07 / -0.02; nlimit=0: below 0.002 for every n. The median is
  already robust to fewer than half contaminated values, so nlimit=0 is the recommended setting.

Memory
------
Frames are loaded one at a time (through a caller-supplied loader that may do overscan, bias,
dark and normalisation) into a :class:`FrameStack`. When the whole stack fits in the memory
bound it stays in memory; otherwise it is spooled as float32 to a scratch file and combined in
row blocks sized by :func:`plan_rows`, each block read with plain ``readinto`` (no memmap, so
the resident set stays bounded).
"""

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from ..errors import ConfigError, FrameError
from .stats import MAD_TO_SIGMA

log = logging.getLogger(__name__)

MB = 2**20
# Bytes per pixel of one frame held while a loader works on it (raw read, float32 copy,
# overscan/trim copy, arithmetic temporaries); a generous allowance measured with tracemalloc.
FRAME_WORK_BYTES_PER_PX = 24
# Bytes per pixel of the outputs kept for the whole image: float32 mean + int16 count.
OUTPUT_BYTES_PER_PX = 6


@dataclass
class CombineResult:
    """Output of a combine.

    Attributes
    ----------
    data : ndarray of float32, shape (ny, nx)
        Clipped mean, in the unit of the frames (NaN where no finite value).
    ncombined : ndarray of int16, shape (ny, nx)
        Number of values averaged at each pixel (frames used minus rejected and non-finite).
    nframes : int
        Frames in the stack.
    used : list
        Items (paths or indices) that entered the stack, in order.
    skipped : list of (item, reason)
        Items the loader could not use.
    rows_per_block : int
        Rows combined per block (``ny`` when the stack was held in memory).
    """

    data: np.ndarray
    ncombined: np.ndarray
    nframes: int
    used: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    rows_per_block: int = 0


# --------------------------------------------------------------------------------------------
# kernel
# --------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _insertion_sort(a, m):
    # Stacks are short (3..100 frames): insertion sort beats a general sort here.
    for i in range(1, m):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@numba.njit(cache=True, nogil=True)
def _median_sorted(a, m):
    h = m // 2
    if m % 2 == 1:
        return a[h]
    return 0.5 * (a[h - 1] + a[h])


@numba.njit(cache=True, nogil=True)
def _median_abs_dev_sorted(a, m, cen):
    # a[:m] is sorted, so the deviations below and above the centre are two sorted runs
    # (walking outwards from the middle); merging them up to the middle gives the median
    # absolute deviation in O(m) instead of a second sort.
    hi = 0
    while hi < m and a[hi] < cen:
        hi += 1
    lo = hi - 1
    k_lo = (m - 1) // 2
    k_hi = m // 2
    prev = 0.0
    for k in range(k_hi + 1):
        if lo >= 0 and (hi >= m or cen - a[lo] <= a[hi] - cen):
            d = cen - a[lo]
            lo -= 1
        else:
            d = a[hi] - cen
            hi += 1
        if k == k_lo:
            prev = d
        if k == k_hi:
            return 0.5 * (prev + d)
    return 0.0


@numba.njit(cache=True, parallel=True, nogil=True)
def _clip_mean_kernel(block, clip_low, clip_high, nlimit, out, nout):
    """Clipped mean of ``block`` (n, rows, nx) into ``out`` (rows, nx) and ``nout`` (rows, nx)."""
    n, rows, nx = block.shape
    for r in numba.prange(rows):
        # Pixel-major copy of the row: each pixel's n values become contiguous (the stack is
        # frame-major, so reading pixel by pixel would stride across n frames).
        row = np.empty((nx, n), np.float64)
        for k in range(n):
            for x in range(nx):
                row[x, k] = block[k, r, x]
        srt = np.empty(n, np.float64)
        for x in range(nx):
            vals = row[x]
            m = 0
            for k in range(n):
                v = vals[k]
                if np.isfinite(v):
                    srt[m] = v
                    m += 1
            if m == 0:
                out[r, x] = np.nan
                nout[r, x] = 0
                continue
            _insertion_sort(srt, m)
            me = m - min(nlimit, (m - 1) // 2)  # values used for centre and scale
            cen = _median_sorted(srt, me)
            std = _median_abs_dev_sorted(srt, me, cen) * MAD_TO_SIGMA
            lo = cen - std * clip_low
            hi = cen + std * clip_high
            s = 0.0
            c = 0
            for k in range(n):
                v = vals[k]
                if v >= lo and v <= hi:  # False for NaN
                    s += v
                    c += 1
            out[r, x] = s / c  # c >= 1: more than half the values lie within one MAD
            nout[r, x] = c


def clipped_mean(stack, clip_low=3.0, clip_high=None, nlimit=0, threads=None):
    """MAD-clipped mean of an in-memory stack (see the module docstring for the semantics).

    Parameters
    ----------
    stack : array_like, shape (n, ny, nx)
        Frames, any unit (float32 is used as is; other dtypes are converted).
    clip_low, clip_high : float
        Rejection thresholds in MAD-derived sigma below / above the median;
        ``clip_high=None`` means ``clip_high = clip_low``.
    nlimit : int
        Highest values per pixel left out of the centre/scale estimate (bandersnatch's nlimit).
    threads : int, optional
        numba threads (default: numba's current setting).

    Returns
    -------
    mean : ndarray of float32, shape (ny, nx)
    ncombined : ndarray of int16, shape (ny, nx)
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"stack must be 3-D (n, ny, nx), got shape {stack.shape}")
    if stack.dtype != np.float32:
        stack = stack.astype(np.float32)
    clip_low, clip_high = _thresholds(clip_low, clip_high)
    out = np.empty(stack.shape[1:], np.float32)
    nout = np.empty(stack.shape[1:], np.int16)
    _run_kernel(stack, clip_low, clip_high, nlimit, out, nout, threads)
    return out, nout


def _thresholds(clip_low, clip_high):
    clip_high = clip_low if clip_high is None else clip_high
    if not (clip_low > 0 and clip_high > 0):
        raise ConfigError(f"clip thresholds must be > 0 (got low={clip_low}, high={clip_high})")
    return float(clip_low), float(clip_high)


def _run_kernel(block, clip_low, clip_high, nlimit, out, nout, threads):
    if nlimit and block.shape[0] < 4 * nlimit:
        log.info("nlimit=%d with %d frames biases the clipped mean low (see bandersnake.combine); "
                 "nlimit=0 is unbiased", nlimit, block.shape[0])
    if block.shape[0] > np.iinfo(np.int16).max:
        raise ValueError(f"too many frames for an int16 count: {block.shape[0]}")
    old = numba.get_num_threads()
    if threads:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        _clip_mean_kernel(np.ascontiguousarray(block), clip_low, clip_high, int(max(0, nlimit)), out, nout)
    finally:
        numba.set_num_threads(old)


# --------------------------------------------------------------------------------------------
# memory planning and the frame stack
# --------------------------------------------------------------------------------------------
def plan_rows(n_frames, shape, memory_mb, reserved_bytes_per_px=0):
    """Rows per block so that a combine of ``n_frames`` frames of ``shape`` fits ``memory_mb``.

    The budget covers the outputs for the whole image, one frame being loaded (at
    ``FRAME_WORK_BYTES_PER_PX``), what the caller holds meanwhile (masters) and the
    float32 block buffer ``n_frames * rows * nx * 4``.

    Parameters
    ----------
    n_frames : int
    shape : (int, int)
        ``(ny, nx)`` of the frames (px).
    memory_mb : float
        Memory bound (MiB), e.g. config ``processing.combine_memory_mb``.
    reserved_bytes_per_px : float
        Memory held by the caller for the duration of the combine, in bytes per pixel of one
        frame (e.g. 4 for a float32 master bias).

    Returns
    -------
    rows : int
        Between 1 and ``ny``; ``ny`` means the stack is held in memory in one block.

    Raises
    ------
    ConfigError
        When the bound cannot hold even one row of the stack.
    """
    ny, nx = shape
    fixed = ny * nx * (OUTPUT_BYTES_PER_PX + FRAME_WORK_BYTES_PER_PX + reserved_bytes_per_px)
    per_row = max(1, n_frames) * nx * 4
    rows = int((memory_mb * MB - fixed) // per_row)
    if rows < 1:
        need = math.ceil((fixed + per_row) / MB)
        raise ConfigError(
            f"processing.combine_memory_mb={memory_mb} is too small to combine {n_frames} frames of "
            f"{ny}x{nx} px: set it to at least {need}"
        )
    return min(rows, ny)


class FrameStack:
    """Frames loaded one by one, kept in memory or spooled to a float32 scratch file.

    Use as a context manager (the scratch file is deleted on exit), or call :meth:`close`.

    Parameters
    ----------
    capacity : int
        Maximum number of frames.
    shape : (int, int)
        ``(ny, nx)`` of every frame (px).
    memory_mb : float
        Memory bound for the whole combine (MiB).
    reserved_bytes_per_px : float
        Memory held by the caller meanwhile (masters), bytes per pixel of one frame.
    scratch_dir : str or Path, optional
        Where a scratch file goes when the stack does not fit (default: the system temp dir).
    """

    def __init__(self, capacity, shape, memory_mb=1024, reserved_bytes_per_px=0, scratch_dir=None):
        self.shape = tuple(int(s) for s in shape)
        self.capacity = int(capacity)
        self.memory_mb = memory_mb
        self.reserved_bytes_per_px = reserved_bytes_per_px
        self.rows_per_block = plan_rows(self.capacity, self.shape, memory_mb, reserved_bytes_per_px)
        self.n = 0
        self.items = []
        self._fh = None
        self._path = None
        if self.rows_per_block >= self.shape[0]:
            self._mem = np.empty((self.capacity,) + self.shape, np.float32)
        else:
            self._mem = None
            directory = Path(scratch_dir) if scratch_dir else Path(tempfile.gettempdir())
            directory.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=".bandersnake_stack_", suffix=".f32", dir=directory)
            self._fh = os.fdopen(fd, "w+b")
            self._path = path
            log.info("stack of up to %d frames %s spooled to %s, %d rows per block",
                     self.capacity, self.shape, path, self.rows_per_block)

    @property
    def in_memory(self):
        """True when the stack is held in memory (one block)."""
        return self._mem is not None

    def append(self, frame, item=None):
        """Add one frame (converted to float32); ``item`` labels it (e.g. its path)."""
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} differs from stack shape {self.shape}")
        if self.n >= self.capacity:
            raise ValueError(f"stack is full ({self.capacity} frames)")
        if self._mem is not None:
            self._mem[self.n] = frame
        else:
            self._fh.seek(self.n * self._frame_bytes)
            self._fh.write(np.ascontiguousarray(frame, dtype=np.float32).tobytes())
        self.items.append(item if item is not None else self.n)
        self.n += 1

    @property
    def _frame_bytes(self):
        return self.shape[0] * self.shape[1] * 4

    def blocks(self, rows=None):
        """Yield ``(y0, y1, block)`` with ``block`` of shape ``(n, y1 - y0, nx)`` float32."""
        ny, nx = self.shape
        rows = rows or self.rows_per_block
        if self._mem is not None:
            for y0 in range(0, ny, rows):
                y1 = min(ny, y0 + rows)
                yield y0, y1, self._mem[: self.n, y0:y1]
            return
        self._fh.flush()
        # One flat buffer; the last, shorter block is a contiguous view of its start.
        buf = np.empty(self.n * rows * nx, np.float32)
        for y0 in range(0, ny, rows):
            y1 = min(ny, y0 + rows)
            block = buf[: self.n * (y1 - y0) * nx].reshape(self.n, y1 - y0, nx)
            for i in range(self.n):
                self._fh.seek(i * self._frame_bytes + y0 * nx * 4)
                view = memoryview(block[i]).cast("B")
                if self._fh.readinto(view) != view.nbytes:
                    raise OSError(f"{self._path}: short read from the scratch stack")
            yield y0, y1, block

    def frame(self, i):
        """Frame ``i`` as a float32 array (a copy when spooled)."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        if self._mem is not None:
            return self._mem[i]
        self._fh.flush()
        self._fh.seek(i * self._frame_bytes)
        out = np.empty(self.shape, np.float32)
        self._fh.readinto(memoryview(out).cast("B"))
        return out

    def combine(self, clip_low=3.0, clip_high=None, nlimit=0, threads=None):
        """Clipped mean of the frames added so far (see the module docstring).

        Returns
        -------
        CombineResult
        """
        if self.n == 0:
            raise ValueError("cannot combine an empty stack")
        clip_low, clip_high = _thresholds(clip_low, clip_high)
        out = np.empty(self.shape, np.float32)
        nout = np.empty(self.shape, np.int16)
        for y0, y1, block in self.blocks():
            _run_kernel(block, clip_low, clip_high, nlimit, out[y0:y1], nout[y0:y1], threads)
        return CombineResult(out, nout, self.n, list(self.items), [], self.rows_per_block)

    def close(self):
        """Delete the scratch file (if any) and free the memory."""
        self._mem = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            with _suppress_missing():
                os.unlink(self._path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _suppress_missing:
    def __enter__(self):
        return self

    def __exit__(self, typ, val, tb):
        return typ is not None and issubclass(typ, FileNotFoundError)


def load_stack(items, loader=None, shape=None, memory_mb=1024, reserved_bytes_per_px=0, scratch_dir=None):
    """Load ``items`` one at a time into a :class:`FrameStack`, skipping the unusable ones.

    Parameters
    ----------
    items : sequence
        Paths (with ``loader``) or 2-D arrays (without).
    loader : callable, optional
        ``loader(item) -> 2-D array``; may raise :class:`~bandersnake.errors.FrameError`, which
        skips the item with its reason logged.
    shape : (int, int), optional
        Required frame shape; default: the shape of the first frame that loads.
    memory_mb, reserved_bytes_per_px, scratch_dir
        See :class:`FrameStack`.

    Returns
    -------
    stack : FrameStack
        Holding the usable frames (``stack.n`` of them); close it when done.
    skipped : list of (item, reason)
    """
    items = list(items)
    skipped = []
    stack = None
    try:
        for item in items:
            try:
                frame = loader(item) if loader is not None else np.asarray(item)
                if frame.ndim != 2:
                    raise FrameError(_label(item), f"image is {frame.ndim}-D, expected 2-D")
                if shape is not None and tuple(frame.shape) != tuple(shape):
                    raise FrameError(_label(item), f"shape {frame.shape} differs from expected {tuple(shape)}")
            except FrameError as err:
                log.warning("skipping %s: %s", err.path, err.reason)
                skipped.append((item, err.reason))
                continue
            if stack is None:
                shape = tuple(frame.shape)
                stack = FrameStack(len(items), shape, memory_mb, reserved_bytes_per_px, scratch_dir)
            stack.append(frame, item)
            del frame
    except BaseException:
        if stack is not None:
            stack.close()
        raise
    if stack is None:  # nothing usable: an empty stack keeps callers uniform
        stack = _EmptyStack(shape)
    return stack, skipped


class _EmptyStack(FrameStack):
    def __init__(self, shape):  # noqa: D107 - no storage at all
        self.shape = tuple(shape) if shape is not None else None
        self.n = 0
        self.items = []
        self._mem = None
        self._fh = None
        self.rows_per_block = 0


def _label(item):
    return item if isinstance(item, (str, Path)) else f"frame {item!r}"[:80]


def combine(items, clip_low=3.0, clip_high=None, nlimit=0, memory_mb=1024, loader=None, shape=None,
            reserved_bytes_per_px=0, scratch_dir=None, threads=None):
    """Load and combine frames within a memory bound (see the module docstring).

    Parameters
    ----------
    items : sequence
        Paths (with ``loader``) or 2-D arrays.
    clip_low, clip_high : float
        Rejection thresholds in MAD-derived sigma (``clip_high=None``: symmetric).
    nlimit : int
        Highest values per pixel left out of the centre/scale estimate.
    memory_mb : float
        Memory bound of the whole combine (MiB).
    loader : callable, optional
        ``loader(item) -> 2-D array`` (e.g. read + overscan + bias subtraction); a
        :class:`~bandersnake.errors.FrameError` skips the item.
    shape : (int, int), optional
        Required frame shape.
    reserved_bytes_per_px : float
        Memory held by the caller meanwhile, bytes per pixel of one frame.
    scratch_dir : str or Path, optional
        Directory for the scratch stack when it does not fit in memory.
    threads : int, optional
        numba threads.

    Returns
    -------
    CombineResult

    Raises
    ------
    ValueError
        When no item could be used.
    """
    items = list(items)
    stack, skipped = load_stack(items, loader, shape, memory_mb, reserved_bytes_per_px, scratch_dir)
    with stack:
        if stack.n == 0:
            raise ValueError(f"no usable frame among {len(items)}: "
                             + "; ".join(f"{_label(i)}: {r}" for i, r in skipped[:5]))
        result = stack.combine(clip_low, clip_high, nlimit, threads)
    result.skipped = skipped
    return result
