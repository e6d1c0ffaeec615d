"""Any real night from any camera (issue 17): times with zones, nights without calibration frames,
instrument files found by name, and a drafted instrument file. Each test failed before issue 17.

End-to-end runs are in test_realnight_workflow.py.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from bandersnake.calibration import masters
from bandersnake.config import instrument_names, load_instrument, validate
from bandersnake.errors import CalibrationMissing, ConfigError
from bandersnake.ingest import timing
from bandersnake.ingest.inventory import build_inventory, summarize

from conftest import ARCSAT_RAW, ROOT

INST = {"name": "T", "keywords": {"date_obs": "DATE-OBS"}, "date_obs_is": "start"}
UTC_JD = timing.parse_iso_time("2017-12-20T01:33:43.317")[0]


# ----------------------------------------------------------------------------------------- times
@pytest.mark.parametrize("stamp", ["2017-12-19T18:33:43.317-0700", "2017-12-19T18:33:43.317-07:00",
                                   "2017-12-20T01:33:43.317Z", "2017-12-20T01:33:43.317-0000",
                                   "2017-12-20 01:33:43.317", "2017-12-20T03:03:43.317+0130"])
def test_zone_suffixes_are_converted_to_utc(stamp):
    """The issue's camera: DATE-OBS = '2017-12-19T18:33:43.317-0700' was 'unparsable'."""
    jd, res, _ = timing.parse_iso_time(stamp)
    assert abs(jd - UTC_JD) * 86400 < 1e-4 and res == pytest.approx(0.001)


def test_naive_local_stamp_with_utc_offset_hours():
    h = fits.Header({"DATE-OBS": "2017-12-19T18:33:43.317", "EXPTIME": 60.0})
    found = timing.frame_time(h, dict(INST, utc_offset_hours=-7), 60.0)
    assert abs(found.jd_mid - (UTC_JD + 30 / 86400)) * 86400 < 1e-4
    assert "utc_offset_hours -7" in found.source


def test_date_plus_time_of_day_and_date_obs_is_end():
    h = fits.Header({"DATE-OBS": "2017-12-20", "UT": "01:33:43.317"})
    inst = dict(INST, keywords={"date_obs": "DATE-OBS", "time_obs": "UT"}, date_obs_is="end")
    found = timing.frame_time(h, inst, 60.0)
    assert abs(found.jd_mid - (UTC_JD - 30 / 86400)) * 86400 < 1e-4 and found.source.startswith("DATE-OBS+UT")


def test_rounded_mjd_only_when_nothing_finer():
    """MJD-OBS rounded to 0.001 d (86.4 s) is used when it is the only time, and said; a finer
    DATE-OBS wins over it even when MJD-OBS is named in the instrument file."""
    inst = dict(INST, keywords={"date_obs": "DATE-OBS", "mjd_obs": "MJD-OBS"})
    only = timing.frame_time(fits.Header({"MJD-OBS": 58107.065}), inst, 60.0)
    assert only.source == "MJD-OBS" and only.resolution_s == pytest.approx(86.4)
    assert any("rounded to 86.4 s" in w for w in only.warnings)
    both = timing.frame_time(fits.Header({"DATE-OBS": "2017-12-19T18:33:43.317-0700", "MJD-OBS": 58107.065}),
                             inst, 60.0)
    assert both.source.startswith("DATE-OBS") and not both.warnings


def test_inventory_and_photometry_paths_pick_the_same_time():
    """A header whose only time is an unconfigured JD: both the inventory's check and the
    photometry path's quick lookup use it (neither rejects the frame while the other accepts it)."""
    h = fits.Header({"JD": 2458107.5650846874})
    checked = timing.frame_time(h, INST, 60.0, check=True)
    assert checked.source == "JD"
    assert timing.jd_mid_utc(h, INST, 60.0) == checked.jd_mid


def test_disagreeing_time_keywords_are_reported():
    """A naive local DATE-OBS (offset forgotten) against the header's MJD-OBS: 7 h apart, more
    than the exposure: the time used and the disagreement are named, with the hint."""
    h = fits.Header({"DATE-OBS": "2017-12-19T18:33:43.317", "MJD-OBS": 58107.065})
    found = timing.frame_time(h, INST, 60.0)
    assert found.source == "DATE-OBS (UTC)"
    assert len(found.warnings) == 1 and "MJD-OBS differs" in found.warnings[0]
    assert "utc_offset_hours" in found.warnings[0]


