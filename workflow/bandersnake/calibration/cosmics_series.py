"""Cosmic rays of a frame found against its neighbours in the night's time series (issue 22).

The frames of one field taken minutes apart show the same sky and the same stars; a cosmic ray
hits one frame only. The per-pixel median of the ``K`` nearest frames of the series (default 4,
two before and two after) is a reference free of cosmic rays: a ray in one of them moves the
median of four by at most half the gap between the two middle values. A pixel of the frame is a
cosmic ray when

    sci - ref > sigclip * sigma,   sigma^2 = ERR^2 (1 + pi / (2 K)) + (psf_frac * max(ref - sky, 0))^2

(the frame's noise, the median's noise, and a fraction of the star light at that pixel: seeing
and guiding change a star's core from one frame to the next by ~10-20 %, so star pixels need a
proportionally larger excess; ``psf_frac`` is that fraction). Pixels touching a detection
(8-connected) whose excess is above ``sigfrac * sigclip * sigma`` are added: the faint ends of a
track. Bad and saturated pixels are never flagged. The frames must be registered to a fraction
of a pixel (a guided camera such as ASTEP's); a hot pixel missing from the bad-pixel map is the
same in every frame and is not flagged, unlike with L.A.Cosmic; a satellite trail or a fast
asteroid is (it is in one frame only).

Cost: one pass over the frame and its ``K`` neighbours, ~0.6 CPU-s for a 4096x4096 frame
(astroscrappy with its default four iterations: ~42 CPU-s; ``benchmarks/bench_astep_frame.py``).
Units: e-.
"""

import logging
import math

import numba
import numpy as np

#: Defaults of :func:`detect_cosmic_rays_series` (a ``cosmics`` block could override them).
SERIES_DEFAULTS = {"sigclip": 5.0, "sigfrac": 0.5, "psf_frac": 0.3, "neighbours": 4}


@numba.njit(cache=True, inline="always")
def _median_small(v, n):
    """Median of the first ``n`` values of ``v`` (sorted in place; n <= 16)."""
    for i in range(1, n):
        x = v[i]
        j = i - 1
        while j >= 0 and v[j] > x:
            v[j + 1] = v[j]
            j -= 1
        v[j + 1] = x
    h = n // 2
    return v[h] if n % 2 else 0.5 * (v[h - 1] + v[h])


@numba.njit(cache=True, parallel=True)
def _seeds(sci, err, stack, use, sky, skip, sigclip, sigfrac, psf_frac, ref_var_factor, out):
    """Per pixel: 2 where the excess over the neighbours' median passes ``sigclip``, 1 where it
    passes ``sigfrac * sigclip`` (a candidate for growing), else 0."""
    ny, nx = sci.shape
    k = use.shape[0]
    for y in numba.prange(ny):
        v = np.empty(16, np.float32)
        for x in range(nx):
            out[y, x] = 0
            if skip[y, x]:
                continue
            for i in range(k):
                v[i] = stack[use[i], y, x]
            ref = _median_small(v, k)
            e = err[y, x]
            star = psf_frac * max(ref - sky, 0.0)
            sigma = math.sqrt(e * e * ref_var_factor + star * star)
            d = sci[y, x] - ref
            if d > sigclip * sigma:
                out[y, x] = 2
            elif d > sigfrac * sigclip * sigma:
                out[y, x] = 1


@numba.njit(cache=True, parallel=True)
def _grow(seeds, mask):
    """``mask`` = seeds (2) plus candidates (1) touching a seed (8-connected), one step."""
    ny, nx = seeds.shape
    for y in numba.prange(ny):
        for x in range(nx):
            s = seeds[y, x]
            hit = s == 2
            if s == 1:
                for yy in range(max(y - 1, 0), min(y + 2, ny)):
                    for xx in range(max(x - 1, 0), min(x + 2, nx)):
                        if seeds[yy, xx] == 2:
                            hit = True
            mask[y, x] = hit


