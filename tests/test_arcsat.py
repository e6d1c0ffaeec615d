"""The real ARCSAT night (../shared/data/xo1b_arcsat_20250602) through the workflow's calibration stage."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import run_snakemake

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
NIGHT = "ARCSAT_20250602"


def test_inventory_and_masters(arcsat_raw_root, tmp_path):
    calib = f"work/{NIGHT}/calib"
    targets = [f"{calib}/inventory.ecsv", f"{calib}/bad_pixel_map.fits", f"{calib}/master_flat_z.fits"]
    run_snakemake(tmp_path, targets, config={"raw_root": arcsat_raw_root})
    inventory = Table.read(tmp_path / calib / "inventory.ecsv")
    assert len(inventory) == 96 and inventory["accepted"].all()
    bias = fits.open(tmp_path / calib / "master_bias.fits")[0]
    dark = fits.open(tmp_path / calib / "master_dark.fits")[0]
    flat = fits.getdata(tmp_path / calib / "master_flat_z.fits")
    # Physically sensible figures for this CCD (PROVENANCE: bias ~1356 ADU, sigma ~13 ADU):
    assert 1300 < np.median(bias.data) < 1400
    assert 8 < bias.header["RDNOISE"] < 16          # e- with the nominal gain of 1 e-/ADU
    assert 0 <= dark.header["DARKCUR"] < 1.0         # e-/s/px, a cooled CCD at -25 C
    assert np.median(flat) == pytest.approx(1.0, abs=0.01)
    lo, hi = np.percentile(flat, [0.1, 99.9])
    assert 0.9 < lo < 1.0 < hi < 1.1                 # dome flat: a few per cent vignetting
