"""Science calibration: masters, raw reading, SCI/ERR/MASK product, bad input."""

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).parent))
from _streaming_synth import synth_instrument, write_masters, write_raw_frames  # noqa: E402
from bandersnake.errors import CalibrationMissing, FrameError  # noqa: E402
from bandersnake.calibration.reduce import load_calibration, read_raw, reduce_frames, reduced_name  # noqa: E402

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


# ------------------------------------------------------------------------------------------
# Direct reader (uncompressed primary images) against astropy.

def _astropy_adu(path):
    return np.asarray(fits.getdata(path), np.float32)


@pytest.mark.parametrize("kind", ["uint16", "int16", "float32", "bscale", "gz", "blank"])
def test_fast_reader_equals_astropy(tmp_path, kind):
    # The kernel must see the same ADU whichever reader took the frame: exact equality.
    from bandersnake.photometry import kernel as K
    rng = np.random.default_rng(3)
    data = rng.integers(0, 65536, SHAPE)
    hdr = fits.Header({"EXPTIME": 30.0, "DATE-OBS": "2025-06-02T04:00:00"})
    name = "f.fits.gz" if kind == "gz" else "f.fits"
    if kind in ("uint16", "gz"):
        arr = data.astype(np.uint16)
    elif kind == "int16":
        arr = (data - 32768).astype(np.int16)
    elif kind == "float32":
        arr = data.astype(np.float32)
        arr[3, 4] = np.nan
    elif kind == "bscale":
        arr = (data // 4).astype(np.int16)
        hdr["BSCALE"], hdr["BZERO"] = 2.0, 10.0
    else:
        arr = (data - 32768).astype(np.int16)
        hdr["BLANK"] = -32768
    hdu = fits.PrimaryHDU(arr, hdr)
    if kind == "bscale":
        hdu.scale("int16", bscale=2.0, bzero=10.0)
    hdu.writeto(tmp_path / name)
    fr = read_raw(tmp_path / name, synth_instrument(SHAPE))
    expect = _astropy_adu(tmp_path / name)
    np.testing.assert_array_equal(fr.data, expect)
    direct = {"uint16": K.RAW_BE_U16, "int16": K.RAW_BE_I16}
    assert fr.code == direct.get(kind, K.RAW_NATIVE)
    # The kernel's per-pixel decoding gives the same values as the whole-frame decoding.
    from bandersnake.calibration.reduce import load_calibration
    m = {"bias": np.zeros(SHAPE, np.float32), "dark": np.zeros(SHAPE, np.float32),
         "flat": np.ones(SHAPE, np.float32)}
    for key, arr_ in m.items():
        fits.writeto(tmp_path / f"{key}.fits", arr_)
    cal = load_calibration({k: str(tmp_path / f"{k}.fits") for k in m}, synth_instrument(SHAPE, gain=1.0))
    from bandersnake.calibration.reduce import calibrate_frame
    sci, _, _ = calibrate_frame(fr, cal)
    np.testing.assert_array_equal(sci, expect)     # gain 1, no bias/dark, flat 1: sci == ADU


def test_fast_reader_truncated(setup, tmp_path):
    tmp, masters, m, raw = setup
    data = Path(raw[0]).read_bytes()
    cut = tmp_path / "half.fits"
    cut.write_bytes(data[: 2880 + 1000])
    with pytest.raises(FrameError, match="half.fits: unreadable FITS data .truncated"):
        read_raw(cut, synth_instrument(SHAPE))


def test_near_bad_matches_binary_dilation():
    from scipy import ndimage
    from bandersnake.calibration.reduce import near_bad
    rng = np.random.default_rng(5)
    for _ in range(100):
        bad = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.uniform(0, 0.3)
        grow = int(rng.integers(0, 4))
        ref = (ndimage.binary_dilation(bad, np.ones((3, 3), bool), iterations=grow) & ~bad
               if grow and bad.any() else np.zeros_like(bad))
        np.testing.assert_array_equal(near_bad(bad, grow), ref)


def test_masters_read_directly_equal_read_image(setup):
    from bandersnake.fitsio import read_image
    tmp, masters, m, raw = setup
    cal = load_calibration(masters, synth_instrument(SHAPE))
    bias, _ = read_image(masters["bias"])
    good = cal.static_mask & 1 == 0
    np.testing.assert_array_equal(cal.bias[good], bias[good])
    assert cal.bias.dtype == np.float32 and cal.bias.flags.c_contiguous


def test_byte_bad_pixel_map_read_directly(tmp_path):
    # A BITPIX 8 bad-pixel map takes the direct reader (no astropy data layer): same values.
    from bandersnake.fitsio import read_image
    from bandersnake.calibration.reduce import _read_master, _read_primary_fast

    bpm = np.zeros(SHAPE, np.uint8)
    bpm[3, 5] = 1
    bpm[10, 2] = 255
    fits.writeto(tmp_path / "bpm.fits", bpm)
    assert _read_primary_fast(tmp_path / "bpm.fits") is None        # not for science frames
    fast, _ = _read_master(tmp_path / "bpm.fits", expected_shape=SHAPE)
    ref, _ = read_image(tmp_path / "bpm.fits", dtype=np.float32)
    assert fast.dtype == np.float32
    np.testing.assert_array_equal(fast, ref)


def _header_file(path, cards, long_header=False):
    hdr = fits.Header()
    for key, value, comment in cards:
        hdr[key] = (value, comment)
    if long_header:          # several header blocks: the END card is not in the first one
        for k in range(120):
            hdr[f"PAD{k:05d}"] = (k * 0.5, "padding card")
    # Keywords are looked up in the header's bytes: a card's text off a card's start (here in a
    # commentary card) must not be taken, and a repeated keyword gives its first value (astropy's).
    hdr.insert(0, ("COMMENT", "EXPTIME = 99.0"))
    hdr.insert(1, ("", ""))      # blank card: the text above would parse as a value
    hdr.append(("NCOMB", 8, "repeated keyword"))
    fits.PrimaryHDU(np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint16).reshape(SHAPE), hdr).writeto(path)
    return path


