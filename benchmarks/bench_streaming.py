"""Benchmark of the streaming core against the floor (reading) and a photutils pipeline.

For each frame shape (1024x1024 and 1280x1024), over the same N simulated frames (uint16 with
BZERO, 12 Moffat stars on Gaussian noise, written to a temporary folder), in one process:

(a) astropy open + read of every frame (the floor);
(b) photutils path: read, full-frame numpy calibration, photutils exact apertures (11 radii) and
    sigma-clipped annulus statistics (ApertureStats) at the true positions;
(c) the streaming kernel on one numba thread: bandersnake.photometry.drivers.run_streaming (reading,
    calibration, centroids, all apertures, masters) less its final stage (BJD_TDB and airmass of
    every frame, writing the tables), which (b) does not do either; measured within each run;
(c+) the whole run_streaming job on one thread; (d) the whole job on two threads;
(e) the kernel alone on frames already in memory (where the time goes),

then a per-stage breakdown of (c+): masters, reading, kernel, tables (fixed per night).
Everything runs once per round, ``--repeats`` rounds (15, ~35 s per shape); prints frames/s
(medians over the rounds), the ratios (median over the rounds of the ratio within a round: the
machine is shared and its speed drifts within minutes, so a ratio of two medians taken minutes
apart moves with it), the spread of the (c)/(b) ratio over the rounds, and the load average.
The speed changes in patches of seconds that can cover all of a short run: 5 rounds (~12 s)
gave a median (c)/(b) of 24.5x in one of ten figures (five runs, two shapes; the other nine
26.4-29.9x). Compare ratios, not absolute rates. Usage::

    PYTHONPATH=workflow python benchmarks/bench_streaming.py [--quick] [--frames N] [--repeats R]

(b) runs on the first ``--photutils-frames`` frames and is scaled to N; photutils is imported
before it is timed (its import, ~0.5 s, once inflated (b)'s first shape by ~20 ms/frame).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "tests"))

from _streaming_synth import add_moffat  # noqa: E402

N_STARS = 12
RADII = np.arange(2, 13, dtype=float)
R_IN, R_OUT = 15.0, 25.0
GAIN, RN = 2.0, 8.0


def make_frames(folder, shape, n, rng):
    """Write masters and n raw frames; return (raw paths, masters dict, star positions)."""
    folder.mkdir(parents=True)
    ny, nx = shape
    bias = (1000 + rng.normal(0, 1, shape)).astype(np.float32)
    dark = np.full(shape, 0.05, np.float32)
    flat = (1 + rng.normal(0, 0.005, shape)).astype(np.float32)
    bpm = np.zeros(shape, np.uint8)
    bpm[rng.integers(0, ny, 300), rng.integers(0, nx, 300)] = 1
    masters = {}
    for name, arr in (("bias", bias), ("dark", dark), ("flat", flat), ("bpm", bpm)):
        masters[name] = str(folder / f"{name}.fits")
        fits.writeto(masters[name], arr)
    pos = np.column_stack([rng.uniform(60, nx - 60, N_STARS), rng.uniform(60, ny - 60, N_STARS)])
    stars = np.zeros(shape)
    for (x, y), f in zip(pos, rng.uniform(2e4, 3e5, N_STARS)):
        add_moffat(stars, x, y, f, half=25)
    base = (stars + 600.0) * flat + dark * 30 * GAIN
    paths = []
    for k in range(n):
        # Gaussian approximation of the Poisson noise keeps generation fast.
        e = base + rng.normal(0, 1, shape) * np.sqrt(base + RN ** 2)
        adu = np.clip(np.round(e / GAIN + bias), 0, 65535).astype(np.uint16)
        hdr = fits.Header({"EXPTIME": 30.0, "DATE-OBS": f"2025-06-02T04:{k // 60 % 60:02d}:{k % 60:02d}.000",
                           "RA": "16 02 11.83", "DEC": "+28 10 10.7", "AIRMASS": 1.1})
        p = folder / f"f{k:04d}.fits"
        fits.writeto(p, adu, hdr)
        paths.append(str(p))
    return paths, masters, pos


def floor_read(paths):
    for p in paths:
        with fits.open(p, memmap=False) as h:
            d = h[0].data
            _ = h[0].header["EXPTIME"]
    return d


def photutils_path(paths, masters, pos):
    from astropy.stats import SigmaClip
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

    bias, dark, flat = (fits.getdata(masters[k]).astype(np.float64) for k in ("bias", "dark", "flat"))
    sc = SigmaClip(sigma=3.0, maxiters=5)
    apers = [CircularAperture(pos, r) for r in RADII]
    ann = CircularAnnulus(pos, R_IN, R_OUT)
    for p in paths:
        with fits.open(p, memmap=False) as h:
            raw = h[0].data.astype(np.float64)
            t = h[0].header["EXPTIME"]
        sci = ((raw - bias) * GAIN - dark * t * GAIN) / flat
        err = np.sqrt(np.maximum((raw - bias) * GAIN, 0) + RN ** 2) / flat
        phot = aperture_photometry(sci, apers, error=err, method="exact")
        sky = ApertureStats(sci, ann, sigma_clip=sc).mean
        _ = [phot[f"aperture_sum_{k}"] - sky * a.area for k, a in enumerate(apers)]


def settings():
    return {"centroid_settings": {"boxsize": 17, "reacquire_radius": 40},
            "photometry_settings": {"aper_min": 2, "aper_max": 12, "SKYRAD_inner": R_IN, "SKYRAD_outer": R_OUT}}


def inst(shape):
    return {"name": "BENCH", "shape": list(shape), "gain_e_per_adu": GAIN, "read_noise_e": RN,
            "saturation_adu": 60000, "keywords": {}, "date_obs_is": "start",
            "site": {"latitude_deg": 32.78, "longitude_deg": -105.82, "altitude_m": 2788}}


def streaming(paths, masters, pos, shape, threads, out):
    from bandersnake.photometry.drivers import run_streaming
    from bandersnake.photometry.targets import TargetEntry

    run_streaming(paths, masters, inst(shape), settings(), TargetEntry("B", pos, 0), out, threads=threads)


def kernel_only(frames, cal, pos, threads):
    """Kernel on frames already read (as read_raw leaves them): the compute part of (c)/(d)."""
    from bandersnake.photometry import kernel as K
    from bandersnake.photometry.drivers import CoreSettings, _FrameRunner
    from bandersnake.photometry.targets import TargetEntry

    from bandersnake.photometry.drivers import _Measurer

    runner = _FrameRunner(TargetEntry("B", pos, 0), CoreSettings.from_night(settings()), cal, len(frames))
    measurer = _Measurer(runner, threads)
    try:
        for k, fr in enumerate(frames):
            fargs = runner.frame_args(K.MODE_RAW, raw=fr.raw, code=fr.code, offset=0.0, exptime=fr.exptime)
            runner.track(k, fargs)
            measurer.submit(k, fargs)
    finally:
        measurer.close()


class _StageTimer:
    """Accumulates the time spent in some functions of bandersnake.photometry.drivers during a run."""

    def __init__(self):
        import bandersnake.photometry.drivers as P

        self.P = P
        self.t = {}
        self.calls = {}
        self.orig = {name: getattr(P, name) for name in ("load_calibration", "_finish")}

    def __enter__(self):
        for name, fn in self.orig.items():
            def wrapped(*a, _fn=fn, _name=name, **k):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    dt = time.perf_counter() - t0
                    self.t[_name] = self.t.get(_name, 0.0) + dt
                    self.calls.setdefault(_name, []).append(dt)
            setattr(self.P, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, fn in self.orig.items():
            setattr(self.P, name, fn)


def run_times(fn, repeats):
    """Wall time (s) of each of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def timed(fn, repeats):
    return statistics.median(run_times(fn, repeats))


