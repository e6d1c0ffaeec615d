"""Master calibrations against known truth, fallback chain, overscan, real ARCSAT/SAAO frames."""

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from bandersnake.calibration.masters import (
    Fallback,
    build_bad_pixel_map,
    build_master_bias,
    build_master_dark,
    build_master_dark_matched,
    build_master_flat,
    calibrated_shape,
    earlier_night_masters,
    illuminated_mask,
    local_flat,
    master_flat_from_yaml,
    overscan_and_trim,
    parse_section,
    read_noise_from_pairs,
)
from bandersnake.errors import CalibrationMissing, ConfigError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ARCSAT = SHARED / "xo1b_arcsat_20250602" / "raw"
SAAO = SHARED / "astrometry_and_misc" / "saao_1m_a8280271_raw_with_overscan.fits"

GAIN = 2.0          # e-/ADU of the synthetic camera
RN_E = 12.0         # read noise (e-)
SHAPE = (96, 128)   # (ny, nx)


def _instrument(**over):
    inst = {"name": "TEST", "gain_e_per_adu": GAIN, "read_noise_e": RN_E, "saturation_adu": 65000,
            "shape": list(SHAPE), "image_extension": 0, "keywords": {"exptime": "EXPTIME"},
            "overscan_section": None, "trim_section": None}
    inst.update(over)
    return inst


class Camera:
    """Synthetic camera with known bias, dark rate, flat and bad pixels (all (ny, nx))."""

    def __init__(self, seed=0, shape=SHAPE):
        rng = np.random.default_rng(seed)
        self.rng = rng
        ny, nx = shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        self.bias = (1000.0 + 0.05 * xx + rng.normal(0, 3.0, nx)[None, :]).astype(np.float32)   # ADU
        self.dark = np.full(shape, 0.2, np.float32)                                          # ADU/s
        hot = rng.choice(ny * nx, 60, replace=False)
        self.hot = np.zeros(shape, bool)
        self.hot.flat[hot] = True
        self.dark.flat[hot] = rng.uniform(2.0, 40.0, hot.size)
        r2 = ((yy - ny / 2) ** 2 + (xx - nx / 2) ** 2) / (0.6 * nx) ** 2
        self.flat = ((1.0 - 0.25 * r2) * rng.normal(1.0, 0.01, shape)).astype(np.float32)
        dead = rng.choice(ny * nx, 40, replace=False)
        self.dead = np.zeros(shape, bool)
        self.dead.flat[dead] = True
        self.flat.flat[dead] *= rng.uniform(0.0, 0.5, dead.size)

    def frame(self, exptime=0.0, level_e=0.0, stars=0):
        """Raw uint16 frame: Poisson(flat * level + dark * t) + read noise, quantised (ADU)."""
        electrons = self.flat * level_e + self.dark * GAIN * exptime
        signal = self.rng.poisson(np.maximum(electrons, 0)).astype(np.float64)
        for _ in range(stars):
            y, x = self.rng.integers(5, SHAPE[0] - 5), self.rng.integers(5, SHAPE[1] - 5)
            signal[y - 2:y + 3, x - 2:x + 3] += 0.3 * level_e
        adu = self.bias + signal / GAIN + self.rng.normal(0, RN_E / GAIN, SHAPE)
        return np.clip(np.round(adu), 0, 65535).astype(np.uint16)


def _write(path, data, **header):
    hdu = fits.PrimaryHDU(data)
    for k, v in header.items():
        hdu.header[k] = v
    hdu.writeto(path)
    return str(path)


def _night(tmp_path, cam, nbias=5, ndark=5, tdark=60.0, dusk=(), dawn=()):
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    out = {"bias": [], "dark": [], "dusk": [], "dawn": []}
    for i in range(nbias):
        out["bias"].append(_write(raw / f"bias_{i}.fits", cam.frame(), EXPTIME=0.0))
    for i in range(ndark):
        out["dark"].append(_write(raw / f"dark_{i}.fits", cam.frame(tdark), EXPTIME=tdark))
    for session, levels in (("dusk", dusk), ("dawn", dawn)):
        for i, (level, t, stars) in enumerate(levels):
            out[session].append(_write(raw / f"flat_{session}_{i}.fits", cam.frame(t, level, stars), EXPTIME=t))
    return out


