"""Combination of resampled frames into a stack, block by block within a memory bound.

The resampled frames (rate e-/s, variance, MASK) are spooled to float32/uint8 scratch files one
by one, then combined in blocks of rows sized so that a block of every frame, with the working
copies of the combination, fits ``memory_mb`` (as the masters, ``processing.combine_memory_mb``).

Per output pixel, a frame's value is used when its resampled MASK has none of bits 1 (bad / no
data), 2 (cosmic ray) or 4 (saturated). Methods:

* ``mean``: clipped mean with inverse-variance frame weights ``w_i = 1 / median(var_i)`` (the
  sky-limited variance of frame i; per-frame rather than per-pixel weights, since a pixel's own
  variance holds its source's Poisson term and would favour low values). Values more than
  ``clip_sigma`` of their own ERR from the centre (median, then the weighted mean) are rejected,
  twice. ERR = sqrt(sum w_i^2 var_i) / sum w_i.
* ``median``: median of the usable values; ERR = 1.2533 sqrt(1 / sum(1 / var_i)) (the median of
  Gaussian samples is 1.2533 times noisier than their mean).

Pixels whose every usable value is saturated take the mean of the saturated values (bit 4 set).
Stack MASK: bit 1 no usable value (SCI NaN), bit 2 a cosmic ray was left out in at least one
frame, bit 4 saturated in at least one frame (its value from the unsaturated ones), bit 8 within
``grow`` px of a bit-1 pixel.
"""

import os
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..calibration.mef import MASK_BAD, MASK_CR, MASK_NEIGHBOUR, MASK_SATURATED
from ..errors import BandersnakeError

MB = 1024 * 1024
EXCLUDE = MASK_BAD | MASK_CR | MASK_SATURATED
# Per pixel and frame in a block: value, variance, mask and the combination's temporaries (float64
# weights among them); measured peak 45 bytes (tracemalloc, 20 frames of 500x500).
_BYTES_PER_PX_FRAME = 48


