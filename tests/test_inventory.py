"""Inventory: classification, timing, dusk/dawn from the Sun, and bad input contained."""

import os
import zlib

import numpy as np
import pytest
from astropy.io import fits

from bandersnake.config import load_instrument
from bandersnake.errors import BandersnakeError
from bandersnake.ingest.inventory import (build_inventory, classify, make_inventory, raw_files, sun_sessions)

from conftest import ARCSAT_RAW, ROOT

INSTRUMENTS = ROOT / "config" / "instruments"


@pytest.fixture
def maxim():
    inst = load_instrument(INSTRUMENTS, "MAXIM")
    inst["site"] = dict(name="APO", latitude_deg=32.78, longitude_deg=-105.82, altitude_m=2788)
    inst["shape"] = [20, 30]
    return inst


def write_frame(path, imagetyp="Light Frame", exptime=30.0, date_obs="2025-06-02T04:10:00", shape=(20, 30),
                offset=None, **extra):
    header = fits.Header()
    if imagetyp is not None:
        header["IMAGETYP"] = imagetyp
    if exptime is not None:
        header["EXPTIME"] = exptime
    if date_obs is not None:
        header["DATE-OBS"] = date_obs
    header["OBJECT"] = extra.pop("obj", "XO-1 b")
    header["FILTER"] = extra.pop("flt", "z")
    for k, v in extra.items():
        header[k] = v
    # Different pixels in every file: identical ones are rejected as duplicates (test_vetting). The
    # name's CRC modulo 1000 collides for some pairs of names: pass distinct ``offset``s for many files.
    offset = zlib.crc32(str(path).encode()) if offset is None else offset
    data = ((np.arange(np.prod(shape)).reshape(shape) + offset) % 1000).astype(np.uint16)
    fits.PrimaryHDU(data, header).writeto(path)
    return path


@pytest.mark.parametrize("value,expected", [
    ("Bias Frame", "bias"), ("BIAS", "bias"), ("zero", "bias"), ("Dark Frame", "dark"), ("DARK", "dark"),
    ("Flat Field", "flat"), ("FLAT", "flat"), ("SKYFLAT", "flat"), ("Light Frame", "science"),
    ("LIGHT", "science"), ("OBJECT", "science"), ("SCIENCE", "science"), ("light frame ", "science"),
])
def test_imagetyp_variants(maxim, value, expected):
    assert classify(fits.Header({"IMAGETYP": value}), "x.fits", maxim)[0] == expected


def test_filename_patterns_when_no_imagetyp(maxim):
    assert classify(fits.Header(), "Bias_BIN1_001.fits", maxim)[0] == "bias"
    assert classify(fits.Header(), "domeflat_z_001.fits.gz", maxim)[0] == "flat"
    assert classify(fits.Header(), "2024-01-01_SCIENCE_001.fits", maxim)[0] == "science"
    assert classify(fits.Header(), "mystery.fits", maxim)[0] == "unknown"


def test_bad_frames_rejected_with_reasons(tmp_path, maxim):
    good = [write_frame(tmp_path / f"sci_{i}.fits", date_obs=f"2025-06-02T04:1{i}:00") for i in range(3)]
    write_frame(tmp_path / "noexp.fits", exptime=None)
    write_frame(tmp_path / "nodate.fits", date_obs=None)
    write_frame(tmp_path / "what.fits", imagetyp="Tricolor")
    write_frame(tmp_path / "big.fits", shape=(40, 30))
    trunc = write_frame(tmp_path / "trunc.fits")
    trunc.write_bytes(trunc.read_bytes()[:3500])
    (tmp_path / "garbage.fits").write_bytes(b"this is not FITS at all" * 200)
    table = build_inventory(raw_files(tmp_path), maxim)
    reasons = {row["file"]: row["reason"] for row in table}
    assert sum(table["accepted"]) == len(good)
    assert "missing EXPTIME" in reasons["noexp.fits"]
    assert "missing DATE-OBS" in reasons["nodate.fits"]
    assert "unknown frame type" in reasons["what.fits"]
    assert "shape" in reasons["big.fits"]
    assert "truncated" in reasons["trunc.fits"]
    assert "unreadable" in reasons["garbage.fits"]
    assert set(table["target"][table["accepted"]]) == {"XO-1_b"}


def test_mid_exposure_time(tmp_path, maxim):
    write_frame(tmp_path / "a.fits", exptime=60.0, date_obs="2025-06-02T04:00:00")
    table = build_inventory(raw_files(tmp_path), maxim)
    # DATE-OBS is the start: mid-exposure is 30 s later.
    assert table["jd_mid_utc"][0] == pytest.approx(2460828.6666667 + 30 / 86400, abs=1e-7)