def _truncated(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return str(path)


# --------------------------------------------------------------------------------------------
# sections and overscan
# --------------------------------------------------------------------------------------------
def test_parse_section():
    assert parse_section("[17:528,1:520]") == (slice(0, 520), slice(16, 528))
    assert parse_section("[   4:  13,   1: 520]") == (slice(0, 520), slice(3, 13))
    for bad in ("[0:10,1:5]", "[5:4,1:5]", "17:528,1:520", "[1:2]"):
        with pytest.raises(ConfigError):
            parse_section(bad)


def test_overscan_synthetic_offsets():
    data = np.full((20, 30), 100.0, np.float32)
    data[:, 25:] = 40.0                       # overscan columns 26..30 (1-based)
    data[10:, 25:] = 44.0                     # the second half of the rows has a higher overscan
    inst = _instrument(overscan_section="[26:30,1:20]", trim_section="[1:25,1:20]")
    const = overscan_and_trim(data, inst)
    assert const.shape == (20, 25) and const.dtype == np.float32
    np.testing.assert_allclose(const, 58.0)   # mean of per-row medians = 42
    line = overscan_and_trim(data, inst, model="line")
    np.testing.assert_allclose(line[:10], 60.0)
    np.testing.assert_allclose(line[10:], 56.0)
    with pytest.raises(ConfigError, match="beyond"):
        overscan_and_trim(data, _instrument(trim_section="[1:40,1:20]"))


def test_overscan_and_trim_real_saao_vs_ccdproc():
    if not SAAO.is_file():
        pytest.skip(f"real SAAO frame not available at {SAAO}")
    ccdproc = pytest.importorskip("ccdproc")
    from astropy.modeling.models import Const1D
    from astropy.nddata import CCDData

    raw = fits.getdata(SAAO)
    header = fits.getheader(SAAO)
    inst = _instrument(overscan_section=header["BIASSEC"], trim_section=header["TRIMSEC"], shape=list(raw.shape))
    ccd = CCDData(raw.astype(np.float64), unit="adu")
    for model, ccd_model in (("constant", Const1D()), ("line", None)):
        ref = ccdproc.trim_image(ccdproc.subtract_overscan(ccd, fits_section=header["BIASSEC"], median=True,
                                                           overscan_axis=None, model=ccd_model),
                                 fits_section=header["TRIMSEC"])
        ours = overscan_and_trim(raw, inst, model=model)
        assert ours.shape == (520, 512)
        # Same medians in float64; ours is rounded to float32 at ~300 ADU: 1e-6 relative
        # (3e-4 ADU) bounds the rounding, far below the 5 ADU read noise.
        np.testing.assert_allclose(ours, ref.data, rtol=1e-6, atol=1e-4)
    assert calibrated_shape(inst) == (520, 512)


# --------------------------------------------------------------------------------------------
# bias, dark, flat, bad pixels vs truth
# --------------------------------------------------------------------------------------------
def test_master_bias_truth_and_bad_frames(tmp_path, caplog):
    cam = Camera(1)
    night = _night(tmp_path, cam, nbias=9, ndark=0)
    paths = night["bias"]
    paths.insert(2, _truncated(_write(tmp_path / "raw" / "corrupt.fits", cam.frame())))
    paths.insert(4, _write(tmp_path / "raw" / "small.fits", np.zeros((10, 10), np.uint16)))
    out = tmp_path / "calib" / "master_bias.fits"
    with caplog.at_level(logging.WARNING):
        res = build_master_bias(paths, out, _instrument(), clip=5, nlimit=0, min_frames=3)
    assert res["ncombine"] == 9 and len(res["skipped"]) == 2
    assert "corrupt.fits" in caplog.text and "small.fits" in caplog.text
    data, header = fits.getdata(out), fits.getheader(out)
    assert data.dtype == np.dtype(">f4") and header["BUNIT"] == "adu" and header["NCOMBINE"] == 9
    assert header["FALLBACK"] == "none" and header["CALTYPE"] == "BIAS"
    assert sum("input:" in h for h in header["HISTORY"]) == 9
    # Residual vs truth: a mean of 9 frames with 6 ADU read noise -> 2 ADU rms (+0.29 quantisation);
    # 2.5 ADU allows for the slight clipping inefficiency.
    assert np.std(data - cam.bias) < 2.5
    assert abs(np.mean(data - cam.bias)) < 0.1
    # Read noise: 8 pairs of 12k pixels measure sigma to ~0.3 %; the 5 % requirement is loose.
    assert header["RDNOISE"] == pytest.approx(RN_E, rel=0.05)
    assert res["rdnoise_adu"] == pytest.approx(RN_E / GAIN, rel=0.05)


def test_read_noise_from_pairs_ignores_fixed_pattern():
    rng = np.random.default_rng(4)
    pattern = rng.normal(0, 20, (200, 200))
    frames = [pattern + rng.normal(0, 5.0, pattern.shape) for _ in range(4)]
    frames[1][50, 50] += 1e4                                  # a cosmic ray
    # 3 pairs x 40k pixels: sigma known to ~0.3 %; 2 % tolerance.
    assert read_noise_from_pairs(frames) == pytest.approx(5.0, rel=0.02)
    assert np.isnan(read_noise_from_pairs(frames[:1]))


def test_master_dark_truth_and_exposure_matching(tmp_path):
    cam = Camera(2)
    night = _night(tmp_path, cam, nbias=9, ndark=7, tdark=100.0)
    inst = _instrument()
    calib = tmp_path / "calib"
    build_master_bias(night["bias"], calib / "master_bias.fits", inst)
    res = build_master_dark(night["dark"], calib / "master_bias.fits", calib / "master_dark.fits", inst,
                            clip=5, nlimit=0)
    dark, header = fits.getdata(calib / "master_dark.fits"), fits.getheader(calib / "master_dark.fits")
    assert header["BUNIT"] == "adu / s" and header["CALTYPE"] == "DARK"
    # DARKCUR truth: 0.2 ADU/s * 2 e-/ADU = 0.4 e-/s. Measured scatter of the central median
    # over seeds: ~0.0012 ADU/s (per pixel ~0.05 ADU/s, 3k central pixels); 5 % is 8 sigma.
    assert header["DARKCUR"] == pytest.approx(0.4, rel=0.05)
    assert res["darkcur_e"] == header["DARKCUR"]
    # Hot pixels recovered to 2 % of their rate (2..40 ADU/s, noise 0.03 ADU/s + Poisson).
    np.testing.assert_allclose(dark[cam.hot], cam.dark[cam.hot], rtol=0.02, atol=0.1)

    # Exposure-matched: 3 frames of 30 s among the 100 s ones; only they are used.
    extra = [_write(tmp_path / "raw" / f"dark30_{i}.fits", cam.frame(30.0), EXPTIME=30.0) for i in range(3)]
    res30 = build_master_dark_matched(night["dark"] + extra, calib / "master_bias.fits",
                                      calib / "master_dark_30s.fits", 30, inst, min_frames=3)
    h30 = fits.getheader(calib / "master_dark_30s.fits")
    assert res30["ncombine"] == 3 and h30["DARKEXP"] == 30.0
    assert len(res30["skipped"]) == 7 and "does not match" in res30["skipped"][0][1]
    # 3 frames of 30 s: per pixel ~0.15 ADU/s, the central median ~0.004 ADU/s = 0.008 e-/s.
    assert h30["DARKCUR"] == pytest.approx(0.4, abs=0.03)


def test_master_flat_truth_sessions_and_levels(tmp_path, caplog):
    cam = Camera(3)
    # Levels in e- (gain 2): dusk 40k/30k/20k/24k e-, one saturating (130k e- = 65k ADU) and one
    # too faint (2k e- = 1k ADU); dawn 20k..36k e-. Stars in half of them.
    dusk = [(40000, 5, 3), (30000, 8, 0), (20000, 12, 3), (24000, 10, 0), (130000, 3, 0), (2000, 20, 0)]
    dawn = [(20000, 10, 2), (26000, 8, 0), (36000, 6, 2), (30000, 7, 1)]
    night = _night(tmp_path, cam, nbias=9, ndark=5, tdark=30.0, dusk=dusk, dawn=dawn)
    inst = _instrument()
    calib = tmp_path / "calib"
    build_master_bias(night["bias"], calib / "master_bias.fits", inst)
    build_master_dark(night["dark"], calib / "master_bias.fits", calib / "master_dark.fits", inst)
    with caplog.at_level(logging.WARNING):
        res = build_master_flat(night["dusk"], night["dawn"], calib / "master_bias.fits",
                                calib / "master_dark.fits", calib / "master_flat_V.fits", "V", inst,
                                clip=3, nlimit=0, min_level=3000, max_level=50000)
    assert res["sessions"] == {"dusk": 4, "dawn": 4}
    assert "outside [3000, 50000]" in caplog.text and len(res["skipped"]) == 2
    flat, header = fits.getdata(calib / "master_flat_V.fits"), fits.getheader(calib / "master_flat_V.fits")
    assert header["FILTER"] == "V" and header["CALTYPE"] == "FLAT" and header["NCOMBINE"] == 8
    illum = illuminated_mask(flat)
    assert np.median(flat[illum]) == pytest.approx(1.0, abs=1e-6)
    truth = cam.flat / np.median(cam.flat[illuminated_mask(cam.flat)])
    good = illum & ~cam.dead
    ratio = flat[good] / truth[good]
    # Photon noise: 8 flats of >= 10k ADU x 2 e-/ADU -> <= 0.35 % per pixel; stars are
    # clipped. The requirement is 0.5 % rms.
    assert np.std(ratio) < 0.005
    assert abs(np.median(ratio) - 1) < 0.002


def test_one_session_alone_and_pooled_sessions(tmp_path):
    cam = Camera(5)
    night = _night(tmp_path, cam, nbias=5, ndark=3, dusk=[(30000, 5, 0)] * 2, dawn=[(25000, 5, 0)] * 2)
    inst = _instrument()
    calib = tmp_path / "calib"
    build_master_bias(night["bias"], calib / "master_bias.fits", inst)
    # No dark given; 2 + 2 flats, min 3: pooled into one combine.
    res = build_master_flat(night["dusk"], night["dawn"], calib / "master_bias.fits", None,
                            calib / "master_flat_R.fits", "R", inst, min_frames=3)
    assert res["sessions"] == {"dusk+dawn": 4}
    res = build_master_flat(night["dusk"] + night["dawn"], [], calib / "master_bias.fits", None,
                            calib / "master_flat_R.fits", "R", inst, min_frames=3)
    assert res["sessions"] == {"dusk": 4}


def test_bad_pixel_map_recall_precision(tmp_path):
    cam = Camera(6)
    dark = cam.dark + np.random.default_rng(1).normal(0, 0.03, SHAPE).astype(np.float32)
    flat = cam.flat * np.random.default_rng(2).normal(1, 0.003, SHAPE).astype(np.float32)
    _write(tmp_path / "dark.fits", dark)
    _write(tmp_path / "flat.fits", flat)
    res = build_bad_pixel_map(tmp_path / "dark.fits", [tmp_path / "flat.fits"], tmp_path / "bpm.fits",
                              hot_sigma=8, low_threshold=0.7)
    bpm = fits.getdata(tmp_path / "bpm.fits")
    assert bpm.dtype == np.uint8
    for bit, truth in ((1, cam.hot), (2, cam.flat < 0.7 * local_flat(cam.flat))):
        found = (bpm & bit) > 0
        recall = (found & truth).sum() / truth.sum()
        precision = (found & truth).sum() / max(found.sum(), 1)
        # Injected defects are far from the thresholds (hot >= 2 ADU/s above 0.2 vs 8 x 0.03 noise; dead
        # <= 0.5 vs 0.7 cut), so recall and precision should be essentially perfect.
        assert recall >= 0.95 and precision >= 0.99, (bit, recall, precision)
    assert res["n_hot"] == cam.hot.sum()
    with pytest.raises(CalibrationMissing):
        build_bad_pixel_map(None, [], tmp_path / "none.fits")


def test_local_flat_follows_vignetting():
    yy, xx = np.mgrid[0:200, 0:300]
    flat = (1 - 0.3 * ((xx - 150) ** 2 + (yy - 100) ** 2) / 150 ** 2).astype(np.float32)
    flat[50, 60] = 0.0
    # A smooth quadratic is reproduced by bilinear interpolation of 16 px tile medians to
    # f'' h^2 / 8 per axis (f'' = 2.7e-5 /px^2, h = 16 px): 2 x 8.5e-4, plus ~3e-4 of tile-median
    # bias; the outer 8 px hold the edge tile value. The lone dead pixel does not pull its tile.
    local = local_flat(flat, 16)
    smooth = flat.copy()
    smooth[50, 60] = 1 - 0.3 * (90 ** 2 + 50 ** 2) / 150 ** 2
    np.testing.assert_allclose(local[8:-8, 8:-8], smooth[8:-8, 8:-8], atol=2.5e-3)


# --------------------------------------------------------------------------------------------
# fallback chain
# --------------------------------------------------------------------------------------------
def _master(path, value, fallback="none", **extra):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    hdu = fits.PrimaryHDU(np.full(SHAPE, value, np.float32))
    hdu.header["FALLBACK"] = fallback
    for k, v in extra.items():
        hdu.header[k] = v
    hdu.writeto(path)
    return str(path)


def test_fallback_earlier_night_then_backup_then_error(tmp_path, caplog):
    cam = Camera(7)
    night = _night(tmp_path, cam, nbias=1, ndark=0)          # one bias frame: too few
    work = tmp_path / "work"
    _master(work / "TEST_20250101" / "calib" / "master_bias.fits", 11.0, RDNOISE=9.0)   # 9 days before
    _master(work / "TEST_20250108" / "calib" / "master_bias.fits", 12.0, fallback="earlier_night X")
    _master(work / "TEST_20241101" / "calib" / "master_bias.fits", 13.0)   # beyond 30 days
    _master(work / "TEST_20250111" / "calib" / "master_bias.fits", 14.0)   # later night
    _master(work / "OTHER_20250109" / "calib" / "master_bias.fits", 15.0)  # other instrument
    fb = Fallback(night="TEST_20250110", search_roots=(work, tmp_path / "missing"), max_days=30)
    assert [n for n, _ in earlier_night_masters(fb, "master_bias.fits")] == ["TEST_20250108", "TEST_20250101"]
    out = tmp_path / "calib" / "master_bias.fits"
    with caplog.at_level(logging.INFO):
        res = build_master_bias(night["bias"], out, _instrument(), min_frames=3, fallback=fb)
    assert res["fallback"] == "earlier_night TEST_20250101" and res["rdnoise_e"] == 9.0
    assert "itself a fallback" in caplog.text
    assert fits.getheader(out)["FALLBACK"] == "earlier_night TEST_20250101"
    assert float(fits.getdata(out)[0, 0]) == 11.0

    # (c) backup path when no earlier night qualifies.
    backup = _master(tmp_path / "lib" / "bias.fits", 21.0)
    fb2 = Fallback(night="TEST_20250110", search_roots=(work,), max_days=5, backup_bias=backup)
    res = build_master_bias(night["bias"], out, _instrument(), min_frames=3, fallback=fb2)
    assert res["fallback"] == f"backup {backup}"
    assert fits.getheader(out)["FALLBACK"].startswith("backup ")

    # Nothing: the message says what to supply.
    fb3 = Fallback(night="TEST_20250110", search_roots=(work,), max_days=5)
    with pytest.raises(CalibrationMissing) as err:
        build_master_bias(night["bias"], out, _instrument(), min_frames=3, fallback=fb3)
    msg = str(err.value)
    assert "1 usable bias frame(s) of 1 given" in msg and "min_bias_frames=3" in msg
    assert "at least 3 readable bias frames" in msg and "backup_master_bias" in msg
    assert "fallback_max_days=5" in msg


def test_dark_fallback_wrong_shape_backup_rejected(tmp_path):
    cam = Camera(8)
    night = _night(tmp_path, cam, nbias=3, ndark=1)
    inst = _instrument()
    build_master_bias(night["bias"], tmp_path / "calib" / "master_bias.fits", inst)
    bad = tmp_path / "lib" / "dark.fits"
    bad.parent.mkdir()
    fits.PrimaryHDU(np.zeros((5, 5), np.float32)).writeto(bad)
    fb = Fallback(night="TEST_20250110", backup_dark=str(bad))
    with pytest.raises(CalibrationMissing, match="backup_master_dark=.*unusable"):
        build_master_dark(night["dark"], tmp_path / "calib" / "master_bias.fits",
                          tmp_path / "calib" / "master_dark.fits", inst, fallback=fb)


def test_flat_fallback_master_flats_yaml_and_force(tmp_path):
    cam = Camera(9)
    night = _night(tmp_path, cam, nbias=3, ndark=0, dusk=[(30000, 5, 0)] * 3)
    inst = _instrument()
    calib = tmp_path / "calib"
    build_master_bias(night["bias"], calib / "master_bias.fits", inst)
    lib = tmp_path / "lib"
    old = _master(lib / "flat_2024.fits", 0.9)
    new = _master(lib / "flat_2025.fits", 1.1)
    future = _master(lib / "flat_2026.fits", 1.3)
    mf = lib / "master_flats.yaml"
    mf.write_text(yaml.safe_dump({"filters": {"V": [
        {"start_date": "20240101", "path": old}, {"start_date": 20250101, "path": "flat_2025.fits"},
        {"start_date": "20260101", "path": future}]}}))
    assert master_flat_from_yaml(mf, "V", "20250601") == lib / "flat_2025.fits"   # relative to the YAML
    assert master_flat_from_yaml(mf, "V", "20241231") == Path(old)
    assert master_flat_from_yaml(mf, "V", "20231231") is None
    assert master_flat_from_yaml(mf, "B", "20250601") is None
    out = calib / "master_flat_V.fits"

    # Too few flats (1 accepted): no earlier night, so master_flats.yaml by date.
    fb = Fallback(night="TEST_20250601", search_roots=(tmp_path / "work",), master_flats_file=str(mf))
    res = build_master_flat(night["dusk"][:1], [], calib / "master_bias.fits", None, out, "V", inst,
                            min_frames=3, fallback=fb)
    assert res["fallback"].startswith("master_flats.yaml") and "flat_2025" in res["fallback"]
    assert float(fits.getdata(out)[0, 0]) == pytest.approx(1.1)
    assert fits.getheader(out)["FILTER"] == "V"

    # force_backup_flats: enough flats, the dated library flat is used anyway.
    fb_force = Fallback(night="TEST_20250601", master_flats_file=str(mf), force_backup_flats=True)
    res = build_master_flat(night["dusk"], [], calib / "master_bias.fits", None, out, "V", inst, fallback=fb_force)
    assert "flat_2025" in res["fallback"]

    # backup_master_flats when the YAML has nothing for the filter; then the error.
    backup = _master(lib / "flat_B.fits", 1.05)
    fb_b = Fallback(night="TEST_20250601", backup_flats={"B": backup}, master_flats_file=str(mf))
    res = build_master_flat([], [], calib / "master_bias.fits", None, calib / "master_flat_B.fits", "B", inst,
                            fallback=fb_b)
    assert res["fallback"] == f"backup {backup}"
    with pytest.raises(CalibrationMissing) as err:
        build_master_flat([], [], calib / "master_bias.fits", None, calib / "master_flat_I.fits", "I", inst,
                          fallback=fb_b)
    msg = str(err.value)
    assert "filter I" in msg and "no I entry" in msg and "backup_master_flats" in msg
    assert "at least 3 I flats" in msg


def test_fallback_from_settings():
    fb = Fallback.from_settings("TEST_20250101", {"fallback_max_days": 7, "backup_master_bias": "b.fits",
                                                  "backup_master_flats": {"V": "v.fits"},
                                                  "force_backup_flats": True}, ["work"], "mf.yaml")
    assert fb.max_days == 7 and fb.backup_bias == "b.fits" and fb.backup_flats == {"V": "v.fits"}
    assert fb.force_backup_flats and fb.search_roots == ("work",) and fb.master_flats_file == "mf.yaml"


# --------------------------------------------------------------------------------------------
# real ARCSAT night
# --------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_arcsat_masters(tmp_path):
    if not ARCSAT.is_dir():
        pytest.skip(f"real ARCSAT night not available at {ARCSAT}")
    from bandersnake.config import load_instrument

    inst = load_instrument(Path(__file__).resolve().parents[1] / "config" / "instruments", "ARCSAT")
    calib = tmp_path / "calib"
    bias = build_master_bias(sorted(ARCSAT.glob("Bias_*")), calib / "master_bias.fits", inst)
    dark = build_master_dark(sorted(ARCSAT.glob("Dark_*")), calib / "master_bias.fits",
                             calib / "master_dark.fits", inst, nlimit=0)
    flat = build_master_flat(sorted(ARCSAT.glob("domeflat_z_*")), [], calib / "master_bias.fits",
                             calib / "master_dark.fits", calib / "master_flat_z.fits", "z", inst)
    bpm = build_bad_pixel_map(calib / "master_dark.fits", calib / "master_flat_z.fits", calib / "bpm.fits")
    # PROVENANCE.md: bias ~1356 ADU, single-frame sigma ~13 ADU (which includes the fixed
    # pattern; the pair-difference read noise is lower, 12.1 ADU measured).
    assert bias["level_adu"] == pytest.approx(1356, abs=2)
    assert 11.0 < bias["rdnoise_e"] < 13.0
    assert 0 < dark["darkcur_e"] < 0.5                        # a cooled CCD: < 0.5 e-/s/px
    master = fits.getdata(calib / "master_flat_z.fits")
    illum = illuminated_mask(master)
    lo, hi = np.percentile(master[illum], [0.1, 99.9])
    assert 0.7 < lo < 1.0 < hi < 1.3
    assert all(17000 < v < 19000 for v in flat["levels"].values())
    assert bpm["n_hot"] < 0.01 * master.size and bpm["n_low"] < 0.001 * master.size


# --------------------------------------------------------------------------------------------
# simulator truth (small preset: 256x256, 5 bias, 5 darks of 30 s, 3 dusk + 3 dawn flats)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_night_masters(tmp_path_factory):
    simulate = pytest.importorskip("bandersnake.sim.night")
    from astropy.table import Table

    from bandersnake.config import load_instrument

    root = tmp_path_factory.mktemp("sim")
    inst = load_instrument(Path(__file__).resolve().parents[1] / "config" / "instruments", "SPIRIT2")
    truth = simulate.simulate_night(root / "raw", root / "truth", simulate.small_config(), inst)
    inst["shape"] = list(truth["night"]["shape"])       # the small preset overrides the camera's shape
    frames = Table.read(root / "truth" / "frames.ecsv")
    raw = Path(truth["night"]["raw_dir"])

    def files(kind, session=None):
        return [str(raw / r["file"]) for r in frames
                if r["type"] == kind and (session is None or r["session"] == session)]

    calib = root / "calib"
    res = {"bias": build_master_bias(files("bias"), calib / "master_bias.fits", inst)}
    res["dark"] = build_master_dark(files("dark"), calib / "master_bias.fits", calib / "master_dark.fits", inst)
    res["flat"] = build_master_flat(files("flat", "dusk"), files("flat", "dawn"), calib / "master_bias.fits",
                                    calib / "master_dark.fits", calib / "master_flat.fits", "I+z", inst)
    res["bpm"] = build_bad_pixel_map(calib / "master_dark.fits", calib / "master_flat.fits", calib / "bpm.fits")
    with fits.open(root / "truth" / "master_truth.fits") as hdul:
        true = {name: hdul[name].data.copy() for name in ("BIAS", "DARK", "FLAT", "BPM")}
    return truth, true, calib, res


def test_small_night_bias_and_read_noise(small_night_masters):
    truth, true, calib, res = small_night_masters
    resid = fits.getdata(calib / "master_bias.fits") - true["BIAS"]
    rn_adu = truth["detector"]["read_noise_adu"]
    # 5 frames: residual rms = RN/sqrt(5) (x ~1.05 for clipping losses); 1.15 leaves margin.
    assert np.std(resid) < 1.15 * rn_adu / np.sqrt(5)
    assert abs(np.mean(resid)) < 0.1 * rn_adu
    # Read noise: 4 pairs x 65k pixels give ~0.3 % precision; the requirement is 5 %.
    assert res["bias"]["rdnoise_e"] == pytest.approx(truth["detector"]["read_noise_e"], rel=0.05)


def test_small_night_dark_current(small_night_masters):
    truth, true, calib, res = small_night_masters
    # Requirement: within 5 % of the true uniform dark current (the glow corner excluded).
    assert res["dark"]["darkcur_e"] == pytest.approx(truth["detector"]["dark_current_e_per_s"], rel=0.05)
    dark = fits.getdata(calib / "master_dark.fits")
    hot = (true["BPM"] & 1) > 0
    # Hot pixels' rates (>= 5 e-/s = 2.5 ADU/s) recovered: per-pixel noise ~0.2 ADU/s.
    assert np.median(np.abs(dark[hot] - true["DARK"][hot])) < 0.3


def test_small_night_flat(small_night_masters):
    truth, true, calib, res = small_night_masters
    assert res["flat"]["sessions"] == {"dusk": 3, "dawn": 3}
    flat = fits.getdata(calib / "master_flat.fits")
    illum = illuminated_mask(flat)
    good = illum & (true["BPM"] == 0)
    ratio = flat[good] / true["FLAT"][good]
    ratio /= np.median(ratio)          # truth is median 1 over the whole frame, ours over the illuminated area
    # Requirement: 0.5 % rms. Photon noise of 6 flats at 22-35k ADU x 2 e-/ADU: ~0.2 %.
    assert np.std(ratio) < 0.005


def test_small_night_bad_pixels(small_night_masters):
    truth, true, calib, res = small_night_masters
    bpm = fits.getdata(calib / "bpm.fits")
    for bit in (1, 2):
        t, f = (true["BPM"] & bit) > 0, (bpm & bit) > 0
        recall, precision = (t & f).sum() / t.sum(), (t & f).sum() / max(f.sum(), 1)
        # Requirement: recall >= 95 % at >= 99 % precision (hot: bit 1; dead/low: bit 2).
        assert recall >= 0.95 and precision >= 0.99, (bit, recall, precision)


def test_spooled_master_equals_in_memory(tmp_path):
    cam = Camera(11)
    night = _night(tmp_path, cam, nbias=7, ndark=0)
    inst = _instrument()
    full = build_master_bias(night["bias"], tmp_path / "a.fits", inst)
    # 0.7 MiB: the 7-frame stack (0.33 MiB) plus fixed costs (~0.55 MiB) no longer fit: spooled blocks.
    small = build_master_bias(night["bias"], tmp_path / "b.fits", inst, memory_mb=0.7)
    np.testing.assert_array_equal(fits.getdata(tmp_path / "a.fits"), fits.getdata(tmp_path / "b.fits"))
    assert small["rdnoise_e"] == full["rdnoise_e"]
    assert not list(tmp_path.glob(".bandersnake_stack_*"))          # scratch file removed


def test_local_flat_interpolation_matches_scipy_map_coordinates():
    """The numpy bilinear interpolation of tile medians is scipy.ndimage.map_coordinates(order=1,
    mode='nearest') on the same grid; 1e-6 covers map_coordinates' float32 output rounding."""
    from scipy import ndimage

    from bandersnake.calibration import masters

    rng = np.random.default_rng(3)
    for ny, nx, box in [(200, 300, 16), (37, 53, 8)]:
        ty, tx = -(-ny // box), -(-nx // box)
        grid = rng.normal(size=(ty, tx)).astype(np.float32)
        yy = np.interp(np.arange(ny), masters._tile_centres(ny, box), np.arange(ty))
        xx = np.interp(np.arange(nx), masters._tile_centres(nx, box), np.arange(tx))
        reference = ndimage.map_coordinates(grid, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")
        np.testing.assert_allclose(masters._bilinear_on_grid(grid, yy, xx), reference, atol=1e-6)
