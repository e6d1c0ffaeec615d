"""Centroids and multi-aperture photometry of a (night, target): streaming and traditional drivers.

Products (docs/ARCHITECTURE.md) under ``out_dir = work/<night>/<TARGET>/``:

* ``centroiding/centroids.fits`` (BinTable ``CENTROIDS``), one row per science frame;
* ``photometry/photometry_aper<N>.fits`` (BinTable ``PHOTOMETRY``) for N = aper_min..aper_max;
* ``centroiding/poststamps_<STAR>.fits`` when ``save_poststamps`` (cube of the centroid stamps,
  e-, with their origins in the ``ORIGIN`` table).

Both paths run :func:`bandersnake.kernel.process_frame` on identical float64 values (see
:mod:`bandersnake.reduce`), so their tables agree to the last bit:

* :func:`run_streaming` reads raw frames (a reader thread reads ahead while the numba kernel,
  which releases the GIL, works) and calibrates only the stamps and annuli it needs, or the
  whole frame when calibrated frames are saved. The tracking star is found frame after frame
  in the main thread (each frame starts from the previous offset); the stars of different
  frames are then measured in parallel on ``threads`` threads (the main thread and
  ``threads - 1`` workers, a whole frame per task: no per-star synchronisation);
* :func:`reduce_frames` (in :mod:`bandersnake.reduce`) then
  :func:`centroid_and_photometry_from_reduced` go through calibrated frames on disk.

Photometry of a star (per radius r, e-):
``flux = sum(w * sci) - sky * area`` with exact pixel weights ``w`` and ``area = sum(w)``;
``flux_err**2 = sum(w**2 * err**2) + area**2 * sky_err**2 / n_sky`` where ``err`` is the
per-pixel error of the calibrated frame (Poisson of signal + dark, read noise: gain and read
noise applied once, in electrons) and the second term is the uncertainty of the sky mean.
``sky`` is the sigma-clipped mean of the annulus and ``sky_err`` the clipped standard deviation
per pixel (bandersnatch's meaning of the column).

``mask_centroid_pixels``: the pixels of every star's centroid component (those at least
``sky_sigma`` above the stamp sky, connected to the star) are left out of the sky annulus of
every star. A neighbour inside an annulus then no longer biases that star's sky.
(bandersnatch documents "mask pixels used for centroiding in photometry" but only masked the
saved poststamps, which changed nothing.)

Flags (int32 per star): 1 tracking star lost (no component consistent with the tracking star in
the stamp nor in the widened search: previous offset kept), 2 (partly) off the chip,
4 saturated pixel in the aperture (centroids: in the star's component), 8 bad pixel in the
aperture, 16 NaN in the aperture or annulus (centroids: in the stamp), 32 frame unreadable
(row of NaNs), 64 re-acquisition jump (tracking star moved >= boxsize/2 from its prediction or
was found by the widened search).
"""

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from . import kernel as K
from ..ingest import timing
from ..errors import FrameError
from ..fitsio import atomic_path, write_fits
from ..calibration.reduce import (BufferPool, Calibration, calibrate_frame, load_calibration, prefetch, read_raw, reduced_name,
                     write_calibrated, header_fields)
from .targets import TargetEntry

log = logging.getLogger(__name__)

PIXEL_CONVENTION = "0-based, centre of first pixel at (0,0), x=column"