@pytest.mark.parametrize("long_header", [False, True])
def test_fast_header_values_equal_astropy(tmp_path, long_header):
    # FastHeader replaces astropy's header on the hot path: every value it gives (directly or
    # through its fallback to the full header) must be astropy's, exactly.
    from bandersnake.calibration.reduce import FastHeader, _read_primary_fast
    long_text = "a long string value " * 6                      # continued on CONTINUE cards
    cards = [("EXPTIME", 30.0, "s"), ("DATE-OBS", "2025-06-02T04:00:00.125", "start"),
             ("OBJECT", "O'Brien  ", "quote inside, trailing blanks"), ("RA", "16 02 11.83", ""),
             ("DEC", "+28 10 10.7", ""), ("AIRMASS", 1.25, ""), ("NCOMB", 7, ""), ("FLAG", True, ""),
             ("OFF", False, ""), ("SMALL", 1.5e-300, ""), ("BIGINT", 12345678901, ""),
             ("LONGSTR", long_text, "continued"), ("EMPTY", "", "empty string"),
             ("HIERARCH ESO DET GAIN", 1.7, "hierarch")]
    path = _header_file(tmp_path / "h.fits", cards, long_header)
    raw, code, fast, buf = _read_primary_fast(path)
    assert isinstance(fast, FastHeader)
    ref = fits.getheader(path)
    for key in list(ref.keys()) + ["ESO DET GAIN", "exptime", "MISSING"]:
        if key in ("", "COMMENT", "HISTORY"):
            continue
        assert fast.get(key) == ref.get(key) and type(fast.get(key)) is type(ref.get(key)), key
        assert (key in fast) == (key in ref), key
    assert fast["LONGSTR"] == long_text.rstrip() and fast["OBJECT"] == "O'Brien"
    with pytest.raises(KeyError):
        fast["MISSING"]
    np.testing.assert_array_equal(raw.byteswap() ^ np.uint16(0x8000), fits.getdata(path))


def test_fast_header_short_hierarch_keyword_goes_to_astropy():
    # A HIERARCH card with a short keyword ("HIERARCH GAIN = 1.7") is found by astropy as GAIN:
    # the byte lookup misses it and must ask astropy rather than say it is missing.
    from bandersnake.calibration.reduce import FastHeader
    cards = ["SIMPLE  =                    T", "HIERARCH GAIN = 1.7", "HIERARCH ESO DET = 'x'",
             "EXPTIME =                 30.0", "END"]
    blob = "".join(c.ljust(80) for c in cards).ljust(2880).encode("ascii")
    ref = fits.Header.fromstring(blob.decode("ascii"))
    fast = FastHeader(blob)
    for key in ("GAIN", "ESO DET", "EXPTIME", "MISSING", "SIMPLE"):
        assert fast.get(key) == ref.get(key) and (key in fast) == (key in ref), key
    assert fast.get("GAIN") == 1.7