def rows_per_block(n_frames, nx, memory_mb):
    """Rows of the grid combined at once so a block of ``n_frames`` frames fits ``memory_mb`` (MiB)."""
    per_row = max(1, n_frames) * nx * _BYTES_PER_PX_FRAME
    rows = int(memory_mb * MB // per_row)
    if rows < 1:
        raise BandersnakeError(f"memory bound of {memory_mb} MB is too small to combine {n_frames} frames "
                               f"of {nx} px per row (needs {per_row / MB:.1f} MB per row)")
    return rows


class FrameCube:
    """Resampled frames (rate, variance, MASK) spooled to scratch files in ``scratch_dir``.

    Plain files written frame by frame and read back block by block (``os.pread``), not memory
    maps: mapped pages count in the job's resident memory, so a memory-mapped cube of 50 1k x 1k
    frames showed 2.2 GB peak RSS for a 1 GB bound; read blocks do not.
    """

    _DTYPES = {"sci": np.float32, "var": np.float32, "mask": np.uint8}

    def __init__(self, n_frames, shape, scratch_dir=None):
        self.n, self.shape = int(n_frames), tuple(shape)
        self._dir = tempfile.TemporaryDirectory(prefix="stack_", dir=scratch_dir)
        d = Path(self._dir.name)
        self._fd = {name: os.open(d / f"{name}.bin", os.O_RDWR | os.O_CREAT, 0o600) for name in self._DTYPES}
        self.weights = np.zeros(self.n)

    def _offset(self, name, i, row=0):
        ny, nx = self.shape
        return (i * ny + row) * nx * np.dtype(self._DTYPES[name]).itemsize

    def put(self, i, sci, var, mask):
        """Store frame ``i`` (rate, variance, MASK on the grid) and set its weight 1/median(var)."""
        for name, arr in (("sci", sci), ("var", var), ("mask", mask)):
            data = np.ascontiguousarray(arr, dtype=self._DTYPES[name])
            os.pwrite(self._fd[name], data.tobytes(), self._offset(name, i))
        usable = ((mask & EXCLUDE) == 0) & np.isfinite(var) & (var > 0)
        self.weights[i] = 1.0 / float(np.median(var[usable])) if usable.any() else 0.0

    def block(self, name, r0, r1):
        """Rows ``r0:r1`` of every frame of one array, shape (n, r1 - r0, nx)."""
        nx = self.shape[1]
        dtype = self._DTYPES[name]
        out = np.empty((self.n, r1 - r0, nx), dtype)
        nbytes = (r1 - r0) * nx * np.dtype(dtype).itemsize
        for i in range(self.n):
            buf = os.pread(self._fd[name], nbytes, self._offset(name, i, r0))
            out[i] = np.frombuffer(buf, dtype).reshape(r1 - r0, nx) if len(buf) == nbytes else \
                (np.nan if name != "mask" else MASK_BAD)
        return out

    def close(self):
        for fd in self._fd.values():
            os.close(fd)
        self._fd = {}
        self._dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def combine_block(sci, var, mask, weights, method="mean", clip_sigma=3.0, iterations=2):
    """Combine one block of frames.

    Parameters
    ----------
    sci, var : ndarray, shape (n, rows, nx)
        Rates and variances of the frames on the grid (NaN outside).
    mask : ndarray of uint8, shape (n, rows, nx)
    weights : ndarray, shape (n,)
        Frame weights (inverse variance); frames of weight 0 are not used.
    method : {'mean', 'median'}
    clip_sigma : float
        Rejection threshold (``mean``), in units of each value's own sigma.

    Returns
    -------
    out, err : ndarray of float32, shape (rows, nx)
    bits : ndarray of uint8
        Stack MASK bits 1, 2, 4 (bit 8 is added on the whole image).
    nused : ndarray of uint16
    """
    w = np.asarray(weights, np.float64)[:, None, None]
    ok = ((mask & EXCLUDE) == 0) & np.isfinite(sci) & np.isfinite(var) & (w > 0)
    sat_only = ((mask & (MASK_BAD | MASK_CR)) == 0) & ((mask & MASK_SATURATED) > 0) & np.isfinite(sci)
    x = np.where(ok, sci, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if method == "median":
                out = np.nanmedian(x, axis=0)
                inv = np.where(ok, 1.0 / np.where(var > 0, var, np.inf), 0.0).sum(axis=0)
                err = 1.2533 * np.sqrt(1.0 / inv)
                used = ok
            elif method == "mean":
                centre = np.nanmedian(x, axis=0)
                used = ok
                sig = np.sqrt(np.where(var > 0, var, np.nan))
                for _ in range(max(1, int(iterations))):
                    used = ok & ~(np.abs(x - centre[None]) > clip_sigma * sig)
                    ww = np.where(used, w, 0.0)
                    sw = ww.sum(axis=0)
                    centre = np.where(sw > 0, (ww * np.where(used, x, 0.0)).sum(axis=0) / sw, np.nan)
                out = centre
                err = np.sqrt((ww ** 2 * np.where(used, var, 0.0)).sum(axis=0)) / sw
            else:
                raise BandersnakeError(f"stack: unknown combine method {method!r} (mean or median)")
            nused = used.sum(axis=0)
            # Every usable value saturated: keep the saturated level (flagged) rather than nothing.
            fill = (nused == 0) & sat_only.any(axis=0)
            if fill.any():
                xs = np.where(sat_only, sci, np.nan)
                out = np.where(fill, np.nanmean(xs, axis=0), out)
                vs = np.where(sat_only, var, np.nan)
                err = np.where(fill, np.sqrt(np.nanmean(vs, axis=0) / np.maximum(sat_only.sum(axis=0), 1)), err)
    bits = np.zeros(out.shape, np.uint8)
    inside = (mask & MASK_BAD) == 0
    bits[(nused == 0) & ~fill] |= MASK_BAD
    bits[((mask & MASK_CR) > 0).any(axis=0)] |= MASK_CR
    bits[(((mask & MASK_SATURATED) > 0) & inside).any(axis=0)] |= MASK_SATURATED
    out = np.where(bits & MASK_BAD, np.nan, out)
    err = np.where(bits & MASK_BAD, np.nan, err)
    return out.astype(np.float32), err.astype(np.float32), bits, nused.astype(np.uint16)


def combine_cube(cube, method="mean", clip_sigma=3.0, memory_mb=1024, grow=1):
    """Combine a :class:`FrameCube` block by block.

    Returns
    -------
    sci, err : ndarray of float32
        Stack rate and 1-sigma error (unit of the inputs, e.g. e-/s).
    mask : ndarray of uint8
        Bits 1, 2, 4, 8 (see the module docstring).
    ncomb : ndarray of uint16
        Frames used per pixel.
    """
    ny, nx = cube.shape
    rows = rows_per_block(cube.n, nx, memory_mb)
    sci = np.empty(cube.shape, np.float32)
    err = np.empty(cube.shape, np.float32)
    mask = np.empty(cube.shape, np.uint8)
    ncomb = np.empty(cube.shape, np.uint16)
    for r0 in range(0, ny, rows):
        r1 = min(ny, r0 + rows)
        s, e, m, n = combine_block(cube.block("sci", r0, r1), cube.block("var", r0, r1), cube.block("mask", r0, r1),
                                   cube.weights, method, clip_sigma)
        sci[r0:r1], err[r0:r1], mask[r0:r1], ncomb[r0:r1] = s, e, m, n
    if grow > 0:
        near = ndimage.binary_dilation((mask & MASK_BAD) > 0, iterations=int(grow)) & ((mask & MASK_BAD) == 0)
        mask[near] |= MASK_NEIGHBOUR
    return sci, err, mask, ncomb


def scratch_dir_for(out_path):
    """Scratch folder for the cube: ``$BANDERSNAKE_SCRATCH`` or ``TMPDIR`` when set, else next to the output."""
    for env in ("BANDERSNAKE_SCRATCH", "TMPDIR"):
        if os.environ.get(env) and Path(os.environ[env]).is_dir():
            return os.environ[env]
    return str(Path(out_path).parent)
