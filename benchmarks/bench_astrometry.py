"""A night's astrometry: follow the night (one solve-field) against solve-field on every frame.

Simulates a calibrated night of a real Tycho-2 field (bandersnake.sim.tycho_night: Cygnus,
default 142 frames of 650x500 at 5.2"/px, 273 px drift, a re-acquisition jump at frame 90, a
cloud over frames 30-40 with transparency down to 0.15), then runs the astrometry job's
function (bandersnake.calibration.frames.solve_night, final frames and summary included) twice
on the same frames and threads:

1. ``method: follow``      -- one reference solve-field, every other frame followed;
2. ``method: solve-field`` -- solve-field on every frame, hinted by the previous solution (the
   strategy before issue 18). A frame it cannot solve costs its whole retry ladder (up to
   ~70 s here), so by default it runs on every ``--sample``-th frame (a stage table listing only
   those) and the night's time is the measured mean per frame times the number of frames;
   ``--sample 1`` runs it on every frame.

Prints wall time, frames solved, followed / by solve-field, median residuals and the error of
each solution against the injected truth (RMS over the chip), and the speed ratio. Run from the
project root:

    PYTHONPATH=workflow .venv/bin/python benchmarks/bench_astrometry.py [--frames N] [--threads 2]
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from bandersnake.astrometry import solve as A  # noqa: E402
from bandersnake.calibration.frames import solve_night  # noqa: E402
from bandersnake.sim.tycho_night import TychoNight, simulate_tycho_night, truth_wcs  # noqa: E402

INSTRUMENT = {"plate_scale_arcsec_per_px": 5.2, "keywords": {"ra": "RA", "dec": "DEC"}}


def truth_error(summary, wcs_dir, truth, shape):
    """Median and max over solved frames of the RMS distance (px) solution - truth over the chip."""
    yy, xx = np.mgrid[0:shape[0]:25, 0:shape[1]:25]
    errs = []
    for k, (name, status) in enumerate(zip(summary["file"], summary["status"])):
        if status != "solved":
            continue
        w = A.read_wcs(Path(wcs_dir) / (name[:-5] + ".wcs"))
        ra, dec = truth_wcs(truth, k, shape).all_pix2world(xx, yy, 0)
        x2, y2 = w.all_world2pix(ra, dec, 0)
        errs.append(np.sqrt(np.mean((x2 - xx) ** 2 + (y2 - yy) ** 2)))
    return (float(np.median(errs)), float(np.max(errs))) if errs else (np.nan, np.nan)


def run(method, stage, work, threads, truth, shape, n_night):
    out = work / method
    shutil.rmtree(out, ignore_errors=True)
    settings = {"method": method, "timeout_s": 30}
    t0 = time.perf_counter()
    tab = solve_night(stage, out / "calibrated", out / "astrometry" / "wcs", out / "astrometry" / "summary.ecsv",
                      INSTRUMENT, settings, threads=threads)
    el = time.perf_counter() - t0
    m = tab.meta
    n_sf = m.get("n_solve_field", m["n_solved"] if method == "solve-field" else 0)
    sub = truth[np.isin(truth["file"], tab["file"])]
    med, worst = truth_error(tab, out / "astrometry" / "wcs", sub, shape)
    night = el * n_night / m["n_frames"]
    print(f"{method:12s} {el:7.1f} s for {m['n_frames']:3d} frames -> night of {n_night}: {night:7.1f} s  "
          f"{m['n_solved']:3d}/{m['n_frames']} solved ({100 * m['solved_fraction']:.1f} %)  followed "
          f"{m.get('n_followed', 0):3d}  solve-field {n_sf:3d}  median residual {m['median_rms_px']:.3f} px "
          f"({m['median_rms_arcsec']:.3f}\")  truth error median {med:.3f} px, worst frame {worst:.3f} px")
    return night


def sampled_stage(stage, every):
    """A stage folder listing every ``every``-th frame of ``stage`` (hard links) for the slow method."""
    from bandersnake.calibration.frames import CALIBRATED_TABLE, read_table

    t = read_table(stage / CALIBRATED_TABLE)[::every]
    out = stage.parent / f"stage_every{every}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for name in t["file"]:
        (out / name).hardlink_to(stage / name)
    with open(out / CALIBRATED_TABLE, "w") as fh:
        t.write(fh, format="ascii.ecsv")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=142)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample", type=int, default=10, help="solve-field on every N-th frame (1: all)")
    ap.add_argument("--keep", default=None, help="keep the simulated night here")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_astrometry_"))
    cfg = TychoNight(n_frames=args.frames, jump_frame=min(90, args.frames // 2),
                     clouds=((min(30, args.frames // 4), min(40, args.frames // 4 + 10), 0.15),))
    t0 = time.perf_counter()
    truth = simulate_tycho_night(work / "stage", cfg, threads=args.threads)
    print(f"simulated {args.frames} frames {cfg.shape[1]}x{cfg.shape[0]} at {cfg.scale_arcsec}\"/px "
          f"({time.perf_counter() - t0:.1f} s); drift {np.hypot(*cfg.drift_px):.0f} px, jump at {cfg.jump_frame}, "
          f"cloud {cfg.clouds}; threads {args.threads}")
    t_follow = run("follow", work / "stage", work, args.threads, truth, cfg.shape, args.frames)
    stage_sf = work / "stage" if args.sample <= 1 else sampled_stage(work / "stage", args.sample)
    t_sf = run("solve-field", stage_sf, work, args.threads, truth, cfg.shape, args.frames)
    print(f"follow is {t_sf / t_follow:.1f}x faster than solve-field on every frame"
          + (f" (solve-field timed on every {args.sample}th frame)" if args.sample > 1 else ""))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