def detect_cosmic_rays_series(sci_e, err_e, stack_e, use=None, bad=None, sky_e=None, config=None):
    """Cosmic-ray mask of one frame from its neighbours in a registered time series.

    Parameters
    ----------
    sci_e, err_e : ndarray (ny, nx)
        The frame and its 1-sigma uncertainty (e-), calibrated.
    stack_e : ndarray (n, ny, nx)
        Calibrated frames of the same field (e-), e.g. a ring buffer of the night; may hold the
        frame itself (leave it out of ``use``).
    use : sequence of int, optional
        Indices into ``stack_e`` of the neighbours (2 to 16; default all of ``stack_e``).
    bad : ndarray of bool, optional
        Pixels never flagged (bad, saturated, NaN).
    sky_e : float, optional
        Sky level (e-) under the stars; default the median of a subsample of the frame.
    config : dict, optional
        ``sigclip``, ``sigfrac``, ``psf_frac`` (see the module docstring; :data:`SERIES_DEFAULTS`).

    Returns
    -------
    ndarray of bool
        True on cosmic-ray pixels.
    """
    p = {**SERIES_DEFAULTS, **(config or {})}
    sci = np.ascontiguousarray(sci_e, dtype=np.float32)
    err = np.ascontiguousarray(err_e, dtype=np.float32)
    stack = np.asarray(stack_e, dtype=np.float32)
    if stack.ndim != 3 or stack.shape[1:] != sci.shape:
        raise ValueError(f"stack of shape {stack.shape} does not hold frames of shape {sci.shape}")
    use = np.arange(stack.shape[0]) if use is None else np.asarray(use, dtype=np.int64)
    if not 2 <= len(use) <= 16:
        raise ValueError(f"{len(use)} neighbours: need 2 to 16")
    skip = ~np.isfinite(sci) | ~np.isfinite(err)
    if bad is not None:
        skip |= np.asarray(bad, dtype=bool)
    if sky_e is None:
        sample = sci[::7, ::7]
        sky_e = float(np.nanmedian(sample))
    # Variance of the median of K Gaussian values ~ (pi / 2) sigma^2 / K.
    ref_var_factor = 1.0 + math.pi / (2 * len(use))
    seeds = np.empty(sci.shape, np.uint8)
    _seeds(sci, err, stack, use.astype(np.int64), np.float32(sky_e), skip, np.float32(p["sigclip"]),
           np.float32(p["sigfrac"]), np.float32(p["psf_frac"]), np.float32(ref_var_factor), seeds)
    mask = np.empty(sci.shape, np.bool_)
    _grow(seeds, mask)
    return mask


