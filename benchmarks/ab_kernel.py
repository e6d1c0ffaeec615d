"""A/B of the streaming kernel: this tree against another commit, in one process.

The package of ``REV`` is extracted (``git archive``) under a temporary name and imported beside
this tree's; both run track + measure on the same simulated frames held in memory, alternated
``--rounds`` times. Prints the median of the per-round time ratios (this tree / REV) and whether
the tables are equal. On a shared VM whose speed drifts by 2x within minutes, only such
alternated ratios separate a 10 % change from noise (an A/A run spreads by about +-5 %)::

    PYTHONPATH=workflow python benchmarks/ab_kernel.py HEAD~1 [--rounds 15] [--frames 40]

With ``--job``, what is alternated is benchmark (c) itself: the whole ``run_streaming`` job on
one thread (masters, reader thread, kernel) less its final stage (BJD_TDB, airmass, tables),
over 200 frames on disk unless ``--frames`` says otherwise.
"""

import argparse
import importlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import bench_streaming as B  # noqa: E402


def extract_package(rev, dest):
    """``workflow/bandersnake`` of ``rev`` as package ``bandersnake_ab`` under ``dest``."""
    blob = subprocess.run(["git", "archive", rev, "workflow/bandersnake"], cwd=ROOT, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    (Path(dest) / "workflow" / "bandersnake").rename(Path(dest) / "bandersnake_ab")
    sys.path.insert(0, str(dest))


def setup(pkg, paths, masters, pos, shape):
    """A function running track + measure over all frames with package ``pkg``, and its results."""
    R, K, P, T = (importlib.import_module(f"{pkg}.{m}") for m in ("reduce", "kernel", "photometry", "targets"))
    cal = R.load_calibration(masters, B.inst(shape))
    frames = [R.read_raw(p, B.inst(shape), cal.shape) for p in paths]
    runner = P._FrameRunner(T.TargetEntry("B", pos, 0), P.CoreSettings.from_night(B.settings()), cal, len(frames))
    fargs = [runner.frame_args(K.MODE_RAW, raw=f.raw, code=f.code, offset=0.0, exptime=f.exptime) for f in frames]

    def run():
        runner.hist[:] = np.nan
        runner.prev = (0.0, 0.0)
        for k, fa in enumerate(fargs):
            runner.track(k, fa)
            runner.measure(k, fa)

    run()           # compile or load numba's cache
    return run, runner.res


def setup_job(pkg, paths, masters, pos, shape, out):
    """A function running benchmark (c) (``run_streaming`` less ``_finish``) with package ``pkg``."""
    P, T = (importlib.import_module(f"{pkg}.{m}") for m in ("photometry", "targets"))
    P._finish = lambda *a, **k: None

    def run():
        P.run_streaming(paths, masters, B.inst(shape), B.settings(), T.TargetEntry("B", pos, 0), out, threads=1)

    run()
    return run


def max_rel(a, b):
    d = np.abs(a - b) / np.maximum(np.abs(b), 1e-300)
    d[np.isnan(a) & np.isnan(b)] = 0.0
    return float(np.nanmax(d))


def alternate(run_a, run_b, rounds, n_frames, label):
    """Time ``run_a`` and ``run_b`` alternately; print their medians (ms/frame) and the median ratio."""
    ta, tb = [], []
    for _ in range(rounds):
        for run, times in ((run_a, ta), (run_b, tb)):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) / n_frames * 1e3)
    ratio = statistics.median(b / a for a, b in zip(ta, tb))
    print(f"{label}: {statistics.median(ta):.3f} ms/frame, this tree: {statistics.median(tb):.3f} ms/frame "
          f"(medians of {rounds}); this tree / {label}: median ratio {ratio:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="commit to compare with (e.g. HEAD~1)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--frames", type=int, default=None, help="frames (40; 200 with --job)")
    ap.add_argument("--job", action="store_true", help="alternate benchmark (c), the whole job less its tables")
    args = ap.parse_args(argv)
    args.frames = args.frames or (200 if args.job else 40)
    shape = (1024, 1024)
    with tempfile.TemporaryDirectory(prefix="ab_kernel_") as tmp:
        extract_package(args.rev, tmp)
        paths, masters, pos = B.make_frames(Path(tmp) / "frames", shape, args.frames, np.random.default_rng(1))
        if args.job:
            import logging
            logging.basicConfig(level=logging.ERROR)
            run_a, run_b = (setup_job(pkg, paths, masters, pos, shape, Path(tmp) / pkg)
                            for pkg in ("bandersnake_ab", "bandersnake"))
            alternate(run_a, run_b, args.rounds, args.frames, f"(c) {args.rev}")
            return 0
        run_a, res_a = setup("bandersnake_ab", paths, masters, pos, shape)
        run_b, res_b = setup("bandersnake", paths, masters, pos, shape)
        alternate(run_a, run_b, args.rounds, args.frames, args.rev)
    same = all(np.array_equal(getattr(res_a, k), getattr(res_b, k)) for k in ("cflag", "pflag"))
    print(f"max relative difference: centroids {max_rel(res_b.cent, res_a.cent):.2g}, "
          f"photometry {max_rel(res_b.phot, res_a.phot):.2g}; flags {'equal' if same else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
