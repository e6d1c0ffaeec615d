"""Rejected frames leave the analysis unchanged (issue 17, item 6), on a simulated night.

Before: an all-zero, a NaN-filled and a saturated frame mid-night entered the photometry, flipped
the best aperture and moved the fitted T0 by 13 s; a copy of a frame entered the light curve twice.
Now the inventory rejects the four with their reasons and every analysis product is the clean
night's: same frames, same best aperture, same T0.
"""

import shutil

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

from _analysis_night import make_analysis_night
from conftest import run_snakemake

pytestmark = pytest.mark.slow


def _products(root, night, target):
    base = root / "results" / night / target
    with fits.open(base / "photometry" / "differential.fits") as hdul:
        best = hdul[0].header["BESTAPER"]
        table = Table(hdul[f"APER{int(best)}"].data, copy=True)
    fit = yaml.safe_load((base / "transit" / "transit_fit.yaml").read_text())
    return best, table, fit


def _bad_copies(raw, middle):
    """An all-zero, a NaN-filled and a saturated (95 % at 65535 ADU) frame 1-3 s after ``middle``,
    and a copy of it."""
    with fits.open(middle) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data
    t0 = np.datetime64(header["DATE-OBS"])
    made = {}
    for k, (name, pixels) in enumerate((("zero", np.zeros_like(data)),
                                        ("nan", np.full(data.shape, np.nan, np.float32)),
                                        ("saturated", np.where(np.arange(data.size).reshape(data.shape) % 20,
                                                               65535, data).astype(data.dtype))), start=1):
        h = header.copy()
        h["DATE-OBS"] = str(t0 + np.timedelta64(k, "s"))
        if pixels.dtype.kind == "f":
            for key in ("BZERO", "BSCALE"):
                h.remove(key, ignore_missing=True)
        path = raw / f"bad_{name}.fits"
        fits.PrimaryHDU(pixels, h).writeto(path)
        made[path.name] = name
    shutil.copy(middle, raw / f"copy_of_{middle.name}")
    return made


def test_bad_frames_leave_the_analysis_unchanged(tmp_path):
    """The night built clean, then again after three bad frames and a copy arrive mid-night."""
    night = make_analysis_night(tmp_path)
    raw = tmp_path / "raw" / "SPIRIT2" / "images" / night["night"].split("_")[1]
    target = [f"results/{night['night']}/"]
    run_snakemake(tmp_path, target, config=night["config"])
    best_a, table_a, fit_a = _products(tmp_path, night["night"], night["target"])
    # A clean night's logs (issue 17, item 8): before, night_summary.log held 90 lines of
    # "UnitsWarning: 'electron' did not parse as fits unit".
    logs = "".join(p.read_text() for p in (tmp_path / "work" / night["night"] / "logs").glob("*.log"))
    assert "UnitsWarning" not in logs and "Traceback" not in logs
    science = sorted(p for p in raw.glob("*.fits") if fits.getheader(p).get("IMAGETYP", "").startswith("Light"))
    _bad_copies(raw, science[len(science) // 2])
    proc = run_snakemake(tmp_path, target, config=night["config"])
    assert "(Rule: inventory)" in proc.stdout + proc.stderr  # the new frames were looked at
    inv = Table.read(tmp_path / "results" / night["night"] / "calib" / "inventory.ecsv")
    reasons = {r["file"]: r["reason"] for r in inv if not r["accepted"]}
    assert reasons["bad_zero.fits"] == "all-zero image"
    assert reasons["bad_nan.fits"] == "NaN-filled image (no finite pixel)"
    assert reasons["bad_saturated.fits"].startswith("saturated image (95% of pixels")
    (copy_name,) = [f for f in reasons if f.startswith("copy_of_")]
    assert reasons[copy_name] == f"duplicate of {copy_name[len('copy_of_'):]} (same pixels)"
    best_b, table_b, fit_b = _products(tmp_path, night["night"], night["target"])
    assert best_a == best_b
    assert list(table_b["File"]) == list(table_a["File"])
    # The same accepted frames in the same order give the same numbers (deterministic pipeline).
    for col in ("BJD_TDB", "diff_flux", "diff_flux_err"):
        np.testing.assert_allclose(table_b[col], table_a[col], rtol=0, atol=1e-12)
    assert fit_a["success"] and fit_b["success"]
    # The fit is seeded (transit settings seed, default 0): the same light curve gives the same chain.
    assert abs(fit_b["t0"]["median"] - fit_a["t0"]["median"]) * 86400 < 1e-3  # s