def neighbour_indices(i, n, k=4):
    """Indices of the ``k`` frames nearest frame ``i`` in a series of ``n`` (never ``i`` itself):
    half before and half after, shifted inwards at the ends of the night.
    """
    if n < 3:
        raise ValueError(f"a series of {n} frames: need at least 3 for a neighbour reference")
    k = min(k, n - 1)
    lo = min(max(i - k // 2, 0), n - 1 - k)
    return [j for j in range(lo, lo + k + 1) if j != i][:k]


def flag_night_series(paths, config=None, on_error=None):
    """Flag cosmic rays (MASK bit 2) in a night's calibrated frames from their time series.

    The frames are read once each, in the given (time) order; at most ``neighbours + 1`` are in
    memory at a time (a ring buffer), and each frame is rewritten with its updated ``MASK`` and
    ``CRNPIX``/``CRMETHOD`` cards as soon as the frames after it that it needs are read.

    Parameters
    ----------
    paths : sequence of str or Path
        Calibrated SCI/ERR/MASK frames of one field, in time order.
    config : dict, optional
        :data:`SERIES_DEFAULTS` keys.
    on_error : callable, optional
        ``on_error(path, reason)`` for a frame that cannot be read or written (it is left out of
        the series, the others go on); default: raise.

    Returns
    -------
    dict
        ``{path: number of cosmic-ray pixels}`` of the frames flagged.
    """
    from astropy.io import fits

    series = SeriesFlagger(config, on_error)
    for path in paths:
        try:
            hdul = fits.open(path, memmap=False)
            for hdu in hdul:        # every HDU and its data in memory: the file is rewritten later
                _ = hdu.data
            hdul.close()
        except (OSError, KeyError, ValueError, TypeError) as exc:
            series.fail(path, f"unreadable calibrated frame for the cosmic-ray series: {exc}")
            continue
        series.add(path, hdul, on_disk=True)
    return series.close()


class SeriesFlagger:
    """The streaming pass of :func:`flag_night_series` over frames handed over in time order.

    :meth:`add` takes a calibrated frame in memory (SCI/ERR/MASK HDUList) and the path it is to
    be written to; each frame is written once, with its cosmic rays flagged, as soon as the
    frames after it that it needs have been added (:meth:`close` writes the last ones). So the
    calibration can hand its frames over without writing them first (``on_disk=False``): one
    write per frame instead of two (issue 22: a 4096x4096 frame is 144 MB).
    """

    def __init__(self, config=None, on_error=None):
        self.p = {**SERIES_DEFAULTS, **(config or {})}
        self.k = int(self.p["neighbours"])
        self.on_error = on_error
        self.frames = []        # (path, ring slot) of the frames added so far, good ones only
        self.pending = {}       # index in frames -> (hdul, on_disk) not yet written
        self.ring, self.slots_err = None, {}
        self.counts = {}
        self.size = self.k + 1 + self.k // 2 + 1    # slots: the window plus the frames still pending
        # Frames are written by one writer thread while the next frame is flagged (the flagging
        # is numba on every core, the write is I/O: ~0.5 s for a 4096x4096 frame); at most
        # `max_writes` finished frames wait for it. Outcomes are handled in the caller's thread.
        self._writer, self._writes, self.max_writes = None, [], 2

    def fail(self, path, reason):
        from ..errors import FrameError

        if self.on_error is None:
            raise FrameError(path, reason)
        self.on_error(str(path), reason)

    def add(self, path, hdul, on_disk=False):
        """Add the next frame of the series (``hdul`` is kept until the frame is written)."""
        try:
            sci = np.asarray(hdul["SCI"].data, dtype=np.float32)
            err = np.asarray(hdul["ERR"].data, dtype=np.float32)
            hdul["MASK"].data = np.asarray(hdul["MASK"].data, dtype=np.uint8)
        except (KeyError, ValueError, TypeError) as exc:
            self.fail(path, f"unreadable calibrated frame for the cosmic-ray series: {exc}")
            return
        if self.ring is None:
            self.ring = np.empty((self.size,) + sci.shape, np.float32)
        elif sci.shape != self.ring.shape[1:]:
            self.fail(path, f"shape {sci.shape} differs from the night's first frame {self.ring.shape[1:]}")
            return
        slot = len(self.frames) % self.size
        self.ring[slot] = sci
        self.slots_err[slot] = err
        hdul["SCI"].data = self.ring[slot]
        self.frames.append((path, slot))
        self.pending[len(self.frames) - 1] = (hdul, on_disk)
        # Frame j is final once frames j + k//2 (and at least k + 1 in all) are in.
        j = len(self.frames) - 1 - self.k // 2
        if len(self.frames) >= self.k + 1 and j in self.pending:
            for i in sorted(i for i in self.pending if i <= j):
                self._finish(i, len(self.frames))

    def close(self):
        """Flag and write the frames still pending; ``{path: cosmic-ray pixels}`` of those flagged."""
        from ..fitsio import write_fits

        n = len(self.frames)
        if n < 3:
            # Kept without bit 2 in MASK: too few frames for a reference, said in the log.
            logging.getLogger(__name__).warning(
                "only %d calibrated frame(s): no time series to find cosmic rays against; none flagged", n)
            for i in sorted(self.pending):
                hdul, on_disk = self.pending.pop(i)
                if not on_disk:
                    try:
                        write_fits(hdul, self.frames[i][0])
                    except OSError as err:
                        self.fail(self.frames[i][0], f"write failed: {err}")
            return self.counts
        for i in sorted(self.pending):
            self._finish(i, n)
        self._drain(0)
        if self._writer is not None:
            self._writer.shutdown()
        return self.counts

    def _write(self, path, hdul, n_cr):
        """Write ``hdul`` to ``path`` on the writer thread; outcomes are collected by :meth:`_drain`."""
        from concurrent.futures import ThreadPoolExecutor

        from ..fitsio import write_fits

        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1)
        self._writes.append((path, n_cr, self._writer.submit(write_fits, hdul, path)))
        self._drain(self.max_writes)

    def _drain(self, keep):
        """Wait for the oldest writes until at most ``keep`` are outstanding."""
        while len(self._writes) > keep:
            path, n_cr, fut = self._writes.pop(0)
            try:
                fut.result()
                self.counts[str(path)] = n_cr
            except OSError as err:
                self.fail(path, f"write failed: {err}")

    def _finish(self, j, n):
        from .mef import MASK_BAD, MASK_CR, MASK_SATURATED

        p, frames = self.p, self.frames
        hdul, _ = self.pending.pop(j)
        use = [frames[i][1] for i in neighbour_indices(j, n, self.k)]
        sci = hdul["SCI"].data
        msk = hdul["MASK"].data
        mask = detect_cosmic_rays_series(sci, self.slots_err[frames[j][1]], self.ring, use=use,
                                          bad=(msk & (MASK_BAD | MASK_SATURATED)) > 0, config=p)
        hdul["MASK"].data = msk | np.where(mask, np.uint8(MASK_CR), np.uint8(0))
        n_cr = int(mask.sum())
        hdr = hdul[0].header
        hdr["CRNPIX"] = (n_cr, "pixels flagged as cosmic rays (MASK bit 2)")
        hdr["CRMETHOD"] = (f"time series, median of {len(use)} neighbours", "cosmic-ray reference")
        hdr["HISTORY"] = (f"MASK bit 2: cosmic rays against the median of {len(use)} neighbouring frames "
                          f"(sigclip {p['sigclip']}, sigfrac {p['sigfrac']}, psf_frac {p['psf_frac']})")
        # Its own copy of SCI: the ring slot is a neighbour of the frames still to flag, and
        # astropy byteswaps an array in place while writing it (on the writer thread).
        hdul["SCI"].data = np.array(sci, copy=True)
        self._write(frames[j][0], hdul, n_cr)
