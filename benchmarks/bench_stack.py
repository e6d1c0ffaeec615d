"""Benchmark: bandersnake's stack of a group against the straightforward path, on the same frames.

* bandersnake: :func:`bandersnake.stack.build.stack_group` (frame reading, star measurement and
  fine alignment, one pixel map per frame for SCI/variance/MASK, spooled block combination);
* straightforward: ``reproject.reproject_interp`` of SCI (bicubic), of the variance (bilinear) and
  of the bad-pixel mask (bilinear, > 0 = bad) onto the same grid, then ``ccdproc.combine``
  (average, sigma clipping, inverse-variance frame weights) on CCDData with masks.

The photometry of the stack (photutils Background2D, EPSFBuilder, PSFPhotometry) is the same code
on both paths and is timed once, separately. Each path runs in its own process, so the peak
resident memory (ru_maxrss) is its own.

    PYTHONPATH=workflow .venv/bin/python benchmarks/bench_stack.py [--frames 10] [--size 1024]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_frames(directory, n, size):
    from bandersnake.sim.stackfield import simulate_field, write_field

    sim = simulate_field(n_frames=n, shape=(size, size), n_stars=int(size * size / 2500), min_separation_px=10,
                         n_bad_pixels=int(size * size / 2000), n_cosmic_rays=40, seed=5)
    return [str(p) for p in write_field(sim, directory)]


def run_ours(paths, out, memory_mb):
    from bandersnake.stack.build import stack_group

    stack_group(paths, out, str(Path(out).with_suffix(".ecsv")), memory_mb=memory_mb)


def run_straightforward(paths, out, ref_image):
    """reproject + ccdproc.combine onto the grid of ``ref_image`` (bandersnake's, so both agree)."""
    import warnings

    import ccdproc
    import numpy as np
    from astropy.io import fits
    from astropy.nddata import CCDData, StdDevUncertainty
    from astropy.wcs import WCS
    from reproject import reproject_interp

    warnings.simplefilter("ignore")
    with fits.open(ref_image) as h:
        w_out, shape = WCS(h["SCI"].header), h["SCI"].data.shape
    ccds, weights = [], []
    for p in paths:
        with fits.open(p) as h:
            t = float(h[0].header["EXPTIME"])
            sci, err, mask, w = h["SCI"].data / t, h["ERR"].data / t, h["MASK"].data, WCS(h["SCI"].header)
        s, fp = reproject_interp((sci, w), w_out, shape_out=shape, order="bicubic")
        v, _ = reproject_interp((err.astype(float) ** 2, w), w_out, shape_out=shape, order="bilinear")
        m, _ = reproject_interp((((mask & 7) > 0).astype(float), w), w_out, shape_out=shape, order="bilinear")
        bad = (m > 0) | (fp == 0) | ~np.isfinite(s)
        ccds.append(CCDData(np.nan_to_num(s), unit="electron/s", mask=bad,
                            uncertainty=StdDevUncertainty(np.sqrt(np.nan_to_num(v)))))
        weights.append(1.0 / np.median(v[~bad]))
    w = np.array(weights)[:, None, None] * np.ones((len(ccds),) + shape)
    out_ccd = ccdproc.combine(ccds, method="average", sigma_clip=True, sigma_clip_low_thresh=3,
                              sigma_clip_high_thresh=3, weights=w, mem_limit=1024e6)
    out_ccd.write(out, overwrite=True)


def run_photometry(image):
    from bandersnake.stack.measure import calibrate, _read_image

    calibrate(_read_image(image), None, {"source": "file", "file": str(Path(image).parent / "catalogue.ecsv")})


def child(args):
    t0 = time.perf_counter()
    if args.which == "ours":
        run_ours(args.paths, args.out, args.memory_mb)
    elif args.which == "straight":
        run_straightforward(args.paths, args.out, args.ref)
    else:
        run_photometry(args.out)
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def spawn(which, paths, out, ref="", memory_mb=1024):
    cmd = [sys.executable, __file__, "--child", which, "--out", out, "--ref", ref, "--memory-mb", str(memory_mb),
           "--paths", *paths]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--memory-mb", type=float, default=1024)
    p.add_argument("--child", dest="which", default=None)
    p.add_argument("--out", default="")
    p.add_argument("--ref", default="")
    p.add_argument("--paths", nargs="*", default=[])
    args = p.parse_args(argv)
    if args.which:
        return child(args)
    with tempfile.TemporaryDirectory() as d:
        paths = make_frames(d, args.frames, args.size)
        ours = spawn("ours", paths, f"{d}/ours.fits", memory_mb=args.memory_mb)
        straight = spawn("straight", paths, f"{d}/straight.fits", ref=f"{d}/ours.fits")
        phot = spawn("phot", paths, f"{d}/ours.fits")
        import numpy as np
        from astropy.io import fits

        a = fits.getdata(f"{d}/ours.fits", "SCI")
        b = fits.getdata(f"{d}/straight.fits")
        ok = np.isfinite(a) & np.isfinite(b)
        sky = float(np.nanmedian(fits.getdata(f"{d}/ours.fits", "ERR")))
        diff = float(np.median(np.abs(a[ok] - b[ok])))
    print(f"{args.frames} frames {args.size}x{args.size}")
    print(f"bandersnake stack_group : {ours['seconds']:7.2f} s  peak RSS {ours['peak_mb']:7.0f} MB "
          f"(memory bound {args.memory_mb:g} MB; includes star measurement and alignment)")
    print(f"reproject + ccdproc     : {straight['seconds']:7.2f} s  peak RSS {straight['peak_mb']:7.0f} MB")
    print(f"ratio (straightforward / bandersnake): {straight['seconds'] / ours['seconds']:.2f}x time, "
          f"{straight['peak_mb'] / ours['peak_mb']:.2f}x memory")
    print(f"photometry of the stack (same photutils code on both paths): {phot['seconds']:.2f} s, "
          f"peak RSS {phot['peak_mb']:.0f} MB")
    print(f"median |difference| of the two stacks: {diff:.4f} e-/s ({diff / sky:.3f} x the stack's ERR)")


if __name__ == "__main__":
    main()
