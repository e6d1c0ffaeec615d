"""Job logs stay readable (issue 17, item 8): when a raw frame is added or the instrument file
changes, the rerun job's ``reason:`` line names the change in a few words instead of listing every
raw path and the whole instrument file (Snakemake prints the old and new parameter values)."""

import shutil

import numpy as np
import pytest
import yaml
from astropy.io import fits

from conftest import ROOT, run_snakemake

pytestmark = pytest.mark.slow
NIGHT = "MAXIM_20250602"


def _frame(path, i):
    header = fits.Header(dict(IMAGETYP="Light Frame", EXPTIME=30.0, OBJECT="XO-1", FILTER="z"))
    header["DATE-OBS"] = f"2025-06-02T04:{10 + i:02d}:00.000"
    data = np.random.default_rng(i).normal(1000, 10, (16, 16)).astype(np.uint16)
    fits.PrimaryHDU(data, header).writeto(path)


def test_reason_lines_are_short(tmp_path):
    raw = tmp_path / "raw" / "MAXIM" / "images" / "20250602"
    raw.mkdir(parents=True)
    for i in range(30):
        _frame(raw / f"XO1_z_{i:03d}_with_a_long_descriptive_file_name.fits", i)
    instruments = tmp_path / "instruments"
    instruments.mkdir()
    shutil.copy(ROOT / "config" / "instruments" / "MAXIM.yaml", instruments)
    config = {"raw_root": tmp_path / "raw", "instruments_dir": instruments}
    target = [f"work/{NIGHT}/calib/inventory.ecsv"]
    run_snakemake(tmp_path, target, config=config)
    _frame(raw / "XO1_z_999_with_a_long_descriptive_file_name.fits", 40)  # a frame arrives
    data = yaml.safe_load((instruments / "MAXIM.yaml").read_text())
    data["gain_e_per_adu"] = 1.7  # and the instrument file is edited
    (instruments / "MAXIM.yaml").write_text(yaml.safe_dump(data))
    proc = run_snakemake(tmp_path, target, config=config, extra=["-n"])
    reasons = [line for line in proc.stdout.splitlines() if line.strip().startswith("reason:")]
    assert reasons and "Params have changed" in reasons[0], proc.stdout[-2000:]
    # Before: ~2 kB per 30 frames and the whole instrument file (every key, before and after).
    assert all(len(line) < 400 for line in reasons), reasons
    assert "long_descriptive" not in reasons[0] and "imagetyp_values" not in reasons[0]
    assert "<instrument MAXIM sha256:" in reasons[0] and "raw files sha256:" in reasons[0]
