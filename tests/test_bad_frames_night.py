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
        table = Table(hdul[f"APER{int(best)}"].data)
    fit = yaml.safe_load((base / "transit" / "transit_fit.yaml").read_text())
    return best, table, fit


def _bad_copies(raw, middle):
    """An all-zero, a NaN-filled and a saturated frame 1-3 s after ``middle``, and a copy of it."""
    with fits.open(middle) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data
    t0 = np.datetime64(header["DATE-OBS"])
    made = {}
    for k, (name, pixels) in enumerate((("zero", np.zeros_like(data)),
                                        ("nan", np.full(data.shape, np.nan, np.float32)),
                                        ("saturated", np.full_like(data, 65535))), start=1):
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


def test_bad_frames_leave_the_analysis_unchanged(tmp_path_factory):
    runs = {}
    for label in ("clean", "with_bad"):
        root = tmp_path_factory.mktemp(label)
        night = make_analysis_night(root)  # same seed: the same night twice
        raw = root / "raw" / "SPIRIT2" / "images" / night["night"].split("_")[1]
        if label == "with_bad":
            science = sorted(p for p in raw.glob("*.fits") if fits.getheader(p).get("IMAGETYP", "").startswith("Light"))
            bad = _bad_copies(raw, science[len(science) // 2])
        run_snakemake(root, [f"results/{night['night']}/"], config=night["config"])
        runs[label] = (root, night)
    (clean_root, night), (bad_root, _) = runs["clean"], runs["with_bad"]
    inv = Table.read(bad_root / "results" / night["night"] / "calib" / "inventory.ecsv")
    reasons = {r["file"]: r["reason"] for r in inv if not r["accepted"]}
    assert reasons["bad_zero.fits"] == "all-zero image"
    assert reasons["bad_nan.fits"] == "NaN-filled image (no finite pixel)"
    assert reasons["bad_saturated.fits"].startswith("saturated image (100% of pixels")
    (copy_name,) = [f for f in reasons if f.startswith("copy_of_")]
    assert reasons[copy_name] == f"duplicate of {copy_name[len('copy_of_'):]} (same pixels)"
    best_a, table_a, fit_a = _products(clean_root, night["night"], night["target"])
    best_b, table_b, fit_b = _products(bad_root, night["night"], night["target"])
    assert best_a == best_b
    assert len(table_a) == len(table_b)
    # The same accepted frames in the same order give the same numbers (deterministic pipeline).
    assert list(table_b["File"]) == list(table_a["File"])
    for col in ("BJD_TDB", "diff_flux", "diff_flux_err"):
        np.testing.assert_allclose(table_b[col], table_a[col], rtol=0, atol=1e-12)
    assert fit_a["success"] and fit_b["success"]
    assert abs(fit_b["t0"] - fit_a["t0"]) * 86400 < 1e-3  # s
