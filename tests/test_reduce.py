"""Science calibration: masters, raw reading, SCI/ERR/MASK product, bad input."""

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).parent))
from _streaming_synth import synth_instrument, write_masters, write_raw_frames  # noqa: E402
from bandersnake.errors import CalibrationMissing, FrameError  # noqa: E402
from bandersnake.reduce import load_calibration, read_raw, reduce_frames, reduced_name  # noqa: E402

SHAPE = (64, 80)


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(7)
    masters, m = write_masters(tmp_path / "calib", SHAPE, rng, bad=[(10, 12)])
    raw, _ = write_raw_frames(tmp_path / "raw", m, [[40.0, 30.0]], [1e7], [(0, 0), (0, 0)], rng)
    return tmp_path, masters, m, raw


def test_reduce_frames_product(setup):
    tmp, masters, m, raw = setup
    inst = synth_instrument(SHAPE)
    report = reduce_frames(raw + [str(tmp / "missing.fits")], masters, inst, tmp / "red", threads=1)
    assert [r["reduced"] is not None for r in report] == [True, True, False]
    assert report[2]["reason"] == "file not found"
    with fits.open(report[0]["reduced"]) as h:
        assert [x.name for x in h] == ["PRIMARY", "SCI", "ERR", "MASK"]
        assert h["SCI"].data.dtype.kind == "f" and h["SCI"].data.dtype.itemsize == 4
        assert h["SCI"].header["BUNIT"] == "electron" and h[0].header["RDNOISE"] == 8.0
        assert h[0].header["RAWPATH"] == raw[0] and h[0].header["EXPTIME"] == 30.0
        sci, msk = h["SCI"].data.astype(float), h["MASK"].data
        raw_adu = fits.getdata(raw[0]).astype(float)
    ref = ((raw_adu - m["bias"]) * 2.0 - m["dark"] * 30.0 * 2.0) / m["flat"]
    good = m["bpm"] == 0
    np.testing.assert_allclose(sci[good], ref[good], rtol=2e-7, atol=1e-3)   # float32 storage
    assert msk[12, 10] & 1 and msk[11, 11] & 8
    assert msk[30, 40] & 4          # the 1e7 e- star saturates
    assert reduced_name("/a/b/XO1-b_z_1.fits.gz") == "XO1-b_z_1.fits"


def test_read_raw_errors(setup, tmp_path):
    tmp, masters, m, raw = setup
    inst = synth_instrument(SHAPE)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(Path(raw[0]).read_bytes()[:4000])
    with pytest.raises(FrameError, match="cut.fits: unreadable"):
        read_raw(cut, inst)
    with pytest.raises(FrameError, match="shape"):
        read_raw(raw[0], dict(inst, shape=[10, 10]))
    hdr = fits.getheader(raw[0])
    del hdr["EXPTIME"]
    fits.writeto(tmp_path / "noexp.fits", fits.getdata(raw[0]), hdr)
    with pytest.raises(FrameError, match="exposure time"):
        read_raw(tmp_path / "noexp.fits", inst)
    nan = tmp_path / "nan.fits"
    fits.writeto(nan, np.full(SHAPE, np.nan, np.float32), fits.getheader(raw[0]))
    with pytest.raises(FrameError, match="no finite pixel"):
        read_raw(nan, inst)


def test_calibration_masters(setup):
    tmp, masters, m, raw = setup
    inst = synth_instrument(SHAPE)
    cal = load_calibration(dict(masters, dark=None, bpm=None), inst)
    assert cal.read_noise == 8.0 and (cal.dark == 0).all() and not cal.static_mask.any()
    with pytest.raises(CalibrationMissing):
        load_calibration({"bias": masters["bias"]}, inst)
    flat = fits.getdata(masters["flat"])
    flat[5, 5] = 0.0
    fits.writeto(masters["flat"], flat, overwrite=True)
    cal = load_calibration(masters, inst)
    assert cal.static_mask[5, 5] & 1 and cal.flat[5, 5] == 1.0


def test_overscan_and_trim(tmp_path):
    rng = np.random.default_rng(1)
    masters, m = write_masters(tmp_path / "calib", (40, 50), rng)
    data = np.full((40, 60), 500.0, np.float32)
    data[:, 50:] = 120.0            # overscan strip
    fits.writeto(tmp_path / "r.fits", data, fits.Header({"EXPTIME": 1.0, "DATE-OBS": "2025-01-01T00:00:00"}))
    inst = dict(synth_instrument((40, 60)), overscan_section="[52:60,1:40]", trim_section="[1:50,1:40]")
    fr = read_raw(tmp_path / "r.fits", inst, expected_shape=(40, 50))
    assert fr.offset == 120.0 and fr.data.shape == (40, 50)
