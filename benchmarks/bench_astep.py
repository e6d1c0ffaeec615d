"""Per-frame cost of the ASTEP-style chain (cal.sh: calibrate, L.A.Cosmic, solve-field).

Times, on one synthetic ASTEP-like frame of a real Tycho-2 field (default 2048x2048 at 1.86"/px,
i.e. ASTEP's 4096x4096 at 0.93"/px binned 2x2 -- use ``--shape 4096 4096`` for full frames):

1. calibration: full-frame (raw - bias - dark * t) / flat * gain in numpy (float32), as
   bandersnake.calibration.reduce would, plus the ERR plane;
2. cosmic rays: bandersnake.calibration.cosmics.detect_cosmic_rays (astroscrappy, default parameters);
3. astrometry: bandersnake.astrometry.solve.solve_field (our detection + hinted solve-field, index
   series 09/10), i.e. what every frame costs with the "solve every frame" strategy.

Prints the median over ``--repeat`` runs and the implied time per night for ``--frames`` frames,
serially and with 2 frames in parallel (2 cores). Run from the project root:

    PYTHONPATH=workflow .venv/bin/python benchmarks/bench_astep.py [--shape NY NX] [--repeat N]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from bandersnake.astrometry import solve as astrometry  # noqa: E402
from bandersnake.astrometry import tycho  # noqa: E402
from bandersnake.calibration import cosmics  # noqa: E402

GAIN, READ_NOISE_E, BIAS_ADU, DARK_ADU_S, EXPTIME = 1.5, 10.0, 1000.0, 0.05, 60.0
RA0, DEC0 = 303.2, 46.0  # a Tycho-2-rich field (Cygnus)
INDEX = ["index-tycho2-09.littleendian.fits", "index-tycho2-10.littleendian.fits"]


def make_frame(shape, rng):
    """Raw-like frame (ADU) of the real Tycho-2 field plus faint random field stars; masters."""
    ny, nx = shape
    scale = 3800.0 / nx  # ~63' field: ASTEP's 4096 px at 0.93"/px
    wcs = tycho.tan_wcs(RA0, DEC0, scale, shape, rotation_deg=12.0)
    stars = tycho.stars_in_cone(RA0, DEC0, 0.8 * 3800.0 / 3600.0, index_dir=astrometry.DEFAULT_INDEX_DIR)
    image_e, _ = tycho.render_field(wcs, shape, stars, zeropoint_mag=21.0, fwhm_px=3.0, sky_e=300.0,
                                    read_noise_e=READ_NOISE_E, rng=rng)
    n_faint = 3000 * nx * ny // (2048 * 2048)  # fainter field stars make detection realistic
    tycho.add_stars(image_e, rng.uniform(0, nx, n_faint), rng.uniform(0, ny, n_faint),
                    10 ** rng.uniform(2.5, 4.0, n_faint), fwhm_px=3.0)
    flat = (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    raw = image_e * flat / GAIN + BIAS_ADU + DARK_ADU_S * EXPTIME
    return raw.astype(np.float32), np.full(shape, BIAS_ADU, np.float32), \
        np.full(shape, DARK_ADU_S, np.float32), flat, scale


def calibrate(raw, bias, dark, flat):
    """Full-frame calibration (e-) and ERR (e-), float32."""
    sci = (raw - bias - dark * np.float32(EXPTIME)) / flat * np.float32(GAIN)
    err = np.sqrt(np.clip(sci, 0, None) + np.float32(READ_NOISE_E**2))
    return sci, err


def timed(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("NY", "NX"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frames", type=int, default=1000, help="frames per night for the projection")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    raw, bias, dark, flat, scale = make_frame(tuple(args.shape), rng)
    t_cal, (sci, err) = timed(lambda: calibrate(raw, bias, dark, flat), args.repeat)
    t_cr, cr = timed(lambda: cosmics.detect_cosmic_rays(sci, READ_NOISE_E, err_e=err), args.repeat)
    rows = [("calibration (numpy)", t_cal), ("cosmic rays (astroscrappy)", t_cr)]
    if astrometry.solve_field_available():
        t_as, res = timed(lambda: astrometry.solve_field(
            sci, scale_low=0.95 * scale, scale_high=1.05 * scale, ra_hint=RA0 + 0.1, dec_hint=DEC0 - 0.1,
            radius_deg=1.0, index_files=INDEX, timeout_s=30), args.repeat)
        rows.append((f"astrometry (solve-field, {res.status}, {res.n_matched} matches, "
                     f"rms {res.rms_arcsec:.2f}\")", t_as))
    else:
        print("solve-field not installed: astrometry not timed")
    total = sum(t for _, t in rows)
    print(f"frame {args.shape[0]}x{args.shape[1]}, {scale:.2f}\"/px, median of {args.repeat}, "
          f"{os.cpu_count()} CPUs visible")
    for name, t in rows:
        print(f"  {name:<62s} {t:7.3f} s")
    print(f"  {'total per frame':<62s} {total:7.3f} s")
    print(f"night of {args.frames} frames: {total * args.frames / 60:.1f} min serial, "
          f"{total * args.frames / 120:.1f} min on 2 cores (2 frames at a time)")


if __name__ == "__main__":
    main()