@dataclass
class CoreSettings:
    """Centroid and photometry settings (night settings' sections, schema defaults).

    Units: px for sizes and radii, e- for ``flux_above_value``, sigma for thresholds.
    """

    boxsize: int = 17
    nlimit_centroid: int = 5
    clip_centroid: float = 5.0
    sky_sigma: float = 5.0
    flux_above_value: float = 500.0
    mask_centroid_pixels: bool = False
    refine_each_star: bool = True
    reacquire_radius: int = 40
    tracking_consistency_factor: float = 3.0
    save_poststamps: bool = False
    aper_min: int = 2
    aper_max: int = 12
    SKYRAD_inner: float = 15.0
    SKYRAD_outer: float = 25.0
    sky_clip_sigma: float = 3.0
    sky_clip_iters: int = 5
    sky_suppress: bool = False
    jump_px: float | None = None

    @classmethod
    def from_night(cls, settings):
        """From night settings (``centroid_settings``/``photometry_settings``, or the rule's
        ``centroid``/``photometry`` params); unknown keys are ignored."""
        settings = settings or {}
        merged = {}
        for key in ("centroid_settings", "centroid", "photometry_settings", "photometry"):
            merged.update(settings.get(key) or {})
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in merged.items() if k in names})

    @property
    def radii(self):
        return np.arange(self.aper_min, self.aper_max + 1, dtype=np.float64)

    def ipar(self):
        p = np.zeros(8, np.int64)
        p[K.IP_BOXSIZE] = self.boxsize
        p[K.IP_REACQ] = self.reacquire_radius
        p[K.IP_NLIMIT] = self.nlimit_centroid
        p[K.IP_REFINE] = int(self.refine_each_star)
        p[K.IP_MASKCPIX] = int(self.mask_centroid_pixels)
        p[K.IP_STAMPS] = int(self.save_poststamps)
        p[K.IP_SKYITERS] = self.sky_clip_iters
        p[K.IP_SKYSUPP] = int(self.sky_suppress)
        return p

    def fpar(self):
        p = np.zeros(K.N_FPAR, np.float64)
        p[K.FP_CLIP] = self.clip_centroid
        p[K.FP_SKYSIGMA] = self.sky_sigma
        p[K.FP_FLUXABOVE] = self.flux_above_value
        p[K.FP_RIN] = self.SKYRAD_inner
        p[K.FP_ROUT] = self.SKYRAD_outer
        p[K.FP_SKYCLIP] = self.sky_clip_sigma
        p[K.FP_JUMP] = self.jump_px if self.jump_px is not None else 0.5 * self.boxsize
        p[K.FP_TRACKF] = self.tracking_consistency_factor
        return p


class _Results:
    """Per-frame outputs of a night, preallocated (frames first, so one frame's rows are contiguous)."""

    def __init__(self, n_frames, n_stars, n_ap, box, stamps):
        self.n = n_frames
        self.files = [""] * n_frames
        self.exptime = np.full(n_frames, np.nan)
        self.jd = np.full(n_frames, np.nan)
        self.ra = np.full(n_frames, np.nan)
        self.dec = np.full(n_frames, np.nan)
        self.airmass = np.full(n_frames, np.nan)
        self.cent = np.full((n_frames, n_stars, K.N_CENT), np.nan)
        self.cflag = np.zeros((n_frames, n_stars), np.int32)
        self.phot = np.full((n_frames, n_ap, n_stars, K.N_PHOT), np.nan)
        self.pflag = np.zeros((n_frames, n_ap, n_stars), np.int32)
        self.state = np.full((n_frames, K.N_STATE), np.nan)   # tracking: offset dx, dy (px), flags, ... (K.ST_*)
        n = 2 * box + 1
        self.stamps = np.full((n_frames, n_stars, n, n), np.nan, np.float32) if stamps else None
        self.stamp_org = np.zeros((n_frames, n_stars, 2), np.int64)
        self.problems = []          # (file, reason) of unreadable frames

    @property
    def offset(self):
        return self.state[:, :2]


