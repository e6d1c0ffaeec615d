"""Pixel checks in the inventory (issue 17, item 6): empty, NaN-filled, saturated and duplicate
frames rejected with a reason naming the kept twin; anything unexpected in a header is a reason."""

import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits

from bandersnake.config import load_instrument
from bandersnake.ingest import vetting
from bandersnake.ingest.inventory import build_inventory

from conftest import ROOT


@pytest.fixture
def maxim():
    inst = load_instrument(ROOT / "config" / "instruments", "MAXIM")
    inst["site"] = dict(name="APO", latitude_deg=32.78, longitude_deg=-105.82, altitude_m=2788)
    inst["shape"] = [20, 30]
    return inst


def _frame(path, data=None, seed=0, date_obs="2025-06-02T04:10:00", obj="XO-1 b", **keys):
    if data is None:
        data = np.random.default_rng(seed).normal(1000, 10, (20, 30)).astype(np.uint16)
    header = fits.Header(dict(IMAGETYP="Light Frame", EXPTIME=30.0, OBJECT=obj, FILTER="z", **keys))
    header["DATE-OBS"] = date_obs
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def _reasons(table):
    return {row["file"]: (bool(row["accepted"]), row["reason"]) for row in table}


def test_empty_nan_saturated_frames_rejected(tmp_path, maxim):
    for i in range(3):
        _frame(tmp_path / f"good_{i}.fits", seed=i, date_obs=f"2025-06-02T04:1{i}:00")
    _frame(tmp_path / "zero.fits", np.zeros((20, 30), np.uint16), date_obs="2025-06-02T04:20:00")
    _frame(tmp_path / "const.fits", np.full((20, 30), 7, np.int16), date_obs="2025-06-02T04:21:00")
    nan = np.full((20, 30), np.nan, np.float32)
    _frame(tmp_path / "nan.fits", nan, date_obs="2025-06-02T04:22:00")
    mostly = np.random.default_rng(9).normal(1000, 10, (20, 30)).astype(np.float32)
    mostly[:15] = np.inf
    _frame(tmp_path / "mostly_inf.fits", mostly, date_obs="2025-06-02T04:23:00")
    sat = np.random.default_rng(8).normal(1000, 10, (20, 30))
    sat[:, :20] = 65535  # two thirds at the ceiling (the instrument saturates at 60000 ADU)
    _frame(tmp_path / "sat.fits", sat.astype(np.uint16), date_obs="2025-06-02T04:24:00")
    few_nan = np.random.default_rng(7).normal(1000, 10, (20, 30)).astype(np.float32)
    few_nan[3, 4] = np.nan  # a few bad pixels are the photometry's business, not a reason
    _frame(tmp_path / "few_nan.fits", few_nan, date_obs="2025-06-02T04:25:00")
    r = _reasons(build_inventory(sorted(str(p) for p in tmp_path.glob("*.fits")), maxim))
    assert all(r[f"good_{i}.fits"] == (True, "") for i in range(3))
    assert r["few_nan.fits"] == (True, "")
    assert r["zero.fits"] == (False, "all-zero image")
    assert r["const.fits"] == (False, "constant image (every pixel 7 ADU)")
    assert r["nan.fits"] == (False, "NaN-filled image (no finite pixel)")
    assert r["mostly_inf.fits"] == (False, "NaN-filled image (450 of 600 pixels NaN or Inf)")
    assert r["sat.fits"][0] is False and r["sat.fits"][1].startswith("saturated image (67% of pixels")


def test_duplicates_name_the_kept_twin(tmp_path, maxim):
    """Before: a copy of a frame entered the light curve twice."""
    first = _frame(tmp_path / "a.fits", seed=1, date_obs="2025-06-02T04:10:00")
    _frame(tmp_path / "b.fits", seed=2, date_obs="2025-06-02T04:11:00")
    shutil.copy(first, tmp_path / "a (copy).fits")
    with open(first, "rb") as src, gzip.open(tmp_path / "a.fits.gz", "wb") as dst:
        dst.write(src.read())  # the same frame compressed: same pixels
    # Same pixels under a rewritten header (e.g. OBJECT fixed by hand): still the same frame.
    data = fits.getdata(first)
    _frame(tmp_path / "a_fixed.fits", data, date_obs="2025-06-02T04:10:00", obj="XO-1")
    # Same time and object, different pixels: the same exposure written twice.
    _frame(tmp_path / "b_again.fits", seed=5, date_obs="2025-06-02T04:11:00")
    # Same pixel values in another night frame at another time of a different target: still a copy.
    r = _reasons(build_inventory(sorted(str(p) for p in tmp_path.glob("*.fits*")), maxim))
    assert r["a.fits"] == (True, "") and r["b.fits"] == (True, "")
    assert r["a (copy).fits"] == (False, "duplicate of a.fits (same pixels)")
    assert r["a.fits.gz"] == (False, "duplicate of a.fits (same pixels)")
    assert r["a_fixed.fits"] == (False, "duplicate of a.fits (same pixels)")
    assert r["b_again.fits"] == (False, "duplicate of b.fits (same type, target and DATE-OBS)")


def test_unexpected_header_values_are_reasons(tmp_path, maxim):
    _frame(tmp_path / "good.fits", seed=1)
    _frame(tmp_path / "exptime_text.fits", seed=2, date_obs="2025-06-02T04:11:00")
    with fits.open(tmp_path / "exptime_text.fits", mode="update") as hdul:
        hdul[0].header["EXPTIME"] = "thirty"
    _frame(tmp_path / "date_number.fits", seed=3)
    with fits.open(tmp_path / "date_number.fits", mode="update") as hdul:
        hdul[0].header["DATE-OBS"] = 20250602
    r = _reasons(build_inventory(sorted(str(p) for p in tmp_path.glob("*.fits")), maxim))
    assert r["good.fits"] == (True, "")
    # Before: a ValueError traceback that stopped the whole inventory.
    assert not r["exptime_text.fits"][0] and "'thirty'" in r["exptime_text.fits"][1], r
    assert not r["date_number.fits"][0] and r["date_number.fits"][1], r


def test_pixel_problem_scaling():
    """Saturation is judged in ADU after BZERO (uint16 frames are stored as int16 - 32768)."""
    stored = np.full((4, 4), 32767, np.int16)  # 65535 ADU with BZERO 32768
    stored[0, 0] = 0
    assert vetting.pixel_problem(stored, 32768.0, 1.0, 60000).startswith("saturated image (94%")
    assert vetting.pixel_problem(stored, 32768.0, 1.0, 70000) is None
    assert vetting.pixel_problem(np.full((4, 4), -32768, np.int16), 32768.0, 1.0, 60000) == "all-zero image"


def test_oldest_twin_kept(tmp_path, maxim):
    """A later copy with a shorter name is still the duplicate: the oldest file is kept."""
    import os

    original = _frame(tmp_path / "XO1_20250602_041000.fits", seed=1)
    shutil.copy(original, tmp_path / "c.fits")
    os.utime(original, ns=(1_000_000_000, 1_000_000_000))
    r = _reasons(build_inventory(sorted(str(p) for p in tmp_path.glob("*.fits")), maxim))
    assert r["XO1_20250602_041000.fits"] == (True, "")
    assert r["c.fits"] == (False, "duplicate of XO1_20250602_041000.fits (same pixels)")