def _frame(path, header, shape=(8, 10)):
    # Sky noise of its own per frame: the inventory rejects constant frames and pixel duplicates.
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    fits.PrimaryHDU(rng.poisson(100, shape).astype(np.uint16), fits.Header(header)).writeto(path)
    return str(path)


def test_inventory_accepts_zone_stamps_and_summarizes_time_sources(tmp_path):
    inst = load_instrument(ROOT / "config" / "instruments", "MAXIM")
    inst["keywords"]["mjd_obs"] = "MJD-OBS"
    paths = [_frame(tmp_path / f"sci{i}.fits", {"IMAGETYP": "Light Frame", "OBJECT": "X", "FILTER": "V",
                                                "EXPTIME": 60.0, "DATE-OBS": f"2017-12-19T18:3{i}:43.317-0700",
                                                "MJD-OBS": round(58107.065 + i / 1440, 3)}) for i in range(3)]
    paths.append(_frame(tmp_path / "sci_mjd.fits", {"IMAGETYP": "Light Frame", "OBJECT": "X", "FILTER": "V",
                                                    "EXPTIME": 60.0, "MJD-OBS": 58107.075}))
    table = build_inventory(paths, inst)
    assert table["accepted"].all()
    first = table[table["file"] == "sci0.fits"][0]
    assert first["date_obs"].startswith("2017-12-20T01:30:43.317")
    lines = summarize(table)
    assert "times: DATE-OBS (zone -07:00) for 3 frame(s)" in lines
    assert any("rounded to 86.4 s" in line and "sci_mjd.fits" in line for line in lines)


# ----------------------------------------------------------------------------------------- skip
def test_missing_calibrations_named_at_once_with_every_way_out():
    cp = {"min_bias_frames": 3, "min_dark_frames": 3, "min_flat_frames": 3, "skip": []}
    counts = {"bias": 0, "dark": 1, "flat": {}}
    sources = masters.calibration_sources(counts, cp, masters.Fallback(night="CAM_20171219"), ["V"])
    assert sources == {"bias": None, "dark": None, "flat V": None}
    with pytest.raises(CalibrationMissing) as err:
        masters.check_calibration_sources(sources, counts, cp, "CAM_20171219")
    text = str(err.value)
    for need in ("bias: 0 usable", "dark: 1 usable", "flat V: 0 usable", "backup_master_bias",
                 "backup_master_dark", "backup_master_flats: {V:", "skip: [bias, dark, flat]",
                 "master_flats.yaml", "earlier night"):
        assert need in text, need
    cp["skip"] = ["bias", "dark", "flat"]
    assert set(masters.calibration_sources(counts, cp, masters.Fallback(), ["V"]).values()) == {"skipped"}


def test_skipped_masters(tmp_path):
    inst = {"name": "T", "gain_e_per_adu": 2.0, "read_noise_e": 7.0, "shape": None, "bias_level_adu": 151.0}
    out = masters.write_skipped_master("bias", tmp_path / "b.fits", inst, raw_shape=(5, 6))
    data, header = fits.getdata(out["path"]), fits.getheader(out["path"])
    assert data.shape == (5, 6) and np.all(data == 151.0)
    assert header["CALSKIP"] and header["RDNOISE"] == 7.0 and "bias_level_adu" in header["SKIPNOTE"]
    # With an overscan the frames' level is already subtracted: pedestal 0; trimmed shape.
    over = dict(inst, bias_level_adu=None, overscan_section="[1:2,1:5]", trim_section="[3:6,1:5]")
    out = masters.write_skipped_master("bias", tmp_path / "o.fits", over, raw_shape=(5, 6))
    assert fits.getdata(out["path"]).shape == (5, 4) and np.all(fits.getdata(out["path"]) == 0)
    with pytest.raises(CalibrationMissing, match="bias_level_adu nor overscan_section"):
        masters.write_skipped_master("bias", tmp_path / "x.fits", dict(inst, bias_level_adu=None), (5, 6))
    flat = masters.write_skipped_master("flat", tmp_path / "f.fits", inst, (5, 6), filter_name="V")
    assert np.all(fits.getdata(flat["path"]) == 1) and fits.getheader(flat["path"])["FILTER"] == "V"
    fb = masters.Fallback(skip=("dark",), raw_shape=(5, 6))
    res = masters.build_master_dark([], tmp_path / "b.fits", tmp_path / "d.fits", inst, fallback=fb)
    assert res["fallback"] == "skipped" and np.all(fits.getdata(tmp_path / "d.fits") == 0)