def test_discard_first_science(tmp_path, maxim):
    for i in range(4):
        write_frame(tmp_path / f"s{i}.fits", date_obs=f"2025-06-02T04:1{i}:00")
    table = build_inventory(raw_files(tmp_path), maxim, discard_n_first_science=2)
    assert list(table["accepted"]) == [False, False, True, True]
    assert list(table["reason"][:2]) == ["discard_n_first_science"] * 2


def test_dusk_dawn_from_the_sun_at_any_longitude():
    # 23:00 UTC is evening twilight in Chile but morning in Japan: a fixed UTC-hour rule gets one wrong.
    jd_2300_utc = 2461025.5 - 1 / 24  # 2025-12-15T23:00 UTC
    paranal = dict(latitude_deg=-24.63, longitude_deg=-70.40, altitude_m=2482)
    kiso = dict(latitude_deg=35.79, longitude_deg=137.63, altitude_m=1130)
    assert sun_sessions([jd_2300_utc], paranal)[0] == "dusk"
    assert sun_sessions([jd_2300_utc], kiso)[0] == "dawn"
    # Paranal morning twilight, ~09:00 UTC.
    assert sun_sessions([jd_2300_utc + 10 / 24], paranal)[0] == "dawn"


def test_empty_night_and_no_science_are_errors(tmp_path, maxim):
    with pytest.raises(BandersnakeError, match="no raw frames"):
        make_inventory([], maxim, tmp_path / "inv.ecsv", tmp_path / "lists", night="X_20250101")
    write_frame(tmp_path / "b.fits", imagetyp="Bias Frame")
    with pytest.raises(BandersnakeError, match="no usable science frame"):
        make_inventory(raw_files(tmp_path), maxim, tmp_path / "inv.ecsv", tmp_path / "lists", night="X_20250101")


@pytest.mark.realdata
def test_arcsat_night_classified():
    if not ARCSAT_RAW.is_dir():
        pytest.skip(f"real ARCSAT night not available at {ARCSAT_RAW}")
    inst = load_instrument(INSTRUMENTS, "ARCSAT")
    table = build_inventory(raw_files(ARCSAT_RAW), inst)
    assert len(table) == 96 and all(table["accepted"])
    counts = {t: int((table["type"] == t).sum()) for t in ("bias", "dark", "flat", "science")}
    assert counts == {"bias": 5, "dark": 5, "flat": 5, "science": 81}
    assert int((table["target"] == "XO1-b").sum()) == 80
    # Observed 03:21-06:08 UTC at APO (UTC-7 solar): all in the evening half of the night.
    assert set(table["session"]) == {"dusk"}


# ---------------------------------------------------------------- ASTEP layout (issue 5)
@pytest.fixture
def astep():
    return load_instrument(INSTRUMENTS, "ASTEP")


def test_astep_types_from_file_names_first(astep):
    # ASTEP: the file name decides, even against a header type (frame_type_source: filename).
    h = fits.Header({"ACQTYPE": "SCIENCE"})
    assert classify(h, "2025-04-03_07.13.54_DARK.fits", astep) == ("dark", "file name")
    assert classify(fits.Header(), "2025-04-03_21.51.10_SKYFLAT.fits", astep)[0] == "flat"
    assert classify(fits.Header(), "2025-04-03_07.09.24_BIAS.fits", astep)[0] == "bias"
    assert classify(fits.Header(), "2025-04-03_15.48.22_SCIENCE.fits", astep)[0] == "science"
    # No pattern matches: the header's ACQTYPE is the fallback.
    assert classify(h, "frame_0001.fits", astep)[0] == "science"
    # MaxIm-style instruments keep IMAGETYP first.
    maxim = load_instrument(INSTRUMENTS, "MAXIM")
    assert classify(fits.Header({"IMAGETYP": "Light Frame"}), "x_DARK.fits", maxim)[0] == "science"


def test_raw_files_of_several_folders(tmp_path):
    for sub, name in (("2025-04-03-CAMS", "a_SCIENCE.fits"), ("2025-04-03-CAMS_SKYFLAT", "b_SKYFLAT.fits"),
                      ("2025-04-03-CAMS_SKYFLAT", "c_DARK.fits.gz"), ("2025-04-03-CAMS", "notes.txt")):
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / name).write_bytes(b"")
    files = raw_files([tmp_path / "2025-04-03-CAMS", tmp_path / "2025-04-03-CAMS_SKYFLAT"])
    assert [f.split("/")[-1] for f in files] == ["a_SCIENCE.fits", "b_SKYFLAT.fits", "c_DARK.fits.gz"]


