"""Benchmark: templates (issue 21) against scipy.ndimage convolution + reproject_exact, and one
full-size tile job of a 2048 x 2048 TESS-like grid from PS1-like cells.

    PYTHONPATH=workflow .venv/bin/python benchmarks/bench_templates.py [--part ratio|tile|plan|all]
        [--workdir /tmp/bench_templates] [--cell-px 3000] [--ps1-cells 4]

* ``ratio``: one reference cell (``--cell-px``\\ ^2 at 1"/px, stars + noise) -> a 128 x 128 coarse
  frame at 21"/px. The reference path convolves the cell with the Gaussian PSF at its own scale
  (``scipy.ndimage.gaussian_filter``) and resamples it with ``reproject.reproject_exact`` (flux
  per coarse pixel = surface brightness x area ratio); bandersnake builds the same template
  (psf, mapping, tile, offset binning). Prints both times, the ratio and how well they agree.
* ``tile``: a TESS FFI-shaped frame (2136 x 2078, science region 2048^2, SCCSA... keys) and
  ``--ps1-cells`` x ``--ps1-cells`` PS1-sized cells (6250^2 px at 0.25"/px, float32 + int16 mask)
  covering its first 256 x 256 tile; runs that tile job in a fresh process and prints its peak
  memory (ru_maxrss), time and reference pixels per second.
* ``plan``: ``snakemake -n templates`` on that frame: the job counts for the whole CCD.
"""

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from bandersnake.sim.survey import render, tan_header  # noqa: E402

RA, DEC = 120.0, -30.0
FWHM = 35.0  # arcsec, TESS-like


def _stars(rng, n, shape, sigma):
    y = rng.uniform(0, shape[0], n)
    x = rng.uniform(0, shape[1], n)
    f = 10 ** rng.uniform(2.0, 5.0, n)
    return render(shape, x, y, f, sigma)


def part_ratio(workdir, cell_px):
    from reproject import reproject_exact
    from scipy import ndimage

    from bandersnake.templates.run import make_template

    rng = np.random.default_rng(1)
    work = Path(workdir) / "ratio"
    (work / "refs").mkdir(parents=True, exist_ok=True)
    fine = 1.0
    cell_h = tan_header(RA, DEC, fine, 3.0, (cell_px, cell_px))
    cell = _stars(rng, 2000, (cell_px, cell_px), 1.5) + rng.normal(0, 1.0, (cell_px, cell_px))
    fits.PrimaryHDU(cell.astype(np.float32), header=cell_h).writeto(work / "refs" / "cell.fits", overwrite=True)
    n = 128
    frame_h = tan_header(RA, DEC, 21.0, 12.0, (n, n))
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((n, n), np.float32), header=frame_h)]).writeto(
        work / "frame.fits", overwrite=True)

    t0, c0 = time.perf_counter(), time.process_time()
    sigma_f = FWHM / (2 * math.sqrt(2 * math.log(2))) / fine
    conv = ndimage.gaussian_filter(cell, sigma_f, mode="constant", truncate=5.0)
    sb, footprint = reproject_exact((conv, WCS(cell_h)), WCS(frame_h), shape_out=(n, n), parallel=False)
    ref = sb * (21.0 / fine) ** 2
    t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0

    entry = dict(frame=str(work / "frame.fits"), references=str(work / "refs" / "cell.fits"),
                 psf={"model": "gaussian", "fwhm_arcsec": FWHM}, tile_px=n, offsets=[[0.0, 0.0]],
                 flux_scale=1.0, refine_offset=False, difference=False, fill="zero", mask_suffix=None)
    make_template("bench", entry, work / "out", work / "work")  # numba compilation, warm caches
    t0, c0 = time.perf_counter(), time.process_time()
    make_template("bench", entry, work / "out", work / "work")
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    ours = fits.getdata(work / "out" / "template_dx+0.00_dy+0.00.fits", "SCI").astype(float)

    # compare where the cell covers the coarse pixel and its PSF neighbourhood fully
    inside = ndimage.binary_erosion(np.nan_to_num(footprint) >= 0.999, iterations=6)
    ref_in, ours_in = ref[inside], ours[inside]
    bright = ref_in > np.percentile(ref_in, 90)
    rel = (ours_in[bright] - ref_in[bright]) / ref_in[bright]
    print(f"[ratio] cell {cell_px}^2 px at 1\"/px -> {n}^2 coarse px at 21\"/px, Gaussian FWHM {FWHM}\"")
    print(f"[ratio] load average {os.getloadavg()[0]:.1f}; wall (CPU) seconds:")
    print(f"[ratio] scipy.ndimage.gaussian_filter + reproject_exact: {t_ref:8.2f} s ({c_ref:.2f} s)")
    print(f"[ratio] bandersnake templates (all steps, 1 tile):     {t_ours:8.2f} s ({c_ours:.2f} s)")
    print(f"[ratio] speed ratio (reference / bandersnake):          {t_ref / t_ours:8.1f} x wall, "
          f"{c_ref / c_ours:.1f} x CPU")
    print(f"[ratio] agreement on the brightest 10 % of pixels: median {np.median(rel):+.2e}, "
          f"rms {np.sqrt(np.mean(rel ** 2)):.2e}; totals {ours_in.sum() / ref_in.sum() - 1:+.2e} "
          f"({inside.sum()} px fully covered)")