class _FrameRunner:
    """Runs the kernel on the frames of a night: :meth:`track` in frame order (it carries the
    field offset from one frame to the next), then :meth:`measure`, which any thread may run."""

    def __init__(self, target, st, cal, n_frames):
        self.t = target
        self.st = st
        self.cal = cal
        self.radii = st.radii
        self.ipar = st.ipar()
        self.fpar = st.fpar()
        ns = target.n_stars
        self.ref_x = np.ascontiguousarray(target.positions[:, 0], np.float64)
        self.ref_y = np.ascontiguousarray(target.positions[:, 1], np.float64)
        self.res = _Results(n_frames, ns, len(self.radii), st.boxsize, st.save_poststamps)
        self._n = 2 * st.boxsize + 1
        self._no_stamps = np.empty((ns, 1, 1), np.float32)
        self.prev = (0.0, 0.0)
        self.hist = np.full((K.TRACK_HIST, 2), np.nan)     # last accepted tracking-star components
        self._d2f = np.zeros((1, 1), np.float32)
        self._d2u = np.zeros((1, 1), np.uint8)

    def record_meta(self, k, path, exptime, jd, ra, dec, airmass):
        r = self.res
        r.files[k] = str(path)
        r.exptime[k], r.jd[k], r.ra[k], r.dec[k], r.airmass[k] = exptime, jd, ra, dec, airmass

    def record_failure(self, k, path, reason, header=None, instrument=None):
        r = self.res
        r.files[k] = str(path)
        r.cflag[k] = K.FLAG_CORRUPT
        r.pflag[k] = K.FLAG_CORRUPT
        r.problems.append((str(path), reason))
        log.warning("frame %d %s: %s (row kept with NaNs, flag 32)", k, path, reason)
        if header is not None:
            try:
                self.record_meta(k, path, *header_fields(header, instrument, path))
            except FrameError:
                pass

    def frame_args(self, mode, raw=None, code=K.RAW_NATIVE, offset=0.0, exptime=0.0, sci=None, err=None,
                   msk=None):
        """The image arguments of the kernel for one frame (raw ADU with ``MODE_RAW``, else calibrated)."""
        cal = self.cal
        if mode == K.MODE_RAW:
            return (mode, code, raw, self._d2f, self._d2f, self._d2u, cal.bias, cal.dark, cal.flat,
                    cal.static_mask, K.calib_params(offset, exptime, cal.gain, cal.read_noise, cal.saturation_adu))
        return (mode, K.RAW_NATIVE, self._d2f, sci, err, msk, self._d2f, self._d2f, self._d2f, self._d2u,
                K.calib_params(0.0, exptime, 1.0, 0.0, np.inf))

    def track(self, k, fargs):
        """Tracking star of frame ``k`` from the previous frame's offset (call in frame order)."""
        state = self.res.state[k]
        K.track_frame(*fargs, self.ref_x, self.ref_y, int(self.t.tracking_star), float(self.prev[0]),
                      float(self.prev[1]), self.ipar, self.fpar, state, self.hist)
        self.prev = (state[K.ST_DX], state[K.ST_DY])
        if int(state[K.ST_FLAG]) & (K.FLAG_LOST | K.FLAG_REACQUIRED):
            log.info("frame %d %s: %s", k, Path(self.res.files[k]).name, tracking_note(state))

    def measure(self, k, fargs):
        """Centroids and photometry of frame ``k`` into the result rows (after :meth:`track`)."""
        r = self.res
        stamps = r.stamps[k] if r.stamps is not None else self._no_stamps
        comp = np.empty((self.t.n_stars, self._n, self._n), np.uint8)
        K.measure_frame(*fargs, self.ref_x, self.ref_y, self.ipar, self.fpar, self.radii, r.state[k],
                        r.cent[k], r.cflag[k], r.phot[k], r.pflag[k], stamps, r.stamp_org[k], comp)

    def run(self, k, mode, raw=None, code=K.RAW_NATIVE, offset=0.0, exptime=0.0, sci=None, err=None,
            msk=None):
        """Track and measure frame ``k`` in this thread."""
        fargs = self.frame_args(mode, raw, code, offset, exptime, sci, err, msk)
        self.track(k, fargs)
        self.measure(k, fargs)


def tracking_note(state):
    """What the tracker did and saw in one frame (``state``: a frame's ``K.ST_*`` entries), for the log."""
    flag = int(state[K.ST_FLAG])
    did = ("tracking star lost (previous offset kept)" if flag & K.FLAG_LOST else
           f"tracking star re-acquired, field offset ({state[K.ST_DX]:.1f}, {state[K.ST_DY]:.1f}) px")
    if state[K.ST_NPIX] > 0:
        saw = (f"the stamp at the prediction held a component of {state[K.ST_FLUX]:.0f} e- in "
               f"{int(state[K.ST_NPIX])} px, {state[K.ST_DIST]:.1f} px from the prediction")
    else:
        saw = "the stamp at the prediction held no component"
    if np.isfinite(state[K.ST_REF_FLUX]):
        saw += f" (tracking star, median of the last frames: {state[K.ST_REF_FLUX]:.0f} e- in {state[K.ST_REF_NPIX]:.0f} px)"
    return f"{did}; {saw}"


class _Measurer:
    """Measures tracked frames on ``threads`` threads: the calling thread and ``threads - 1``
    workers, frames dealt in turn (no worker at all when ``threads`` is 1).

    The calling thread takes its share rather than waiting: on a 2-core machine shared with a
    reader thread, one more busy thread only adds contention. At most ``2 * (threads - 1)``
    frames wait in the workers' queue, which bounds the memory they hold.
    """

    def __init__(self, runner, threads):
        from concurrent.futures import ThreadPoolExecutor

        self.runner = runner
        self.threads = max(1, int(threads))
        self.pool = ThreadPoolExecutor(max_workers=self.threads - 1) if self.threads > 1 else None
        self.pending = deque()
        self.count = 0

    def submit(self, k, fargs, done=None):
        """Measure frame ``k``; then call ``done()`` (e.g. to recycle the frame's buffer)."""
        self.count += 1
        if self.pool is None or self.count % self.threads == 0:
            self.runner.measure(k, fargs)
            if done is not None:
                done()
            return
        self.pending.append(self.pool.submit(self._measure, k, fargs, done))
        while len(self.pending) > 2 * (self.threads - 1):
            self.pending.popleft().result()

    def _measure(self, k, fargs, done):
        self.runner.measure(k, fargs)
        if done is not None:
            done()

    def close(self):
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            if self.pool is not None:
                self.pool.shutdown()


