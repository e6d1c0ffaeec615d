"""Fuzzing the inventory (issue 17, item 9): ~100 mutated frames (truncations, bit flips, wrong
BITPIX, NaN/Inf, missing or mistyped keywords, odd extensions, garbage): no exception, every frame
accepted or rejected with a reason. The 1000-frame night through the whole workflow is
``benchmarks/fuzz_night.py`` (figures in BENCHMARKS.md)."""

import collections

import numpy as np
import pytest
from astropy.io import fits

from bandersnake.config import load_instrument
from bandersnake.ingest.inventory import build_inventory, raw_files
from bandersnake.sim import fuzz

from conftest import ROOT

#: Kinds that can never give a usable frame: each must be rejected.
ALWAYS_REJECTED = {"truncate_header", "truncate_data", "garbage", "empty_file", "gzip_truncated", "all_zero",
                   "all_nan", "saturated", "copy", "table_only", "cube", "naxis_mismatch", "wrong_bitpix"}
#: Kinds that leave a valid frame with other pixel values or an extension layout we read.
ALWAYS_ACCEPTED = {"data_bitflip", "image_in_extension", "two_images"}


@pytest.fixture
def night(tmp_path):
    inst = load_instrument(ROOT / "config" / "instruments", "MAXIM")
    inst["shape"] = [40, 50]
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        header = fits.Header(dict(IMAGETYP="Light Frame", EXPTIME=30.0, OBJECT="XO-1", FILTER="z"))
        header["DATE-OBS"] = f"2025-06-02T04:{10 + i:02d}:00.000"
        data = rng.normal(1000, 10, (40, 50)).astype(np.uint16)
        fits.PrimaryHDU(data, header).writeto(src / f"XO1_{i}.fits")
    return inst, sorted(src.glob("*.fits")), tmp_path / "night"


def test_hundred_mutants_each_accepted_or_rejected_with_reason(night):
    inst, sources, out = night
    made = fuzz.fuzz_night(sources, out, 100, seed=17)
    assert {m["kind"] for m in made} == set(fuzz.KINDS)  # every kind at least 5 times
    table = build_inventory(raw_files(out) + [str(s) for s in sources], inst)  # must not raise
    kinds = {m["file"]: m["kind"] for m in made}
    outcome = collections.Counter()
    for row in table:
        kind = kinds.get(row["file"], "source")
        assert bool(row["accepted"]) == (row["reason"] == ""), (row["file"], row["reason"])
        outcome[kind, bool(row["accepted"])] += 1
        if kind in ALWAYS_REJECTED:
            assert not row["accepted"], (row["file"], kind)
        if kind in ALWAYS_ACCEPTED or kind == "source":
            assert row["accepted"], (row["file"], kind, row["reason"])
        if kind == "copy":
            assert row["reason"].startswith("duplicate of XO1_") and row["reason"].endswith("(same pixels)")
    assert sum(outcome.values()) == 105
