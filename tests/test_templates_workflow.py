"""End to end (issue 21): `snakemake templates` on a small simulated reference + coarse pair.

A 48 x 24 coarse frame in two tiles of 24 px (two scatter jobs, one gather), two offsets. Checks the
products, that the tiles were temporary, that a second run has nothing to do, and that a missing
frame stops the run with a message naming it (a bad key: tests/test_templates.py).
"""

import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

from bandersnake.sim.survey import simulate_pair

from conftest import planned_jobs, run_snakemake

pytestmark = pytest.mark.slow

SHIFT = (0.3, -0.2)


def _config(root, **extra):
    entry = dict(
        frame=str(root / "sim" / "frame.fits"),
        references=str(root / "sim" / "refs" / "cell_*.fits"),
        band_weights={"r": 0.3, "i": 0.4, "z": 0.3},
        psf={"model": "gaussian", "fwhm_arcsec": 35.0},
        offsets=[[0.0, 0.0], [0.5, 0.0]],
        tile_px=24,
        **extra,
    )
    path = root / "templates.yaml"
    path.write_text(yaml.safe_dump({"templates": {"sim": entry}}))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates_wf")
    simulate_pair(root / "sim", coarse_shape=(24, 48), shift=SHIFT, n_stars=80)
    cfg = _config(root)
    dry = run_snakemake(root, ["templates"], extra=["--configfile", str(cfg), "-n"])
    proc = run_snakemake(root, ["templates"], extra=["--configfile", str(cfg)])
    again = run_snakemake(root, ["templates"], extra=["--configfile", str(cfg), "-n"])
    return root, dry, proc, again


def test_plan_scatters_one_job_per_tile(run):
    root, dry, proc, again = run
    jobs = planned_jobs(dry.stdout)
    assert jobs.count("templates_tile") == 2
    assert jobs.count("templates_template") == 2
    assert {"templates_psf", "templates_mapping", "templates_fit", "templates_difference"} <= set(jobs)
    assert planned_jobs(again.stdout) == []  # nothing to redo


def test_products(run):
    root, *_ = run
    out = root / "results" / "templates" / "sim"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([
        "mapping.ecsv", "offsets.ecsv", "difference.fits", "difference.png",
        "template_dx+0.00_dy+0.00.fits", "template_dx+0.00_dy+0.00.png",
        "template_dx+0.50_dy+0.00.fits", "template_dx+0.50_dy+0.00.png",
    ])
    h = fits.getheader(out / "difference.fits", "SCI")
    assert (h["SECTOR"], h["CAMERA"], h["CCD"]) == (20, 3, 3)
    # the refined offset (the configured ones are 0.5 px apart)
    assert abs(h["BESTDX"] - SHIFT[0]) < 0.05 and abs(h["BESTDY"] - SHIFT[1]) < 0.05
    assert set(Table.read(out / "mapping.ecsv")["tile"]) == {"x0000_y0000", "x0024_y0000"}
    work = root / "work" / "templates" / "sim"
    assert not list((work / "tiles").glob("*.fits"))  # temporary: gone after the gather
    assert (work / "logs" / "tile_x0024_y0000.log").exists()
    assert (work / "benchmarks" / "tile_x0024_y0000.tsv").exists()


def test_bad_input_is_named(run, tmp_path):
    root, *_ = run
    cfg = _config(tmp_path)  # frame path in an empty directory
    proc = run_snakemake(tmp_path, ["templates"], extra=["--configfile", str(cfg), "-n"], check=False)
    assert proc.returncode != 0
    assert "frame.fits" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