def _set_threads(threads):
    import numba

    n = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def _as_target(target_entry):
    if isinstance(target_entry, TargetEntry):
        return target_entry
    d = dict(target_entry)
    return TargetEntry(name=d.get("name", "target"), positions=np.asarray(d["all_star_positions"] if "all_star_positions" in d else d["positions"], np.float64),
                       tracking_star=int(d["tracking_star"]), ra=d.get("ra"), dec=d.get("dec"))


def run_streaming(science_paths, masters, instrument, night_settings, target_entry, out_dir, threads=2,
                  save_reduced_dir=None, readers=1):
    """Streaming path: raw frames -> centroids.fits and photometry_aper<N>.fits in one pass.

    Parameters
    ----------
    science_paths : list of str
        Raw science frames of the target, in time order (after ``discard_n_first_science``).
    masters : dict or Calibration
        Paths ``bias``, ``dark``, ``flat``, ``bpm`` (see :func:`bandersnake.reduce.load_calibration`).
    instrument : dict
        Instrument configuration.
    night_settings : dict
        Night settings (``centroid_settings``, ``photometry_settings``) or a :class:`CoreSettings`.
    target_entry : TargetEntry or dict
        Reference positions (px, 0-based) and tracking star, from
        :func:`bandersnake.targets.resolve_target`.
    out_dir : str or Path
        ``work/<night>/<TARGET>``.
    threads : int
        Threads measuring frames in parallel (and numba threads of the whole-frame
        calibration when ``save_reduced_dir`` is given).
    save_reduced_dir : str or Path, optional
        Also write every calibrated frame there (the whole frame is then calibrated).
    readers : int
        Threads reading frames ahead of the kernel.

    Returns
    -------
    dict
        ``n_frames``, ``n_unreadable``, ``problems`` [(file, reason)], ``seconds``, ``paths``
        of the products.
    """
    t0 = time.perf_counter()
    st = night_settings if isinstance(night_settings, CoreSettings) else CoreSettings.from_night(night_settings)
    target = _as_target(target_entry)
    cal = masters if isinstance(masters, Calibration) else load_calibration(masters, instrument)
    _set_threads(threads)
    paths = [str(p) for p in science_paths]
    runner = _FrameRunner(target, st, cal, len(paths))
    if save_reduced_dir is not None:
        Path(save_reduced_dir).mkdir(parents=True, exist_ok=True)

    buffers = BufferPool()

    def load(path):
        try:
            return read_raw(path, instrument, cal.shape, buffers)
        except FrameError as err:
            return err

    from concurrent.futures import ThreadPoolExecutor
    writer = ThreadPoolExecutor(max_workers=1) if save_reduced_dir is not None else None
    writes = []
    measurer = _Measurer(runner, threads if save_reduced_dir is None else 1)
    try:
        for k, item in enumerate(prefetch(load, paths, workers=readers, depth=2 + 2 * readers)):
            if isinstance(item, FrameError):
                runner.record_failure(k, paths[k], item.reason)
                continue
            runner.record_meta(k, item.path, item.exptime, item.jd_mid, item.ra, item.dec, item.airmass)
            if save_reduced_dir is None:
                fargs = runner.frame_args(K.MODE_RAW, raw=item.raw, code=item.code, offset=item.offset,
                                          exptime=item.exptime)
                runner.track(k, fargs)
                measurer.submit(k, fargs, done=item.release)
            else:
                sci, err, msk = calibrate_frame(item, cal)
                item.release()
                runner.run(k, K.MODE_REDUCED, sci=sci, err=err, msk=msk, exptime=item.exptime)
                # Written only after the kernel is done: astropy byte-swaps arrays in place while writing.
                dest = Path(save_reduced_dir) / reduced_name(item.path)
                writes.append(writer.submit(write_calibrated, dest, item, sci, err, msk, cal))
    finally:
        measurer.close()
        if writer is not None:
            for fut in writes:
                fut.result()
            writer.shutdown()
    products = _finish(runner, st, target, instrument, out_dir, cal, "streaming", t0)
    return products