def tess_frame(path):
    """A TESS FFI-shaped coarse frame (2136 x 2078, science 2048^2 at columns 44..2091)."""
    h = tan_header(RA, DEC, 21.0, 12.0, (2078, 2136))
    h["SCCSA"], h["SCCED"], h["SCIROWS"], h["SCIROWE"] = 45, 2092, 1, 2048
    h["CAMERA"], h["CCD"] = 3, 3
    primary = fits.Header()
    primary["SECTOR"] = 20
    data = np.zeros((2078, 2136), np.float32)
    fits.HDUList([fits.PrimaryHDU(header=primary), fits.ImageHDU(data, header=h)]).writeto(path, overwrite=True)


def ps1_cells(workdir, n_side):
    """PS1-sized cells (6250^2 at 0.25"/px) over the first 256^2 tile of the TESS-like frame."""
    refs = Path(workdir) / "tile" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    frame = Path(workdir) / "tile" / "frame.fits"
    tess_frame(frame)
    wcs = WCS(fits.getheader(frame, 1))
    rng = np.random.default_rng(2)
    side_px = 6250
    # tile x 44..300, y 0..256 plus ~8 px of margin: 272 x 21" = 1.59 deg over n_side cells
    span = 272 * 21.0
    step = span / n_side
    for j in range(n_side):
        for i in range(n_side):
            x = 44 - 8 + (i + 0.5) * step / 21.0
            y = -8 + (j + 0.5) * step / 21.0
            c = wcs.pixel_to_world(x, y)
            path = refs / f"cell_{i}_{j}.r.fits"
            if path.exists():
                continue
            h = tan_header(c.ra.deg, c.dec.deg, 0.25, float(rng.uniform(-2, 2)), (side_px, side_px))
            h["FILTER"] = "r.00000"
            img = rng.normal(0, 1.0, (side_px, side_px)).astype(np.float32)
            img += _stars(rng, 400, (side_px, side_px), 2.0).astype(np.float32)
            fits.PrimaryHDU(img, header=h).writeto(path, overwrite=True)
            mask = (rng.random((side_px, side_px)) < 0.001).astype(np.int16)
            fits.PrimaryHDU(mask, header=h).writeto(str(path).replace(".fits", ".mask.fits"), overwrite=True)
            del img, mask
    return frame, refs


def part_tile(workdir, n_side):
    from bandersnake.templates.build import write_mapping, write_psf

    frame, refs = ps1_cells(workdir, n_side)
    work = Path(workdir) / "tile"
    psf = work / "psf.fits"
    write_psf(frame, psf, model="gaussian", k=8, fwhm_arcsec=FWHM)
    offsets = [[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [0.5, 0.5]]
    write_mapping(frame, str(refs / "cell_*.fits"), psf, work / "mapping.ecsv", tile_px=256, offsets=offsets,
                  mask_suffix=".mask.fits")
    code = (
        "from bandersnake.templates import build_tile;"
        f"build_tile({str(frame)!r}, {str(work / 'mapping.ecsv')!r}, {str(psf)!r}, 'x0044_y0000', "
        f"{str(work / 'tile.fits')!r}, k=8, band_weights=None, offsets={offsets!r}, mask_suffix='.mask.fits')"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow"))
    import resource

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    wall = time.perf_counter() - t0
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = child.ru_utime + child.ru_stime
    h = fits.getheader(work / "tile.fits")
    print(f"[tile] 256^2 tile of a 2048^2 grid (x0044_y0000), {h['NCELLS']} PS1-sized cells, "
          f"{h['NFINE'] / 1e6:.0f} M reference px read")
    print(f"[tile] peak RSS {h['PEAKMB']:.0f} MB; job {h['RUNTIME']:.1f} s wall in-process ({wall:.1f} s with "
          f"start-up), {cpu:.1f} s CPU: {h['NFINE'] / cpu / 1e6:.1f} M reference px per CPU second")
    print(f"[tile] whole CCD, this density (16 cells per tile and band) x 3 bands: 64 tiles x 3 x {cpu:.0f} s = "
          f"{64 * 3 * cpu / 3600:.1f} CPU hours")


def part_plan(workdir, n_side):
    frame, refs = ps1_cells(workdir, n_side)
    cfg = Path(workdir) / "tile" / "plan.yaml"
    cfg.write_text(
        "templates:\n  s0020_3_3:\n"
        f"    frame: {frame}\n    references: {refs}/cell_*.fits\n"
        "    psf: {model: gaussian, fwhm_arcsec: 35.0}\n"
    )
    snakemake = Path(sys.executable).with_name("snakemake")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow"))
    proc = subprocess.run([str(snakemake), "-s", str(ROOT / "Snakefile"), "--configfile", str(cfg), "-n",
                           "templates"], cwd=Path(workdir) / "tile", capture_output=True, text=True, env=env)
    stats = proc.stdout[proc.stdout.find("Job stats:"):].split("\n\n")[0]
    print("[plan] snakemake -n templates, one TESS FFI (2048^2 science pixels, tile_px 256):")
    print("\n".join("    " + line for line in stats.splitlines()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["ratio", "tile", "plan", "all"], default="all")
    parser.add_argument("--workdir", default="/tmp/bench_templates")
    parser.add_argument("--cell-px", type=int, default=3000)
    parser.add_argument("--ps1-cells", type=int, default=4, help="cells per side over the tile")
    args = parser.parse_args(argv)
    if args.part in ("ratio", "all"):
        part_ratio(args.workdir, args.cell_px)
    if args.part in ("tile", "all"):
        part_tile(args.workdir, args.ps1_cells)
    if args.part in ("plan", "all"):
        part_plan(args.workdir, args.ps1_cells)


if __name__ == "__main__":
    main()