# ----------------------------------------------------------------------------------------- instruments
def test_instruments_found_by_name(tmp_path):
    """A targets file beside the instrument files is not an instrument (it used to be validated as
    one and stop every run); a broken instrument file's error says it checked an instrument file."""
    (tmp_path / "targets.yaml").write_text("targets:\n  X: {all_star_positions: [[1, 2]]}\n")
    (tmp_path / "CAM.yaml").write_text((ROOT / "config" / "instruments" / "MAXIM.yaml").read_text()
                                       .replace("name: MAXIM", "name: CAM"))
    (tmp_path / "BAD.yaml").write_text("name: BAD\ngain_e_per_adu: -1\n")
    assert instrument_names(tmp_path) == ["BAD", "CAM"]
    assert load_instrument(tmp_path, "CAM")["name"] == "CAM"
    with pytest.raises(ConfigError, match=r"^instrument file .*BAD.yaml"):
        load_instrument(tmp_path, "BAD")


# ----------------------------------------------------------------------------------------- draft
def issue_camera_config():
    """The issue's camera, simulated: 650x500 12-bit frames, 60 s, no bias/dark/flat, no IMAGETYP, no
    JD, DATE-OBS in local time with '-0700', UT-OBS '...-0000', MJD-OBS rounded to 0.001 d; the sky
    brightens by ~80 % over the 23 minutes (so the gain can be measured without bias frames).
    Returns the instrument dictionary and the SimConfig."""
    from bandersnake.sim.night import small_config

    inst = yaml.safe_load((ROOT / "config" / "instruments" / "MAXIM.yaml").read_text())
    inst.update(name="MYCAM", shape=[500, 650], gain_e_per_adu=4.0, read_noise_e=10.0,
                site={"name": "Tucson", "latitude_deg": 32.2319, "longitude_deg": -110.9501, "altitude_m": 728.0})
    validate(inst, "instrument.schema.yaml", "test")
    cfg = small_config(date="20171219", shape=(500, 650), n_bias=0, n_dark=0, n_flat_dusk=0, n_flat_dawn=0,
                       n_science=20, science_exptime_s=60.0, adc_bits=12, bias_level_adu=150.0,
                       target_flux_e_per_s=2000.0, tracking_flux_e_per_s=3000.0,
                       comparison_flux_range_e_per_s=(300.0, 2000.0), sky_e_per_s=30.0, sky_trend_per_h=2.0,
                       sky_wave_amplitude=0.0, date_obs_style="zone", utc_offset_hours=-7.0, ut_obs=True,
                       mjd_obs_decimals=3, write_imagetyp=False, write_jd=False, gzip_every=0)
    return inst, cfg


@pytest.fixture(scope="module")
def issue_camera_night(tmp_path_factory):
    from bandersnake.sim.night import simulate_night

    root = tmp_path_factory.mktemp("issue_cam")
    inst, cfg = issue_camera_config()
    simulate_night(root / "raw", root / "truth", cfg, inst)
    return root / "raw" / "MYCAM" / "images" / "20171219", inst


def _draft(raw_dir, *args):
    proc = subprocess.run([sys.executable, "-m", "bandersnake.ingest.draft", str(raw_dir), *args],
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "workflow"),
                                                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_draft_of_the_issue_camera(issue_camera_night):
    raw_dir, truth = issue_camera_night
    text = _draft(raw_dir, "--name", "MYCAM")
    data = validate(yaml.safe_load(text), "instrument.schema.yaml", "draft")
    assert data["name"] == "MYCAM" and data["shape"] == [500, 650]
    assert data["saturation_adu"] == 4095                      # 12-bit data in 16-bit files
    assert data["night_settings"]["calibration_params"]["skip"] == ["bias", "dark", "flat"]
    assert data["frame_type_source"] == "filename" and "*" in data["filename_patterns"]["science"]
    assert data["keywords"]["mjd_obs"] == "MJD-OBS" and data["utc_offset_hours"] is None
    assert "zone suffix (-0700)" in text and "86.4 s" in text
    assert data["site"]["latitude_deg"] == pytest.approx(32.2319, abs=1e-3)
    assert data["site"]["longitude_deg"] == pytest.approx(-110.9501, abs=1e-3)
    # Sky photon transfer without bias frames: within 15 % of the true 4 e-/ADU (20 frames).
    assert data["gain_e_per_adu"] == pytest.approx(4.0, rel=0.15)
    assert data["bias_level_adu"] == pytest.approx(150.0, abs=40.0)
    # Every top-level value says where it came from.
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and not line.rstrip().endswith(":"):
            assert "  # " in line, line


