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
be 0). Usage::

    PYTHONPATH=workflow .venv/bin/python benchmarks/bench_astep_frame.py [--shape 4096] [--frames 9]

``--night DIR`` instead times the workflow's own two jobs on files, as a night runs them: raw
16-bit frames of a REAL star field (the Tycho-2 stars of the astrometry.net index files, ASTEP's
0.93"/px, guided: 0.15 px jitter), masters, then
:func:`bandersnake.calibration.calibrate_night` (``cosmics_method: series``; the calibrate_frames
rule) and :func:`bandersnake.calibration.solve_night` (one solve-field, every other frame
followed; the astrometry rule, which writes each final frame with its WCS), both on
``--threads`` threads. It prints per frame the time of each stage (read, calibrate, write,
cosmic rays, WCS: detection + following, reference solve-field) summed over threads, the wall
time of each job per frame, the total against the 3 s goal, and the recall, false flags,
star-core flags and WCS error against the truth::

    PYTHONPATH=workflow .venv/bin/python benchmarks/bench_astep_frame.py --night /tmp/astep_night --frames 12
"""

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import numba  # noqa: E402

from bandersnake.astrometry.tycho import add_stars  # noqa: E402
from bandersnake.calibration.cosmics_series import detect_cosmic_rays_series, neighbour_indices  # noqa: E402
from bandersnake.sim.render import cosmic_rays  # noqa: E402

GAIN, READ_NOISE_E, BIAS_ADU, DARK_ADU_S, EXPTIME, SKY_E = 1.5, 10.0, 1000.0, 0.05, 60.0, 300.0


def expose(rng, shape, xs, ys, flux, flat, n_cosmics, cr_median):
    """One raw exposure (ADU, float64): stars at seeing ±5 % and 0.15 px jitter, sky, Poisson noise,
    cosmic rays, read noise, flat, bias and dark; its cosmic-ray truth (y, x, e-) and the jitter (px)."""
    fwhm = 3.0 * (1 + 0.05 * rng.standard_normal())
    jx, jy = 0.15 * rng.standard_normal(2)
    img = np.full(shape, SKY_E, np.float64)
    add_stars(img, xs + jx, ys + jy, flux, fwhm_px=fwhm, oversample=2)
    cx, cy, ce = cosmic_rays(shape, rng, n_cosmics, 3.0, cr_median)
    e = rng.poisson(img).astype(np.float32)
    np.add.at(e, (cy, cx), ce.astype(np.float32))
    e += rng.normal(0, READ_NOISE_E, shape).astype(np.float32)
    return e * flat / GAIN + BIAS_ADU + DARK_ADU_S * EXPTIME, (cy, cx, ce), (jx, jy)


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
        raw, truth, _ = expose(rng, shape, xs, ys, flux, flat, n_cosmics, cr_median)
        raws.append(raw.astype(np.float32))
        truths.append(truth)
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


# ---------------------------------------------------------------------------------------------
# --night: the workflow's calibrate_frames and astrometry jobs on files
# ---------------------------------------------------------------------------------------------
RA0, DEC0, ASTEP_SCALE = 303.2, 46.0, 0.93   # a Tycho-2-rich field (Cygnus); ASTEP's plate scale


class StageTimer:
    """Wall time summed per stage over every call (and thread) of the wrapped functions."""

    def __init__(self):
        self.total, self.calls, self.lock = defaultdict(float), defaultdict(int), threading.Lock()
        self.first = {}   # the first call's time: numba loads its cached machine code then

    def wrap(self, module, name, stage):
        fn = getattr(module, name)

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                with self.lock:
                    dt = time.perf_counter() - t
                    self.total[stage] += dt
                    self.calls[stage] += 1
                    self.first.setdefault(stage, dt)

        setattr(module, name, timed)


def write_night(base, n_side, n_frames, n_faint, n_cosmics, cr_median, rng):
    """Raw 16-bit science frames (ADU) of a real field, masters, and the truth of every frame."""
    from astropy.io import fits

    from bandersnake.astrometry import solve as S
    from bandersnake.astrometry import tycho

    shape = (n_side, n_side)
    raw_dir, cal_dir = base / "raw", base / "masters"
    raw_dir.mkdir(parents=True, exist_ok=True)
    cal_dir.mkdir(exist_ok=True)
    scale = ASTEP_SCALE * 4096 / n_side            # the same 63' field at any --shape
    wcs0 = tycho.tan_wcs(RA0, DEC0, scale, shape, rotation_deg=12.0)
    stars = tycho.stars_in_cone(RA0, DEC0, 0.75 * n_side * scale / 3600, index_dir=S.DEFAULT_INDEX_DIR)
    x0, y0 = wcs0.all_world2pix(stars.ra, stars.dec, 0)
    mag = np.where(np.isfinite(stars.mag), stars.mag, 12.0)
    on = (x0 > -5) & (x0 < n_side + 4) & (y0 > -5) & (y0 < n_side + 4)
    # Tycho-2 stars (zero point 21 mag = 1 e-: a 10th-mag star gives 2.5e4 e-) and fainter field stars.
    sx = np.concatenate([x0[on], rng.uniform(0, n_side, n_faint)])
    sy = np.concatenate([y0[on], rng.uniform(0, n_side, n_faint)])
    flux = np.concatenate([10 ** (-0.4 * (mag[on] - 21.0)), 10 ** rng.uniform(2.5, 4.0, n_faint)])
    flat = (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    for name, data in (("bias", np.full(shape, BIAS_ADU, np.float32)),
                       ("dark", np.full(shape, DARK_ADU_S, np.float32)), ("flat", flat)):
        fits.PrimaryHDU(data).writeto(cal_dir / f"{name}.fits", overwrite=True)
    frames, truths, wcss = [], [], []
    t0 = np.datetime64("2025-04-03T20:00:00")
    for k in range(n_frames):
        raw, (cy, cx, ce), (jx, jy) = expose(rng, shape, sx, sy, flux, flat, n_cosmics, cr_median)
        adu = np.clip(np.round(raw), 0, 65535).astype(np.uint16)
        start = t0 + np.timedelta64(int(k * (EXPTIME + 10)), "s")
        hdr = fits.Header()
        for key, val in (("EXPTIME", EXPTIME), ("FILTER", "I"), ("DATE-OBS", str(start)), ("OBJECT", "CYG"),
                         ("ACQTYPE", "SCIENCE"), ("RA", RA0 + 0.05), ("DEC", DEC0 - 0.05)):
            hdr[key] = val
        path = raw_dir / f"{str(start).replace(':', '.')}_SCIENCE.fits"
        fits.PrimaryHDU(adu, hdr).writeto(path, overwrite=True)     # BITPIX 16, BZERO 32768 as cameras write
        w = wcs0.deepcopy()
        w.wcs.crpix = w.wcs.crpix + [jx, jy]
        frames.append(dict(path=str(path), filter="I", exptime=EXPTIME))
        truths.append((cy, cx, ce))
        wcss.append(w)
    peak = flux / (2 * np.pi * (3.0 / 2.3548) ** 2)
    masters = dict(bias=str(cal_dir / "bias.fits"), dark=str(cal_dir / "dark.fits"),
                   flats={"I": str(cal_dir / "flat.fits")}, bpm=None)
    return frames, masters, truths, wcss, (sx, sy, peak), scale


def wcs_error_px(solved, truth, n_side):
    """Largest and median distance (px) between where the two WCSs put a grid of sky points."""
    g = np.linspace(0, n_side - 1, 9)
    gx, gy = np.meshgrid(g, g)
    ra, dec = truth.all_pix2world(gx.ravel(), gy.ravel(), 0)
    x, y = solved.all_world2pix(ra, dec, 0)
    d = np.hypot(x - gx.ravel(), y - gy.ravel())
    return float(np.max(d)), float(np.median(d))


def night_run(args):
    """Both jobs of a simulated ASTEP night, timed per stage; scored against the truth."""
    from astropy.io import fits
    from astropy.wcs import WCS

    import bandersnake.fitsio as fitsio
    from bandersnake.astrometry import follow as F
    from bandersnake.astrometry import solve as S
    from bandersnake.calibration import cosmics_series as CS
    from bandersnake.calibration import frames as FR
    from bandersnake.config import load_instrument

    base = args.night.resolve()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    frames, masters, truths, wcss, stars, scale = write_night(base, args.shape, args.frames, args.faint,
                                                              args.cosmics, args.cr_median, rng)
    print(f"{args.frames} raw frames of {args.shape}x{args.shape} ({scale:.2f}\"/px, Tycho-2 field at RA {RA0}, "
          f"Dec {DEC0} + {args.faint} faint stars, {args.cosmics} CR events per frame) written in "
          f"{time.perf_counter() - t:.0f} s")
    inst = load_instrument(Path(__file__).resolve().parents[1] / "config" / "instruments", "ASTEP")
    inst.update(shape=[args.shape, args.shape], plate_scale_arcsec_per_px=scale, gain_e_per_adu=GAIN,
                read_noise_e=READ_NOISE_E)
    settings = dict(method="follow", radius_deg=3.0, index_dir=str(S.DEFAULT_INDEX_DIR), timeout_s=30)

    timer = StageTimer()
    timer.wrap(FR, "read_raw", "read raw")
    timer.wrap(FR, "calibrate_frame", "calibrate")
    timer.wrap(FR, "write_fits", "write frame, unflagged")
    timer.wrap(fitsio, "write_fits", "write frame with CR flags")    # cosmics_series imports it at call time
    timer.wrap(CS, "detect_cosmic_rays_series", "cosmic rays (series)")
    timer.wrap(S, "_load", "WCS: read stage frame")
    timer.wrap(S, "detect_sources", "WCS: detect sources")
    timer.wrap(F, "follow_frame", "WCS: follow (match + fit)")
    timer.wrap(S, "solve_field", "WCS: solve-field (reference)")
    timer.wrap(S, "write_fits", "write final frame with WCS")   # and the header-only .wcs files

    load = os.getloadavg()
    stage, final = base / "calibrated_stage", base / "calibrated"
    t, c = time.perf_counter(), time.process_time()
    table = FR.calibrate_night(frames, masters, inst, stage, darks={EXPTIME: masters["dark"]}, suffix="_CAL",
                               threads=args.threads, cosmics_method="series")
    t_cal, c_cal = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    summary = FR.solve_night(stage, final, base / "wcs", base / "astrometry_summary.ecsv", inst, settings,
                             threads=args.threads)
    t_wcs, c_wcs = time.perf_counter() - t, time.process_time() - c
    n = len(frames)
    # The series' own reads of the stage frames are the rest of its time (not wrapped separately).
    print(f"load average before the jobs {load[0]:.2f} (1 min), {load[1]:.2f} (5 min); {args.threads} threads; "
          f"{os.cpu_count()} CPUs")
    print(f"per frame, each stage's time summed over the {args.threads} threads (s):")
    for name in ("read raw", "calibrate", "write frame, unflagged", "cosmic rays (series)", "write frame with CR flags",
                 "WCS: read stage frame", "WCS: detect sources", "WCS: follow (match + fit)",
                 "WCS: solve-field (reference)", "write final frame with WCS"):
        calls = timer.calls.get(name, 0)
        rest = (timer.total.get(name, 0.0) - timer.first.get(name, 0.0)) / max(calls - 1, 1)
        print(f"  {name:32s} {timer.total.get(name, 0.0) / n:7.3f}   ({calls} calls; "
              f"first {timer.first.get(name, 0):.3f} s, "
              f"the others {rest:.3f} s each)")
    per = (t_cal + t_wcs) / n
    ref = timer.total.get("WCS: solve-field (reference)", 0.0)
    print("  (the reference solve-field's own read and detection are in both its line and theirs)")
    print(f"wall per frame: calibrate_frames job {t_cal / n:.3f} s (read, calibrate, flag, write), "
          f"astrometry job {t_wcs / n:.3f} s (of which solve-field {ref:.1f} s once per night)")
    print(f"CPU per frame (all threads; solve-field's own process not counted): calibrate_frames "
          f"{c_cal / n:.3f} s, astrometry {c_wcs / n:.3f} s")
    print(f"TOTAL {per:.3f} s per frame over {n} frames (goal <= 3 s on 2 cores); with the reference "
          f"solve-field spread over a 1000-frame night: {(t_cal + t_wcs - ref) / n + ref / 1000:.3f} s")

    scores, errs = [], []
    for row, truth, w in zip(table, truths, wcss):
        if row["status"] != "ok":
            continue
        with fits.open(final / row["file"], memmap=False) as h:
            mask = (h["MASK"].data & 2) > 0
            err = h["ERR"].data
            solved = WCS(h["SCI"].header) if h[0].header.get("ASTROSTA") == "solved" else None
        scores.append(score(mask, truth, err, stars))
        if solved is not None:
            errs.append(wcs_error_px(solved, w, args.shape))
    med = statistics.median
    rec = [s["recall_detectable"] for s in scores]
    print(f"cosmic rays vs truth over {len(scores)} frames: recall (detectable, deposit >= 5 ERR) min {min(rec):.4f} "
          f"median {med(rec):.4f} (goal >= 0.95); every hit pixel median {med([s['recall_all'] for s in scores]):.4f}; "
          f"false flags per frame median {med([s['false'] for s in scores]):.0f} "
          f"max {max(s['false'] for s in scores)}; "
          f"star-core pixels flagged {sum(s['core'] for s in scores)} (goal 0; {scores[0]['n_core']} per frame)")
    m = summary.meta
    print(f"WCS: {m['n_solved']} of {m['n_frames']} solved ({m['n_followed']} followed, {m['n_solve_field']} by "
          f"solve-field), median residual {m['median_rms_px']:.3f} px; against the true WCS over a 9x9 grid: "
          f"largest error {max(e[0] for e in errs) if errs else float('nan'):.3f} px, median "
          f"{med([e[1] for e in errs]) if errs else float('nan'):.3f} px")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, default=4096)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--stars", type=int, default=8000)
    ap.add_argument("--cosmics", type=int, default=300, help="events per frame")
    ap.add_argument("--cr-median", type=float, default=1000.0, help="median deposit (e-/px)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--astroscrappy", type=int, default=0, metavar="N", help="also astroscrappy on an NxN cut")
    ap.add_argument("--night", type=Path, default=None, metavar="DIR",
                    help="time the workflow's calibrate_frames + astrometry jobs on files written in DIR (emptied)")
    ap.add_argument("--faint", type=int, default=12000, help="--night: faint field stars added to the Tycho-2 ones")
    ap.add_argument("--keep", action="store_true", help="--night: keep DIR")
    args = ap.parse_args(argv)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if args.night:
        return night_run(args)
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
    print("WCS and file reads/writes: not in this mode (use --night).")


if __name__ == "__main__":
    main()