@pytest.mark.filterwarnings("ignore::erfa.ErfaWarning")     # dates past the leap-second table
def test_fast_jd_equals_astropy_time():
    # The ISO DATE-OBS fast path (ERFA dtf2d) against timing.jd_mid_utc (astropy Time) over
    # many dates, a leap-second day included: equal within one ulp of a JD (4.7e-10 d = 40 us,
    # the resolution of a float64 JD; in practice they are identical).
    from bandersnake.ingest import timing
    from bandersnake.calibration.reduce import _jd_mid_utc
    rng = np.random.default_rng(11)
    inst = synth_instrument(SHAPE)
    dates = ["2016-12-31T23:59:60.500", "2025-06-02T04:00:00", "2025-06-02T04:00:00.",
             "1999-01-01T00:00:00.000001"]
    for _ in range(300):
        dates.append(f"{rng.integers(1990, 2040)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}T"
                     f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:{rng.uniform(0, 60):09.6f}")
    for date in dates:
        for mid in ("start", "mid"):
            ins = dict(inst, date_obs_is=mid)
            hdr = {"DATE-OBS": date}
            assert abs(_jd_mid_utc(hdr, ins, 30.0) - timing.jd_mid_utc(hdr, ins, 30.0)) <= 4.7e-10, date
    # Other forms go to astropy: a date without time plus TIME-OBS.
    hdr = fits.Header({"DATE-OBS": "2025-06-02", "TIME-OBS": "04:00:00"})
    assert _jd_mid_utc(hdr, inst, 30.0) == timing.jd_mid_utc(hdr, inst, 30.0)


def test_read_raw_recycles_buffers(setup, tmp_path):
    # Frames read into a pool's buffers: same pixels as without, and a released buffer is
    # reused (no fresh memory per frame). A trimmed frame is a copy: its buffer goes back at once.
    from bandersnake.calibration.reduce import BufferPool
    tmp, masters, m, raw = setup
    inst = synth_instrument(SHAPE)
    pool = BufferPool()
    a = read_raw(raw[0], inst, SHAPE, pool)
    np.testing.assert_array_equal(a.data, read_raw(raw[0], inst, SHAPE).data)
    base = a._buffer[1]
    a.release()
    assert a.raw is None and a._buffer is None
    b = read_raw(raw[1], inst, SHAPE, pool)
    assert b._buffer[1] is base
    np.testing.assert_array_equal(b.data, read_raw(raw[1], inst, SHAPE).data)
    trimmed = dict(inst, trim_section="[1:40, 1:30]")
    c = read_raw(raw[0], trimmed, None, pool)
    assert c._buffer is None and c.raw.shape == (30, 40) and len(pool._free) == 1
    np.testing.assert_array_equal(c.data, fits.getdata(raw[0])[:30, :40])
    cut = tmp_path / "cut.fits"
    cut.write_bytes(Path(raw[0]).read_bytes()[: 2880 + 100])
    spare = pool._free[0]
    with pytest.raises(FrameError, match="cut.fits: unreadable FITS data .truncated"):
        read_raw(cut, inst, SHAPE, pool)
    assert len(pool._free) == 1 and pool._free[0] is spare     # the failed read's buffer went back


def test_prefetch_in_order_errors_and_the_caller_reading_when_workers_lag():
    # prefetch yields fn(item) in item order whoever computed it; an exception is raised at its
    # item; closing early stops the workers; and an item no worker has started is computed by
    # the calling thread (a reader thread on a slow core must not make a night slower).
    import threading
    import time

    from bandersnake.calibration.reduce import prefetch

    main = threading.get_ident()
    computed_by = {}

    def fn(x):
        if threading.get_ident() != main:
            time.sleep(0.02)          # a worker on a slow core
        computed_by[x] = threading.get_ident()
        if x == 7:
            raise ValueError("item 7")
        return x * x

    for workers in (0, 1, 2):
        computed_by.clear()
        assert list(prefetch(fn, range(7), workers=workers, depth=3)) == [x * x for x in range(7)]
        if workers:
            assert sum(t == main for t in computed_by.values()) >= 3, computed_by
        with pytest.raises(ValueError, match="item 7"):
            list(prefetch(fn, range(10), workers=workers))
        before = threading.active_count()
        gen = prefetch(fn, range(40), workers=workers, depth=4)
        assert [next(gen), next(gen)] == [0, 1]
        gen.close()
        assert threading.active_count() <= before
