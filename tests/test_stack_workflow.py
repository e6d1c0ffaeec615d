"""End to end (issue 20): a simulated ASTEP-like night of a REAL Tycho-2 field -> calibrated frames ->
plate solutions -> stack -> sources, ePSF, zero point against Tycho-2 V_T -> cross-night stack.

The night is the one of tests/test_astep_workflow.py (Tycho-2 stars around RA 120, Dec -65 rendered
through a known WCS, 512x512 px at 7"/px) with two bad inputs added: a starless (cloudy) frame, which
cannot be solved and must be left out of the stack with its reason, and a frame with doubled seeing,
left out for its seeing.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from bandersnake.astrometry import solve as A
from bandersnake.config import load_instrument
from bandersnake.sim.night import simulate_night, small_config

from conftest import ROOT, run_snakemake

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")]

INDEX_DIR = Path("/usr/share/astrometry")
NIGHT, DATE_ISO, TARGET = "ASTEP_20250403", "2025-04-03", "FIELD-120-65"
SHAPE, SCALE, EXPTIME = (512, 512), 7.0, 30.0

needs_solver = pytest.mark.skipif(
    not A.solve_field_available() or not list(INDEX_DIR.glob("index-tycho2-*.fits")),
    reason="solve-field or Tycho-2 index files absent (make system-packages)")


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack_night")
    inst_yaml = yaml.safe_load((ROOT / "config" / "instruments" / "ASTEP.yaml").read_text())
    inst_yaml.update(shape=list(SHAPE), plate_scale_arcsec_per_px=SCALE)
    ns = inst_yaml["night_settings"]
    ns["astrometry"]["timeout_s"] = 10
    ns["kbmod"]["enabled"] = False
    ns["stack"] = {"enabled": True}
    (root / "instruments").mkdir()
    (root / "instruments" / "ASTEP.yaml").write_text(yaml.safe_dump(inst_yaml, sort_keys=False))
    instrument = load_instrument(root / "instruments", "ASTEP")
    cfg = small_config(
        date="20250403", layout="astep", star_field="tycho", ra_deg=120.0, dec_deg=-65.0, shape=SHAPE,
        target=TARGET, telescope="ASTEP 0.4m (simulated)", n_science=6, science_exptime_s=EXPTIME,
        n_bias=5, n_dark=5, dark_exptimes_s=(EXPTIME,), n_flat_dark=5, n_flat_dusk=3, n_flat_dawn=3,
        flat_min_exptime_s=3.0, flat_max_exptime_s=3.0, dawn_first_exptime_s=3.0, gzip_every=0,
        seeing_fwhm_px=2.5, cr_rate_per_mpix_s=5.0, scintillation=False)
    truth = simulate_night(root / "raw", root / "truth", cfg, instrument)
    cams = root / "raw" / DATE_ISO / f"{DATE_ISO}-CAMS"
    science = sorted(cams.glob("*_SCIENCE.fits"))
    with fits.open(science[1]) as hdul:
        hdr, pix = hdul[0].header.copy(), hdul[0].data.copy()
    rng = np.random.default_rng(5)
    # A starless (cloudy) frame: no plate solution, left out of the stack.
    blank = np.clip(rng.normal(np.median(pix), 10.0, pix.shape), 0, 65535).astype(np.uint16)
    hdr["DATE-OBS"] = f"{DATE_ISO}T16:30:00.000"
    fits.PrimaryHDU(blank, hdr).writeto(cams / f"{DATE_ISO}_16.30.00_SCIENCE.fits")
    # A frame with doubled seeing (the first frame blurred): left out for its seeing.
    from scipy import ndimage

    with fits.open(science[0]) as hdul:
        bias = float(np.median(hdul[0].data))
        blurred = ndimage.gaussian_filter(hdul[0].data.astype(float) - bias, 2.2) + bias
    hdr["DATE-OBS"] = f"{DATE_ISO}T16:35:00.000"
    fits.PrimaryHDU(np.clip(blurred, 0, 65535).astype(np.uint16), hdr).writeto(
        cams / f"{DATE_ISO}_16.35.00_SCIENCE.fits")
    config = dict(raw_root=root / "raw", instruments_dir=root / "instruments", instruments="[ASTEP]")
    proc = run_snakemake(root, targets=[f"results/{NIGHT}/", f"results/stacks/{TARGET}_NONE/{TARGET}_NONE_stk.fits"], config=config)
    stack = root / "results" / NIGHT / TARGET / "stack"
    return dict(root=root, truth=truth, proc=proc, stack=stack, cfg=cfg)


@needs_solver
def test_stack_products_and_left_out_frames(stacked):
    stack = stacked["stack"]
    for name in ("stk.fits", "frames.ecsv", "epsf.png", "zp.png"):
        assert (stack / f"{TARGET}_NONE_{name}").exists(), name
    frames = Table.read(stack / f"{TARGET}_NONE_frames.ecsv")
    by_file = {r["file"]: r for r in frames}
    assert by_file[f"{DATE_ISO}_16.30.00_SCIENCE_CAL.fits"]["status"] == "rejected"
    assert "no WCS" in by_file[f"{DATE_ISO}_16.30.00_SCIENCE_CAL.fits"]["reason"]
    assert "seeing" in by_file[f"{DATE_ISO}_16.35.00_SCIENCE_CAL.fits"]["reason"]
    assert (frames["status"] == "ok").sum() == 6
    with fits.open(stack / f"{TARGET}_NONE_stk.fits") as h:
        names = [x.name for x in h]
        for ext in ("SCI", "ERR", "MASK", "NCOMB", "PSF", "APPHOT", "PSFSTARS", "PSFPHOT", "ZPSTARS", "RESIDUAL"):
            assert ext in names
        p = h[0].header
        assert p["NCOMBINE"] == 6 and p["EXPTIME"] == pytest.approx(6 * EXPTIME)
        assert h["SCI"].header["BUNIT"] == "electron/s"
        assert p["RADISP"] < 0.5 and p["DEDISP"] < 0.5          # arcsec, at 7"/px
    # The cross-night stack of the one night exists with the same zero point within its errors.
    cross = stacked["root"] / "results" / "stacks" / f"{TARGET}_NONE" / f"{TARGET}_NONE_stk.fits"
    assert cross.exists()


@needs_solver
def test_zero_point_against_truth(stacked):
    """ZPTMAG against the simulator's: V_T of a 1 e-/s star, dimmed by the extinction at the frames' airmass."""
    with fits.open(stacked["stack"] / f"{TARGET}_NONE_stk.fits") as h:
        p = h[0].header
    frames = Table.read(stacked["root"] / "truth" / "frames.ecsv")
    sci = frames[frames["type"] == "science"]
    cfg = stacked["cfg"]
    truth_zp = cfg.tycho_zeropoint_mag - cfg.extinction_mag_per_airmass * float(np.mean(sci["airmass"]))
    assert p["NZPSTARS"] >= 10
    # The simulated stars are exactly at their V_T, the flat-field is divided out to ~0.5 % and the
    # aperture correction is good to ~1 %: 0.03 mag bounds the sum with margin.
    assert float(p["ZPTMAG"]) == pytest.approx(truth_zp, abs=0.03)
    assert float(p["ZPTMUCER"]) < 0.02
    assert float(p["M5SIGMA"]) > float(p["M10SIGMA"])