def spread(values):
    """``min, quartiles, max`` of per-round ratios, as text."""
    if len(values) < 4:
        return f"{min(values):.1f}-{max(values):.1f}x"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"min {min(values):.1f}, quartiles {q1:.1f}-{q3:.1f}, max {max(values):.1f}x"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30 frames, 1 repeat, one shape (development)")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--photutils-frames", type=int, default=60, help="frames for the slow path (b)")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.repeats, args.photutils_frames = 30, 1, 10
    shapes = [(1024, 1024)] if args.quick else [(1024, 1024), (1024, 1280)]
    warnings.simplefilter("ignore")
    import logging
    logging.basicConfig(level=logging.ERROR)
    from bandersnake.calibration.reduce import BufferPool, load_calibration, read_raw

    rng = np.random.default_rng(1)
    print(f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as tmp:
        for shape in shapes:
            folder = Path(tmp) / f"{shape[1]}x{shape[0]}"
            t0 = time.perf_counter()
            paths, masters, pos = make_frames(folder, shape, args.frames, rng)
            print(f"\n== {shape[1]}x{shape[0]}: {args.frames} frames, {N_STARS} stars, {len(RADII)} apertures "
                  f"(generated in {time.perf_counter() - t0:.0f} s)")
            streaming(paths[:3], masters, pos, shape, 1, folder / "warm")     # compile / load numba cache
            photutils_path(paths[:2], masters, pos)     # imports photutils: not part of (b)'s time
            n, nb = len(paths), min(args.photutils_frames, len(paths))
            cal = load_calibration(masters, inst(shape))
            # Frames dropped as read, buffers recycled, as in (c) (fresh memory would time page faults).
            pool = BufferPool()
            frames = [read_raw(p, inst(shape), cal.shape) for p in paths]
            # Rounds of (a), (b), (c), (d), (e), one run each: the machine's speed drifts, so the
            # ratios are taken within a round and their median over the rounds is reported.
            t = {k: [] for k in ("a", "b", "c", "c+", "d", "read", "e1", "e2")}
            stage_t = {}
            for _ in range(args.repeats):
                t["a"].append(timed(lambda: floor_read(paths), 1))
                # The night's fixed part (masters, apertures) once, the per-frame part scaled to n frames.
                tb_fixed = timed(lambda: photutils_path([], masters, pos), 1)
                tb_run = timed(lambda: photutils_path(paths[:nb], masters, pos), 1)
                t["b"].append(tb_fixed + (tb_run - tb_fixed) * n / nb)
                with _StageTimer() as stages:
                    tc_job = timed(lambda: streaming(paths, masters, pos, shape, 1, folder / "c"), 1)
                # (c) like (b): read, calibrate, centroid, measure (masters included), without the
                # job's BJD_TDB/airmass and table writing, which (b) does not do; (c+) is the whole job.
                t["c+"].append(tc_job)
                t["c"].append(tc_job - stages.t["_finish"])
                for name, dt in stages.t.items():
                    stage_t.setdefault(name, []).append(dt)
                t["d"].append(timed(lambda: streaming(paths, masters, pos, shape, 2, folder / "d"), 1))
                t["read"].append(timed(lambda: [read_raw(p, inst(shape), cal.shape, pool).release() for p in paths], 1))
                t["e1"].append(timed(lambda: kernel_only(frames, cal, pos, 1), 1))
                t["e2"].append(timed(lambda: kernel_only(frames, cal, pos, 2), 1))
            med = {k: statistics.median(v) for k, v in t.items()}
            rounds = lambda num, den: [x / y for x, y in zip(t[num], t[den])]
            ratio = lambda num, den: statistics.median(rounds(num, den))
            ta, tb, tc, tc_job, td, tr, te1, te2 = (med[k] for k in ("a", "b", "c", "c+", "d", "read", "e1", "e2"))
            fps = lambda t: n / t
            print(f"(a) astropy open+read (floor)    {fps(ta):8.1f} frames/s")
            print(f"(b) photutils path ({nb} frames)   {fps(tb):8.1f} frames/s "
                  f"(masters and setup {1e3 * tb_fixed:.0f} ms once)")
            print(f"(c) streaming kernel, 1 thread   {fps(tc):8.1f} frames/s (read, calibrate, centroid, measure)")
            print(f"(c+) whole job, 1 thread         {fps(tc_job):8.1f} frames/s (+ BJD_TDB, airmass, 12 tables)")
            print(f"(d) whole job, 2 threads         {fps(td):8.1f} frames/s")
            print(f"    read_raw                     {fps(tr):8.1f} frames/s")
            print(f"(e) kernel only, 1 / 2 threads   {fps(te1):8.1f} / {fps(te2):.1f} frames/s")
            print(f"ratios (median over {args.repeats} rounds of the ratio within a round): "
                  f"(c) vs (b) speed-up {ratio('b', 'c'):6.1f}x (goal >= 25x; rounds {spread(rounds('b', 'c'))}); "
                  f"(c) time / (a) time {ratio('c', 'a'):5.2f} "
                  f"(goal <= 1.5); (c+) vs (b) {ratio('b', 'c+'):.1f}x, (c+) / (a) {ratio('c+', 'a'):.2f}; "
                  f"(d) vs (c+) {ratio('c+', 'd'):4.2f}x; (a) vs (b) {ratio('b', 'a'):.1f}x")
            per = lambda t: 1e3 * t / n
            fixed = {k: statistics.median(v) for k, v in stage_t.items()}
            print(f"where (c+)'s {per(tc_job):.2f} ms/frame go: masters {per(fixed.get('load_calibration', 0)):.2f}, "
                  f"tables+BJD {per(fixed.get('_finish', 0)):.2f} (fixed per night, spread over {n} frames); "
                  f"reading {per(tr):.2f} (reader thread), kernel {per(te1):.2f} ms/frame")
            print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