@pytest.mark.realdata
def test_draft_of_the_arcsat_night():
    if not ARCSAT_RAW.is_dir():
        pytest.skip(f"real ARCSAT night not available at {ARCSAT_RAW}")
    data = yaml.safe_load(_draft(ARCSAT_RAW, "--name", "ARCSAT"))
    assert data["shape"] == [1024, 1024] and data["saturation_adu"] == 65535
    assert data["plate_scale_arcsec_per_px"] == pytest.approx(0.67, abs=0.01)   # PROVENANCE: 0.67"/px
    assert data["site"]["longitude_deg"] == pytest.approx(-105.820278, abs=1e-4)
    assert data["bias_level_adu"] == pytest.approx(1356, abs=10)               # PROVENANCE: ~1356 ADU
    assert 10 < data["read_noise_e"] / data["gain_e_per_adu"] < 16              # bias sigma ~13 ADU
    assert "night_settings" not in data                                          # it has all its frames


def test_both_processing_paths_with_skipped_calibrations(tmp_path):
    """Streaming kernel and traditional path (calibrated frames on disk) on stand-in masters of a
    night with bias, dark and flat skipped: identical tables (the 1e-9 contract of the two paths),
    CALSKIP in the products, and fluxes equal to the noise-free truth within 1 % (frames written
    with a constant 1000 ADU pedestal, no dark, unit flat, so the stand-ins are exact)."""
    from _streaming_synth import expected_fluxes, synth_instrument, write_raw_frames

    from bandersnake.calibration.reduce import reduce_frames
    from bandersnake.fitsio import read_table
    from bandersnake.photometry.drivers import centroid_and_photometry_from_reduced, run_streaming
    from bandersnake.photometry.targets import TargetEntry

    shape, pos, flux = (120, 130), np.array([[40.3, 50.6], [90.2, 70.4]]), [2e5, 4e5]
    inst = dict(synth_instrument(shape), bias_level_adu=1000.0)
    m = {"bias": np.full(shape, 1000.0, np.float32), "dark": np.zeros(shape, np.float32),
         "flat": np.ones(shape, np.float32)}
    rng = np.random.default_rng(5)
    raw, _ = write_raw_frames(tmp_path / "raw", m, pos, flux, [(0.1 * k, 0.0) for k in range(4)], rng, noise=False)
    masters_dir = tmp_path / "calib"
    masters_dir.mkdir()
    paths = {k: masters.write_skipped_master(k, masters_dir / f"master_{k}.fits", inst, shape,
                                              filter_name="V")["path"] for k in ("bias", "dark", "flat")}
    settings = {"centroid_settings": {"boxsize": 10}, "photometry_settings": {"aper_min": 4, "aper_max": 6,
                                                                              "SKYRAD_inner": 12, "SKYRAD_outer": 18}}
    tgt = TargetEntry("SYNTH", pos, tracking_star=1)
    run_streaming(raw, paths, inst, settings, tgt, tmp_path / "stream", threads=1)
    reduce_frames(raw, paths, inst, tmp_path / "reduced", threads=1)
    centroid_and_photometry_from_reduced(raw, tmp_path / "reduced", inst, settings, tgt, tmp_path / "trad", threads=1)
    name = "photometry/photometry_aper5.fits"
    a, b = read_table(tmp_path / "stream" / name, mask_invalid=False), read_table(tmp_path / "trad" / name,
                                                                                    mask_invalid=False)
    np.testing.assert_allclose(np.asarray(a["flux"], float), np.asarray(b["flux"], float), rtol=1e-9)
    for out in ("stream", "trad"):
        assert fits.getheader(tmp_path / out / name, 1)["CALSKIP"] == "bias,dark,flat"
    want = expected_fluxes(shape, pos, flux, 0, [5.0], 12, 18)[0]
    assert np.allclose(np.asarray(a["flux"])[:, 0], want, rtol=0.01)