def read_reduced(path):
    """SCI, ERR (float32 e-), MASK (uint8) and primary header of a calibrated frame.

    Raises
    ------
    FrameError
        Missing/unreadable file, missing extension or inconsistent shapes.
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            names = [h.name.upper() for h in hdul]
            for ext in ("SCI", "ERR", "MASK"):
                if ext not in names:
                    raise FrameError(path, f"no {ext} extension (not a bandersnake calibrated frame)")
            sci = np.asarray(hdul["SCI"].data, np.float32)
            err = np.asarray(hdul["ERR"].data, np.float32)
            msk = np.asarray(hdul["MASK"].data, np.uint8)
            header = hdul[0].header.copy()
    except FrameError:
        raise
    except FileNotFoundError:
        raise FrameError(path, "calibrated frame not found (see the reduce_science log)") from None
    except Exception as err:
        raise FrameError(path, f"unreadable calibrated frame ({type(err).__name__}: {err})") from None
    if sci.ndim != 2 or sci.shape != err.shape or sci.shape != msk.shape:
        raise FrameError(path, f"SCI/ERR/MASK shapes {sci.shape}/{err.shape}/{msk.shape} differ")
    return sci, err, msk, header


def centroid_and_photometry_from_reduced(science_paths, reduced_dir, instrument, night_settings, target_entry,
                                         out_dir, threads=2, readers=1):
    """Traditional path, step 2: the same tables as :func:`run_streaming` from calibrated frames.

    Parameters
    ----------
    science_paths : list of str
        The raw science frames (the ``File`` column and the order of rows); their calibrated
        frames are ``reduced_dir / reduced_name(path)``. A frame without one gets a flag-32 row.
    reduced_dir : str or Path
        Output folder of :func:`bandersnake.reduce.reduce_frames`.
    instrument, night_settings, target_entry, out_dir, threads, readers
        As :func:`run_streaming`.

    Returns
    -------
    dict
        As :func:`run_streaming`.
    """
    t0 = time.perf_counter()
    st = night_settings if isinstance(night_settings, CoreSettings) else CoreSettings.from_night(night_settings)
    target = _as_target(target_entry)
    _set_threads(threads)
    paths = [str(p) for p in science_paths]
    dummy = np.zeros((1, 1), np.float32)
    cal = Calibration(dummy, dummy, dummy, np.zeros((1, 1), np.uint8), math.nan, math.nan, math.nan)
    runner = _FrameRunner(target, st, cal, len(paths))
    reduced_dir = Path(reduced_dir)

    def load(path):
        red = reduced_dir / reduced_name(path)
        try:
            sci, err, msk, header = read_reduced(red)
            exptime, jd, ra, dec, am = header_fields(header, instrument, red)
            return sci, err, msk, header, (exptime, jd, ra, dec, am)
        except FrameError as e:
            return e

    first_header = None
    measurer = _Measurer(runner, threads)
    try:
        for k, item in enumerate(prefetch(load, paths, workers=readers, depth=2 + 2 * readers)):
            if isinstance(item, FrameError):
                runner.record_failure(k, paths[k], item.reason)
                continue
            sci, err, msk, header, meta = item
            if first_header is None:
                first_header = header
            runner.record_meta(k, paths[k], *meta)
            fargs = runner.frame_args(K.MODE_REDUCED, sci=sci, err=err, msk=msk, exptime=meta[0])
            runner.track(k, fargs)
            measurer.submit(k, fargs)
    finally:
        measurer.close()
    if first_header is not None:
        cal.gain = float(first_header.get("GAIN", math.nan))
        cal.read_noise = float(first_header.get("RDNOISE", math.nan))
        cal.saturation_adu = float(first_header.get("SATURATE", math.nan))
        cal.skipped = tuple(k for k in str(first_header.get("CALSKIP", "none")).split(",") if k and k != "none")
        cal.paths = {k: first_header.get(key) for k, key in
                     (("bias", "CALBIAS"), ("dark", "CALDARK"), ("flat", "CALFLAT"), ("bpm", "CALBPM"))}
    return _finish(runner, st, target, instrument, out_dir, cal, "traditional", t0)


# ------------------------------------------------------------------------------------------
# tables

def _target_coords(target, res):
    ra = timing.parse_angle(target.ra, hours=True) if target.ra is not None else math.nan
    dec = timing.parse_angle(target.dec) if target.dec is not None else math.nan
    if math.isfinite(ra) and math.isfinite(dec):
        return np.full(res.n, ra), np.full(res.n, dec), "targets.yaml"
    return res.ra, res.dec, "header pointing"


def _finish(runner, st, target, instrument, out_dir, cal, path_name, t0):
    res = runner.res
    ra, dec, coord_src = _target_coords(target, res)
    bjd, airmass, n_am = timing.frame_times(res.jd, ra, dec, res.airmass, instrument)
    res.bjd = bjd
    res.airmass = airmass
    _log_summary(res, target)
    meta = _meta_cards(st, target, cal, path_name, coord_src, res, instrument)
    out_dir = Path(out_dir)
    written = [write_centroid_table(out_dir / "centroiding" / "centroids.fits", res, meta)]
    written += write_photometry_tables(out_dir / "photometry", res, st, meta)
    if st.save_poststamps:
        written += write_poststamps(out_dir / "centroiding", res, meta)
    seconds = time.perf_counter() - t0
    log.info("%s path: %d frames of %s in %.1f s (%.1f frames/s), %d unreadable", path_name, res.n,
             target.name, seconds, res.n / max(seconds, 1e-9), len(res.problems))
    return {"n_frames": res.n, "n_unreadable": len(res.problems), "problems": res.problems,
            "seconds": seconds, "paths": [str(p) for p in written]}


def _log_summary(res, target):
    names = [Path(f).name for f in res.files]
    for bit, what in ((K.FLAG_LOST, "tracking star lost (previous offset kept)"),
                      (K.FLAG_REACQUIRED, "re-acquisition jump recovered"),
                      (K.FLAG_NAN, "NaN pixels in a stamp"),
                      (K.FLAG_OFF_CHIP, "a star (partly) off the chip"),
                      (K.FLAG_SATURATED, "saturated pixels in a star")):
        rows = np.nonzero(((res.cflag & bit) != 0).any(axis=1) & ((res.cflag & K.FLAG_CORRUPT) == 0).all(axis=1))[0]
        if rows.size:
            shown = ", ".join(names[i] for i in rows[:10]) + (" ..." if rows.size > 10 else "")
            log.warning("%d frame(s) with %s: %s", rows.size, what, shown)


def _meta_cards(st, target, cal, path_name, coord_src, res, instrument):
    cards = [
        ("PIXCONV", PIXEL_CONVENTION, "pixel positions"),
        ("TARGET", target.name, "target"),
        ("NSTARS", target.n_stars, "stars per row; star 0 is the target"),
        ("TRACKSTR", int(target.tracking_star), "tracking star index"),
        ("PHOTPATH", path_name, "streaming or traditional"),
        ("NFRAMES", res.n, "science frames (rows)"),
        ("NBADFRM", len(res.problems), "unreadable frames (flag 32 rows)"),
        ("TIMEREF", "mid-exposure", "JD_UTC and BJD_TDB at mid-exposure"),
        ("COORDSRC", coord_src, "coordinates used for BJD_TDB"),
        ("BOXSIZE", st.boxsize, "[px] centroid stamp half-width"),
        ("SKYSIGMA", st.sky_sigma, "centroid detection threshold (sigma)"),
        ("CLIPCEN", st.clip_centroid, "stamp sky MAD clip (sigma)"),
        ("NLIMCEN", st.nlimit_centroid, "highest stamp pixels left out of sky"),
        ("REFINE", bool(st.refine_each_star), "per-star windowed refinement"),
        ("MASKCPIX", bool(st.mask_centroid_pixels), "centroid pixels left out of sky annuli"),
        ("REACQRAD", st.reacquire_radius, "[px] widened search half-width"),
        ("TRACKFAC", float(st.tracking_consistency_factor), "tracking star consistency factor"),
        ("SKYRIN", st.SKYRAD_inner, "[px] sky annulus inner radius"),
        ("SKYROUT", st.SKYRAD_outer, "[px] sky annulus outer radius"),
        ("SKYCLIP", st.sky_clip_sigma, "annulus sigma clip"),
        ("SKYITER", st.sky_clip_iters, "annulus sigma-clip iterations"),
        ("SKYSUPP", bool(st.sky_suppress), "sky not subtracted"),
        ("INSTRUME", str(instrument.get("name", "")), "instrument file"),
    ]
    if target.start_date:
        cards.append(("TGTDATE", target.start_date, "targets.yaml entry start_date"))
    cards += [c for c in cal.header_cards() if not (isinstance(c[1], float) and not math.isfinite(c[1]))]
    return cards


def _header(meta, extname):
    hdr = fits.Header()
    for key, value, comment in meta:
        hdr[key] = (value, comment)
    hdr["HISTORY"] = f"bandersnake {extname}: flags 1 lost 2 off-chip 4 saturated 8 bad pixel 16 NaN 32 unreadable 64 reacquired"
    return hdr


def _time_columns(res):
    return [("BJD_TDB", res.bjd, "d"), ("JD_UTC", res.jd, "d"), ("File", np.array(res.files, dtype=str), None),
            ("airmass", res.airmass, None), ("exptime", res.exptime, "s")]


def _table_hdu(columns, meta, extname):
    t = Table()
    for name, values, _ in columns:
        t[name] = values
    hdu = fits.table_to_hdu(t)
    hdu.name = extname
    # Units go straight into TUNITn: astropy cannot write 'electron' through Table units.
    for n, (_, _, unit) in enumerate(columns, start=1):
        if unit:
            hdu.header[f"TUNIT{n}"] = unit
    for key, value, comment in meta:
        hdu.header[key] = (value, comment)
    return hdu


def write_centroid_table(path, res, meta):
    """Write ``centroids.fits`` (BinTable CENTROIDS, one row per frame, vector columns by star)."""
    c = res.cent
    cols = _time_columns(res) + [
        ("xc", c[..., K.C_XC], "pix"), ("yc", c[..., K.C_YC], "pix"),
        ("x_width", c[..., K.C_XW], "pix"), ("y_width", c[..., K.C_YW], "pix"),
        ("peak_x", c[..., K.C_PX], "pix"), ("peak_y", c[..., K.C_PY], "pix"),
        ("peak_value", c[..., K.C_PV], "electron"),
        ("n_pixels_above", _count(c[..., K.C_NABOVE]), None),
        ("sig3_pixels", _count(c[..., K.C_N3]), None), ("sig5_pixels", _count(c[..., K.C_N5]), None),
        ("sig10_pixels", _count(c[..., K.C_N10]), None), ("flag", res.cflag, None),
    ]
    hdu = _table_hdu(cols, meta, "CENTROIDS")
    write_fits(fits.HDUList([fits.PrimaryHDU(header=_header(meta, "CENTROIDS")), hdu]), path)
    return path


def _count(a):
    return np.where(np.isfinite(a), a, -1).astype(np.int32)


def photometry_hdul(res, k, radius, st, meta):
    """HDUList of ``photometry_aper<N>.fits`` (BinTable PHOTOMETRY) for aperture index ``k``."""
    p = res.phot[:, k]
    cols = _time_columns(res) + [
        ("xc", res.cent[..., K.C_XC], "pix"), ("yc", res.cent[..., K.C_YC], "pix"),
        ("flux", p[..., K.P_FLUX], "electron"), ("flux_err", p[..., K.P_FLUXERR], "electron"),
        ("sky", p[..., K.P_SKY], "electron/pix"), ("sky_err", p[..., K.P_SKYERR], "electron/pix"),
        ("n_bad_pixels", _count(p[..., K.P_NBAD]), None), ("flag", res.pflag[:, k], None),
    ]
    m = meta + [("APERRAD", float(radius), "[px] aperture radius")]
    hdu = _table_hdu(cols, m, "PHOTOMETRY")
    hdu.header["SKYERRDF"] = ("per-pixel clipped std", "meaning of sky_err")
    return fits.HDUList([fits.PrimaryHDU(header=_header(m, "PHOTOMETRY")), hdu])


def write_photometry_table(path, res, k, radius, st, meta):
    """Write ``photometry_aper<N>.fits`` (BinTable PHOTOMETRY) for aperture index ``k``."""
    write_fits(photometry_hdul(res, k, radius, st, meta), path)
    return path


_APERRAD_COMMENT = "[px] aperture radius"


def _header_end(blob, start):
    """Offset just past the 2880-byte block holding the END card of the header at ``start``."""
    for block in range(start, len(blob), 2880):
        for card in range(block, block + 2880, 80):
            if blob[card:card + 80] == b"END" + b" " * 77:
                return block + 2880
    raise ValueError("no END card")


class _PhotometryTemplate:
    """The bytes of one photometry file, re-used for the other apertures of the night.

    The files of a night differ only in ``APERRAD`` (one card in each header) and in six
    columns of the table data. Building a table through astropy costs ~10-40 ms (header cards,
    verification), ten times the cost of measuring a frame, so the first file is made by
    astropy and the others by replacing those cards and columns in its bytes: the same bytes
    astropy would write (tests compare them).
    """

    COLUMNS = (("flux", K.P_FLUX), ("flux_err", K.P_FLUXERR), ("sky", K.P_SKY), ("sky_err", K.P_SKYERR))

    def __init__(self, blob, hdu, radius, res, k):
        p_end = _header_end(blob, 0)
        t_end = _header_end(blob, p_end)
        thdr = fits.Header.fromstring(blob[p_end:t_end].decode("ascii"))
        nbytes = thdr["NAXIS1"] * thdr["NAXIS2"]
        if fits.Header.fromstring(blob[:p_end].decode("ascii"))["NAXIS"] != 0 or thdr.get("PCOUNT", 0) != 0:
            raise ValueError("unexpected photometry file layout")
        self.primary = blob[:p_end]
        self.theader = blob[p_end:t_end]
        self.card = self._card(radius)
        if self.primary.count(self.card) != 1 or self.theader.count(self.card) != 1:
            raise ValueError("APERRAD card not found once in each header")
        self.dtype = hdu.data.dtype.newbyteorder(">")
        self.data = np.frombuffer(blob[t_end:t_end + nbytes], dtype=self.dtype)
        if not np.array_equal(self._rows(res, k)["flux"], self.data["flux"], equal_nan=True):
            raise ValueError("table data layout not understood")

    @staticmethod
    def _card(radius):
        return fits.Card("APERRAD", float(radius), _APERRAD_COMMENT).image.encode("ascii")

    def _rows(self, res, k):
        data = np.array(self.data)
        p = res.phot[:, k]
        for name, col in self.COLUMNS:
            data[name] = p[..., col]
        data["n_bad_pixels"] = _count(p[..., K.P_NBAD])
        data["flag"] = res.pflag[:, k]
        return data

    def render(self, res, k, radius):
        """Bytes of the file of aperture index ``k`` (radius ``radius`` px)."""
        card = self._card(radius)
        body = self._rows(res, k).tobytes()
        pad = b"\0" * (-len(body) % 2880)
        return self.primary.replace(self.card, card) + self.theader.replace(self.card, card) + body + pad


def _hdul_bytes(hdul):
    import io

    buf = io.BytesIO()
    hdul.writeto(buf, output_verify="silentfix")
    return buf.getvalue()


def write_photometry_tables(folder, res, st, meta):
    """Write ``photometry_aper<N>.fits`` for every radius (see :class:`_PhotometryTemplate`).

    Returns
    -------
    list of Path
    """
    folder = Path(folder)
    written = []
    template = None
    for k, r in enumerate(st.radii):
        path = folder / f"photometry_aper{int(r)}.fits"
        if template is None:
            hdul = photometry_hdul(res, k, r, st, meta)
            blob = _hdul_bytes(hdul)
            try:
                template = _PhotometryTemplate(blob, hdul[1], r, res, k)
            except (ValueError, KeyError) as err:     # never expected: then astropy writes every file
                log.debug("photometry tables written one by one (%s)", err)
                template = False
        elif template:
            blob = template.render(res, k, r)
        else:
            blob = _hdul_bytes(photometry_hdul(res, k, r, st, meta))
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(blob)
        written.append(path)
    return written


def write_poststamps(folder, res, meta):
    """Write ``poststamps_<STAR>.fits``: cube (frame, y, x) of centroid stamps (e-) + ORIGIN table."""
    out = []
    for s in range(res.stamps.shape[1]):
        prim = fits.PrimaryHDU(res.stamps[:, s], header=_header(meta, "POSTSTAMP"))
        prim.header["BUNIT"] = "electron"
        prim.header["STAR"] = s
        org = _table_hdu([("x0", res.stamp_org[:, s, 0], "pix"), ("y0", res.stamp_org[:, s, 1], "pix"),
                          ("File", np.array(res.files, dtype=str), None)], [], "ORIGIN")
        path = Path(folder) / f"poststamps_{s}.fits"
        write_fits(fits.HDUList([prim, org]), path)
        out.append(path)
    return out