def test_exposure_groups_and_dark_plan():
    from astropy.table import Table

    from bandersnake.ingest.inventory import dark_plan, exposure_times, exptime_tag, list_files_exptime

    rows = ([("dark", 30.0, True)] * 3 + [("dark", 29.9995, True)] + [("dark", 10.0, True)] * 2
            + [("dark", 10.0, False)] * 5 + [("science", 30.0, True), ("science", 90.0, True), ("flat", 10.0, True)])
    table = Table(rows=[(f"f{i}.fits", t, e, a) for i, (t, e, a) in enumerate(rows)],
                  names=("path", "type", "exptime", "accepted"))
    # 29.9995 s and 30 s are one exposure (1 % tolerance); rejected darks do not count.
    assert exposure_times(table, "dark") == [10.0, 29.9995]
    assert len(list_files_exptime(table, "dark", 30.0)) == 4
    plan = dark_plan(table, [30.0, 90.0, 10.0], min_frames=3)
    # 30 s: matched; 90 s: no darks; 10 s: only 2 accepted darks (< 3) -> scaled fallback.
    assert plan == {30.0: 29.9995, 90.0: None, 10.0: None}
    assert [exptime_tag(t) for t in (30.0, 12.5, 0.001, 29.9995)] == ["30", "12.5", "0.001", "29.9995"]


def test_raw_fingerprint_follows_names_sizes_and_times(tmp_path):
    from bandersnake.ingest.inventory import raw_fingerprint

    frames = [tmp_path / f"f{i}.fits" for i in range(3)]
    for f in frames:
        f.write_bytes(b"x" * 2880)
    paths = [str(f) for f in frames]
    before = raw_fingerprint(paths)
    assert raw_fingerprint(list(paths)) == before  # deterministic: no re-run without a change
    assert raw_fingerprint(paths[:2]) != before  # a frame removed
    os.utime(frames[1], ns=(10**18, 10**18))
    touched = raw_fingerprint(paths)
    assert touched != before  # a frame replaced (new modification time)
    frames[1].write_bytes(b"y" * 5760)
    os.utime(frames[1], ns=(10**18, 10**18))
    assert raw_fingerprint(paths) != touched  # same time, different size
    assert raw_fingerprint(paths + [str(tmp_path / "missing.fits")]) != raw_fingerprint(paths)


def test_kept_records_reread_only_changed_files(maxim, tmp_path, monkeypatch):
    """A rerun reads only the files whose identity changed; the inventory is the same as a fresh one."""
    import bandersnake.ingest.inventory as inventory

    raw = tmp_path / "raw"
    raw.mkdir()
    paths = [str(write_frame(raw / f"sci_{i:02d}.fits", date_obs=f"2025-06-02T04:{10 + i:02d}:00", offset=7 * i))
             for i in range(6)]
    records = tmp_path / "inventory_records.json"
    read = []
    original = inventory._contained_record
    monkeypatch.setattr(inventory, "_contained_record", lambda p, *a: read.append(p) or original(p, *a))

    first = build_inventory(paths, maxim, records_path=records)
    assert len(read) == 6 and records.exists()
    read.clear()
    again = build_inventory(paths, maxim, records_path=records)
    assert read == []                                  # nothing changed: no file opened
    assert again.pformat(max_lines=-1, max_width=-1) == first.pformat(max_lines=-1, max_width=-1)

    # Replace one frame by a copy of another exposure's header and new pixels: only it is read,
    # and what it now holds (a later DATE-OBS) is what the inventory says.
    os.remove(paths[2])
    write_frame(paths[2], date_obs="2025-06-02T05:00:00", offset=500, OBSERVER="replaced")
    changed = build_inventory(paths, maxim, records_path=records)
    assert read == [paths[2]]
    row = changed[changed["path"] == paths[2]][0]
    assert row["date_obs"].startswith("2025-06-02T05:00")

    # Other settings (a keyword mapping changed): every file is read again.
    read.clear()
    other = dict(maxim, saturation_adu=12345.0)
    build_inventory(paths, other, records_path=records)
    assert sorted(read) == sorted(paths)

    # A damaged cache is rebuilt, never an error.
    records.write_text("{not json")
    read.clear()
    rebuilt = build_inventory(paths, other, records_path=records)
    assert sorted(read) == sorted(paths) and len(rebuilt) == 6


def test_worker_processes_give_the_same_inventory(maxim, tmp_path):
    """Files read by two forked workers: the same table, bad files contained in the workers too."""
    raw = tmp_path / "raw"
    raw.mkdir()
    paths = [str(write_frame(raw / f"sci_{i:02d}.fits", date_obs=f"2025-06-02T04:{i:02d}:00", offset=7 * i))
             for i in range(44)]
    (raw / "garbage.fits").write_bytes(b"not a FITS file at all" * 200)
    paths.append(str(raw / "garbage.fits"))
    serial = build_inventory(paths, maxim, workers=1)
    forked = build_inventory(paths, maxim, workers=2)
    assert forked.pformat(max_lines=-1, max_width=-1) == serial.pformat(max_lines=-1, max_width=-1)
    assert int(forked["accepted"].sum()) == 44 and "unreadable" in forked["reason"][forked["file"] == "garbage.fits"][0]
