"""ASTEP-like 4096x4096 frames: calibration and cosmic rays per frame, recall and false flags (issue 22).

A registered time series of ``--frames`` simulated frames of one field (default 9 of 4096x4096,
0.93"/px): ``--stars`` Moffat stars (FWHM 3 px, changing by +-5 % from frame to frame, guiding
jitter 0.15 px rms), sky 300 e-/px, read noise 10 e-, and in every frame ``--cosmics`` cosmic-ray
events (bandersnake.sim.render.cosmic_rays: tracks of mean length 3 px, median deposit
``--cr-median`` e- per pixel), raw ADU with bias, dark and a 2 % flat. Then, per frame:

1. calibration: (raw - bias - dark t) / flat * gain (float32 numpy) and the ERR plane;
2. cosmic rays from the time series: bandersnake.calibration.cosmics_series (the median of the
   4 nearest frames as the reference), on ``--threads`` numba threads;

and, with ``--astroscrappy N``, L.A.Cosmic (bandersnake.calibration.cosmics, default settings) on
an N x N cut of one frame, for comparison. Against the injected truth it counts: recall over
the cosmic-ray pixels whose deposit is at least 5x the pixel's noise ("detectable"; fainter
deposits are below any detector's reach) and over all hit pixels; false flags (flagged pixels
no ray hit); star-core pixels flagged (within 2 px of a star peaking above 10x the noise; must
be 0). The WCS is not in this figure: see the note printed at the end. Usage::

    PYTHONPATH=workflow .venv/bin/python benchmarks/bench_astep_frame.py [--shape 4096] [--frames 9]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import numba  # noqa: E402

from bandersnake.astrometry.tycho import add_stars  # noqa: E402
from bandersnake.calibration.cosmics_series import detect_cosmic_rays_series, neighbour_indices  # noqa: E402
from bandersnake.sim.render import cosmic_rays  # noqa: E402

GAIN, READ_NOISE_E, BIAS_ADU, DARK_ADU_S, EXPTIME, SKY_E = 1.5, 10.0, 1000.0, 0.05, 60.0, 300.0


def make_series(n_side, n_frames, n_stars, n_cosmics, cr_median, rng):
    """Raw frames (ADU, float32), masters, per-frame CR truth (y, x, e-) and star positions/peaks."""
    shape = (n_side, n_side)
    xs, ys = rng.uniform(5, n_side - 5, n_stars), rng.uniform(5, n_side - 5, n_stars)
    flux = 10 ** rng.uniform(3.0, 6.0, n_stars)  # e-: peaks ~70 e- to ~70,000 e- at FWHM 3 px
    flat = (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    bias = np.full(shape, BIAS_ADU, np.float32)
    dark = np.full(shape, DARK_ADU_S, np.float32)
    raws, truths = [], []
    for _ in range(n_frames):
        fwhm = 3.0 * (1 + 0.05 * rng.standard_normal())
        jx, jy = 0.15 * rng.standard_normal(2)
        img = np.full(shape, SKY_E, np.float64)
        add_stars(img, xs + jx, ys + jy, flux, fwhm_px=fwhm, oversample=2)
        cx, cy, ce = cosmic_rays(shape, rng, n_cosmics, 3.0, cr_median)
        e = rng.poisson(img).astype(np.float32)
        np.add.at(e, (cy, cx), ce.astype(np.float32))
        e += rng.normal(0, READ_NOISE_E, shape).astype(np.float32)
        raw = e * flat / GAIN + BIAS_ADU + DARK_ADU_S * EXPTIME
        raws.append(raw.astype(np.float32))
        truths.append((cy, cx, ce))
    peak = flux / (2 * np.pi * (3.0 / 2.3548) ** 2)
    return raws, bias, dark, flat, truths, (xs, ys, peak)


def calibrate(raw, bias, dark, flat):
    """SCI and ERR (e-, float32), as the calibrated-frame stage computes them."""
    sci = (raw - bias - dark * np.float32(EXPTIME)) / flat * np.float32(GAIN)
    err = np.sqrt(np.clip(sci, 0, None) + np.float32(READ_NOISE_E ** 2))
    return sci, err


def score(mask, truth, err, stars, cut=None):
    """Recall (detectable, all), false flags and star-core pixels flagged, against the truth."""
    cy, cx, ce = truth
    if cut is not None:
        keep = (cy < cut) & (cx < cut)
        cy, cx, ce = cy[keep], cx[keep], ce[keep]
    hit = np.zeros(mask.shape, bool)
    hit[cy, cx] = True
    deposit = np.zeros(mask.shape, np.float32)
    np.add.at(deposit, (cy, cx), ce.astype(np.float32))
    detectable = hit & (deposit >= 5 * err)
    xs, ys, peak = stars
    bright = peak > 10 * np.sqrt(SKY_E + READ_NOISE_E ** 2)
    core = np.zeros(mask.shape, bool)
    ny, nx = mask.shape
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            if dx * dx + dy * dy <= 4:
                yy = np.round(ys[bright]).astype(int) + dy
                xx = np.round(xs[bright]).astype(int) + dx
                ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
                core[yy[ok], xx[ok]] = True
    return dict(recall_detectable=(mask & detectable).sum() / max(detectable.sum(), 1),
                n_detectable=int(detectable.sum()), recall_all=(mask & hit).sum() / max(hit.sum(), 1),
                n_hit=int(hit.sum()), false=int((mask & ~hit).sum()), core=int((mask & core & ~hit).sum()),
                n_core=int(core.sum()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, default=4096)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--stars", type=int, default=8000)
    ap.add_argument("--cosmics", type=int, default=300, help="events per frame")
    ap.add_argument("--cr-median", type=float, default=1000.0, help="median deposit (e-/px)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--astroscrappy", type=int, default=0, metavar="N", help="also astroscrappy on an NxN cut")
    args = ap.parse_args(argv)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    raws, bias, dark, flat, truths, stars = make_series(args.shape, args.frames, args.stars, args.cosmics,
                                                        args.cr_median, rng)
    print(f"{args.frames} frames of {args.shape}x{args.shape}, {args.stars} stars, {args.cosmics} CR events "
          f"per frame (median {args.cr_median:g} e-/px), simulated in {time.perf_counter() - t:.0f} s; "
          f"load average {os.getloadavg()[0]:.1f}, {args.threads} threads")
    t_cal, c_cal, cal = [], [], []
    for raw in raws:
        t, c = time.perf_counter(), time.process_time()
        cal.append(calibrate(raw, bias, dark, flat))
        t_cal.append(time.perf_counter() - t)
        c_cal.append(time.process_time() - c)
    stack = np.stack([s for s, _ in cal])
    n = len(cal)
    detect_cosmic_rays_series(cal[0][0][:64, :64], cal[0][1][:64, :64], stack[:, :64, :64],
                              use=neighbour_indices(0, n))  # compile (or load the cache) outside the timing
    t_cr, c_cr, scores = [], [], []
    for i, (sci, err) in enumerate(cal):
        t, c = time.perf_counter(), time.process_time()
        mask = detect_cosmic_rays_series(sci, err, stack, use=neighbour_indices(i, n))
        t_cr.append(time.perf_counter() - t)
        c_cr.append(time.process_time() - c)
        scores.append(score(mask, truths[i], err, stars))
    med = statistics.median
    print(f"per frame (median of {n}): calibration {med(t_cal):.3f} s, cosmic rays (time series) "
          f"{med(t_cr):.3f} s, together {med(t_cal) + med(t_cr):.3f} s wall; CPU (all threads) "
          f"{med(c_cal):.3f} + {med(c_cr):.3f} s")
    for key, label in (("recall_detectable", "recall, detectable CR pixels (deposit >= 5 ERR)"),
                       ("recall_all", "recall, every hit pixel")):
        vals = [s[key] for s in scores]
        print(f"  {label:50s} min {min(vals):.4f}  median {med(vals):.4f}")
    print(f"  CR pixels per frame: {med([s['n_hit'] for s in scores]):.0f} hit, "
          f"{med([s['n_detectable'] for s in scores]):.0f} detectable")
    print(f"  false flags per frame (no ray there): median {med([s['false'] for s in scores]):.0f}, "
          f"max {max(s['false'] for s in scores)}")
    print(f"  star-core pixels flagged (all frames): {sum(s['core'] for s in scores)} "
          f"of {scores[0]['n_core']} per frame")
    if args.astroscrappy:
        from bandersnake.calibration.cosmics import detect_cosmic_rays
        c = args.astroscrappy
        sci, err = cal[n // 2]
        t, cpu = time.perf_counter(), time.process_time()
        res = detect_cosmic_rays(sci[:c, :c], READ_NOISE_E, err_e=err[:c, :c])
        ta, ca = time.perf_counter() - t, time.process_time() - cpu
        s = score(res.mask, truths[n // 2], err[:c, :c], stars, cut=c)
        s_series = score(detect_cosmic_rays_series(sci[:c, :c], err[:c, :c], stack[:, :c, :c],
                                                   use=neighbour_indices(n // 2, n)), truths[n // 2],
                         err[:c, :c], stars, cut=c)
        cpu = time.process_time()
        detect_cosmic_rays(sci[:c, :c], READ_NOISE_E, err_e=err[:c, :c], config={"niter": 1})
        c1 = time.process_time() - cpu
        scale = (args.shape / c) ** 2
        print(f"astroscrappy where the time goes: {ca:.2f} s CPU with niter 4 (the default: every pass finds new "
              f"pixels next to stars and tracks, so all four run), {c1:.2f} s CPU with niter 1")
        print(f"astroscrappy (default settings) on a {c}x{c} cut: {ta:.2f} s wall, {ca:.2f} s CPU (x{scale:.0f} = "
              f"{ta * scale:.0f} s wall, {ca * scale:.0f} s CPU per full frame); recall detectable {s['recall_detectable']:.4f}, all {s['recall_all']:.4f}, "
              f"false {s['false']}, star cores {s['core']}; time series on the same cut: recall detectable "
              f"{s_series['recall_detectable']:.4f}, false {s_series['false']}, star cores {s_series['core']}")
    print("WCS: not timed here (per-frame WCS by matching to a reference solve: the astrometry branch); "
          "solve-field per frame took 4.4 s at 4096x4096 (BENCHMARKS.md, issue 5).")


if __name__ == "__main__":
    main()
