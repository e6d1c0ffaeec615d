"""The night simulator: raw files, their statistics against the truth, the transit model, timing."""

import dataclasses
import fnmatch
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.coordinates import AltAz, EarthLocation, SkyCoord, get_body
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from photutils.centroids import centroid_com

from bandersnake.errors import ConfigError
from bandersnake.fitsio import read_image
from bandersnake.sim import site as sim_site
from bandersnake.sim.render import moffat_enclosed
from bandersnake.sim.transit import occulted_fraction, quadratic_intensity, transit_model
from bandersnake.sim.night import (demo_config, first_frame_positions, load_instrument_file, main, plan_night,
                                  scintillation_sigma, simulate_night, small_config)

ROOT = Path(__file__).resolve().parents[1]
SPIRIT2 = ROOT / "config" / "instruments" / "SPIRIT2.yaml"


@pytest.fixture(scope="module")
def instrument():
    return load_instrument_file(SPIRIT2)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """The small preset written through the command line (~3 s)."""
    base = tmp_path_factory.mktemp("simnight")
    rc = main(["--small", "--raw-root", str(base / "raw"), "--truth-dir", str(base / "truth"),
               "--instrument", str(SPIRIT2)])
    assert rc == 0
    truth_dir = base / "truth"
    m = fits.open(truth_dir / "master_truth.fits")
    return {
        "raw": base / "raw" / "SPIRIT2" / "images" / "20251215",
        "raw_root": base / "raw",
        "truth_dir": truth_dir,
        "truth": yaml.safe_load((truth_dir / "truth.yaml").read_text()),
        "frames": Table.read(truth_dir / "frames.ecsv"),
        "stars": Table.read(truth_dir / "stars.ecsv"),
        "cr": Table.read(truth_dir / "cosmic_rays.ecsv"),
        "bias": m["BIAS"].data.astype(float), "dark": m["DARK"].data.astype(float),
        "flat": m["FLAT"].data.astype(float), "bpm": m["BPM"].data,
    }


def _calibrated(night, name):
    """Raw frame -> e- with the TRUE bias, dark and flat; also its per-pixel variance (e-^2)."""
    t = night["truth"]["detector"]
    raw, hdr = read_image(night["raw"] / name, dtype=np.float64)
    g, rn = t["gain_e_per_adu"], t["read_noise_e"]
    exptime = hdr["EXPTIME"]
    e = (raw - night["bias"]) * g
    var = np.maximum(e, 0) + rn**2
    cal = (e - night["dark"] * g * exptime) / night["flat"]
    return cal, var / night["flat"] ** 2


# ---------------------------------------------------------------------------- files and headers

def test_files_headers_and_dtypes(night):
    truth, frames = night["truth"], night["frames"]
    files = sorted(p.name for p in night["raw"].iterdir())
    assert files == sorted(frames["file"])
    assert any(f.endswith(".fits.gz") for f in files) and any(f.endswith(".fits") for f in files)
    patterns = {"bias": "Bias_20251215_??????.fits*", "dark": "Dark_20251215_??????.fits*",
                "flat": "Flat_I+z_2025121?_??????.fits*", "science": "SIM-1b_I+z_20251216_??????.fits*"}
    imagetyp = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field", "science": "Light Frame"}
    for row in frames:
        path = night["raw"] / row["file"]
        assert fnmatch.fnmatch(row["file"], patterns[row["type"]]), row["file"]
        with fits.open(path, do_not_scale_image_data=True) as hdul:
            h = hdul[0].header
            assert h["BITPIX"] == 16 and h["BZERO"] == 32768 and h["BSCALE"] == 1
            assert hdul[0].data.dtype.kind == "i"  # stored as int16 with the offset
        with fits.open(path) as hdul:
            assert hdul[0].data.dtype == np.uint16
            assert hdul[0].data.shape == (256, 256)
        assert h["IMAGETYP"] == imagetyp[row["type"]]
        assert h["EXPTIME"] == pytest.approx(row["exptime"])
        assert h["INSTRUME"] == "SPIRIT2"
        assert h["SITELAT"] == "-24 37 38" and h["SITELONG"] == "-70 24 15"
        # DATE-OBS is the exposure start; JD repeats it (1e-8 d = 0.9 ms, the ISO rounding).
        assert Time(h["DATE-OBS"], scale="utc").jd == pytest.approx(h["JD"], abs=1e-8)
        assert h["JD"] == pytest.approx(row["jd_start_utc"], abs=1e-8)
        if row["type"] == "science":
            assert h["OBJECT"] == "SIM-1b" and h["FILTER"] == "I+z"
            c = SkyCoord(h["RA"], h["DEC"], unit=(u.hourangle, u.deg))
            # Header strings keep 0.01 s of RA and 0.1" of Dec.
            assert c.ra.deg == pytest.approx(truth["target"]["ra_deg"], abs=0.2 / 3600)
            assert c.dec.deg == pytest.approx(truth["target"]["dec_deg"], abs=0.2 / 3600)
            assert h["AIRMASS"] == pytest.approx(row["airmass"], abs=1e-5)


def test_truth_products_outside_raw_tree(night):
    truth_dir = night["truth_dir"]
    for name in night["truth"]["files"].values():
        assert (truth_dir / name).is_file()
    assert not any(p.suffix in (".yaml", ".ecsv") for p in night["raw_root"].rglob("*"))
    targets = yaml.safe_load((truth_dir / "targets.yaml").read_text())["targets"]["SIM-1b"][0]
    assert targets["tracking_star"] == 1 and targets["start_date"] == "20251215"
    first = night["stars"][(night["stars"]["frame"] == 0) & night["stars"]["listed"]]
    np.testing.assert_allclose(targets["all_star_positions"], np.c_[first["x"], first["y"]], atol=1e-3)


def test_bad_settings_raise_clear_errors(tmp_path, instrument):
    with pytest.raises(ConfigError, match="unknown setting"):
        small_config(n_sciense=3)
    with pytest.raises(ConfigError, match="must not be inside the raw tree"):
        simulate_night(tmp_path / "raw", tmp_path / "raw" / "truth", small_config(), instrument)
    night_dir = tmp_path / "raw2" / "SPIRIT2" / "images" / "20251215"
    night_dir.mkdir(parents=True)
    (night_dir / "old.fits").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds 1 FITS"):
        simulate_night(tmp_path / "raw2", tmp_path / "t2", small_config(), instrument)
    assert main(["--small", "--raw-root", str(tmp_path / "r3"), "--truth-dir", str(tmp_path / "t3"),
                 "--set", "n_stars=1"]) == 2


# ---------------------------------------------------------------------------- raw statistics vs truth

def test_bias_frames_match_truth(night):
    t = night["truth"]["detector"]
    rn_adu = t["read_noise_adu"]
    npix = night["bias"].size
    for name in night["frames"]["file"][night["frames"]["type"] == "bias"]:
        raw, _ = read_image(night["raw"] / name, dtype=np.float64)
        resid = raw - night["bias"]
        # Mean: sampling error rn/sqrt(N) = 0.04 ADU for 256x256; 5 sigma.
        assert abs(resid.mean()) < 5 * rn_adu / np.sqrt(npix)
        # Std: error rn/sqrt(2N) = 0.028 ADU; integer rounding adds 1/12 ADU^2 in quadrature.
        assert resid.std() == pytest.approx(np.sqrt(rn_adu**2 + 1 / 12), abs=5 * rn_adu / np.sqrt(2 * npix))
        assert raw.mean() == pytest.approx(t["bias_level_adu"], abs=0.3)
    # The column pattern is real structure: column means of a bias track the truth's columns.
    raw, _ = read_image(night["raw"] / night["frames"]["file"][0], dtype=np.float64)
    r = np.corrcoef(raw.mean(axis=0), night["bias"].mean(axis=0))[0, 1]
    assert r > 0.9  # column-mean noise 10/sqrt(256) = 0.6 ADU vs a ~4 ADU RMS pattern


def test_dark_frames_match_truth(night):
    frames, g = night["frames"], night["truth"]["detector"]["gain_e_per_adu"]
    cr = night["cr"]
    for row in frames[frames["type"] == "dark"]:
        raw, _ = read_image(night["raw"] / row["file"], dtype=np.float64)
        rate = (raw - night["bias"]) / row["exptime"]
        good = night["bpm"] == 0
        hits = cr[cr["file"] == row["file"]]
        good[hits["y"], hits["x"]] = False
        # Mean rate over ~65k good pixels: sigma = sqrt(rn^2 + dark e-)/g/t/sqrt(N) ~ 1.3e-3 ADU/s.
        assert rate[good].mean() == pytest.approx(night["dark"][good].mean(), abs=7e-3)
        hot = (night["bpm"] & 1).astype(bool) & (night["dark"] * g > 200)  # > 6000 e- in 30 s
        hot[hits["y"], hits["x"]] = False
        # Hot pixels: Poisson + read noise < 2 % each; the median over them is far tighter.
        assert np.median(rate[hot] / night["dark"][hot]) == pytest.approx(1.0, abs=0.02)


def test_flats_sky_dominated_dusk_and_dawn_levels(night):
    frames = night["frames"]
    flats = frames[frames["type"] == "flat"]
    assert set(flats["session"]) == {"dusk", "dawn"}
    levels = {}
    for row in flats:
        cal, var = _calibrated(night, row["file"])
        # The true flat divides out: the calibrated flat is flat sky within Poisson noise.
        good = night["bpm"] == 0
        sky_e = row["sky_e_per_s_px"] * row["exptime"]
        assert np.median(cal[good]) == pytest.approx(sky_e, rel=0.005)  # stars cover < 1 % of pixels
        levels.setdefault(row["session"], []).append(row["mean_adu"])
        raw, _ = read_image(night["raw"] / row["file"])
        assert 10000 < np.median(raw) < 50000  # within flat_min/max_level_adu of the pipeline
    assert np.mean(levels["dusk"]) > 1.2 * np.mean(levels["dawn"])  # targets 35000 vs 22000 ADU
    # Stars move between flats: a naive mean of two dusk flats' ratio shows star residue.
    dusk = flats[flats["session"] == "dusk"]
    a, _ = _calibrated(night, dusk["file"][0])
    b, _ = _calibrated(night, dusk["file"][1])
    ratio = (a / np.median(a)) / (b / np.median(b))
    good = night["bpm"] == 0
    assert np.count_nonzero(np.abs(ratio[good] - 1) > 0.05) > 5  # 0.05 = ~10 sigma of Poisson at 1e5 e-


def test_star_flux_in_big_aperture_matches_truth(night):
    stars, frames, cr = night["stars"], night["frames"], night["cr"]
    sci = frames[frames["type"] == "science"]
    yy, xx = np.mgrid[0:256, 0:256]
    checked = 0
    for row in sci[[0, len(sci) // 2, len(sci) - 1]]:
        cal, var = _calibrated(night, row["file"])
        hits = cr[cr["file"] == row["file"]]
        sky = row["sky_e_per_s_px"] * row["exptime"]
        for s in stars[(stars["file"] == row["file"]) & stars["listed"]]:
            ap = np.hypot(xx - s["x"], yy - s["y"]) < 15
            if ap[hits["y"], hits["x"]].any():
                continue  # a cosmic ray in the aperture is not part of the star
            flux = (cal[ap] - sky).sum()
            # Stamps hold all flux inside 51x51 px (equal-area radius 28.8 px): aperture fraction.
            frac = moffat_enclosed(15, s["fwhm_px"], 3.0) / moffat_enclosed(28.8, s["fwhm_px"], 3.0)
            sigma = np.sqrt(var[ap].sum())
            assert flux == pytest.approx(s["expected_e"] * frac, abs=5 * sigma + 1e-3 * s["expected_e"])
            checked += 1
    assert checked >= 8


def test_star_positions_are_zero_based_and_jump(night):
    stars, frames = night["stars"], night["frames"]
    sci = frames[frames["type"] == "science"]
    jump = night["truth"]["pointing"]["jump_frame"]
    for i in (0, jump - 1, jump, len(sci) - 1):
        s = stars[(stars["frame"] == i) & (stars["star"] == 1)][0]
        cal, _ = _calibrated(night, s["file"])
        ix, iy = int(round(s["x"])), int(round(s["y"]))
        cut = cal[iy - 8:iy + 9, ix - 8:ix + 9] - s["sky_e_per_s_px"] * 30.0
        cx, cy = centroid_com(cut)
        # Bright star (SNR ~ 1000): the box truncation of the Moffat wings biases <~0.05 px.
        assert cx + ix - 8 == pytest.approx(s["x"], abs=0.1)
        assert cy + iy - 8 == pytest.approx(s["y"], abs=0.1)
    d = stars[(stars["star"] == 0)]
    step = np.hypot(np.diff(d["x"]), np.diff(d["y"]))
    assert np.argmax(step) == jump - 1 and 10 < step.max() < 20  # the re-acquisition jump, ~12 px


def test_cosmic_rays_and_saturation(tmp_path, instrument):
    cfg = small_config(n_bias=1, n_dark=1, n_flat_dusk=1, n_flat_dawn=1, n_science=3, saturated_star=True,
                       cr_rate_per_mpix_s=3.0)
    truth = simulate_night(tmp_path / "raw", tmp_path / "truth", cfg, instrument)
    frames = Table.read(tmp_path / "truth" / "frames.ecsv")
    cr = Table.read(tmp_path / "truth" / "cosmic_rays.ecsv")
    assert truth["stars"][3]["role"] == "saturated"
    for row in frames[frames["type"] == "science"]:
        assert row["n_saturated"] > 0  # the saturated star is clipped at the ADC limit
        raw, _ = read_image(tmp_path / "raw" / "SPIRIT2" / "images" / "20251215" / row["file"])
        assert raw.max() == 65535
        hits = cr[cr["file"] == row["file"]]
        assert len(hits) == row["n_cosmic_pixels"] > 0
        bias = fits.getdata(tmp_path / "truth" / "master_truth.fits", "BIAS")
        excess = (raw[hits["y"], hits["x"]] - bias[hits["y"], hits["x"]]) * truth["detector"]["gain_e_per_adu"]
        # Deposited charge (median 3000 e-) dwarfs sky + read noise (~45 e- rms): most hits stand out.
        assert np.mean(excess > 0.5 * hits["electrons"]) > 0.9


# ---------------------------------------------------------------------------- transit model

def _lens_area(z, p):
    """Uniform-disk overlap fraction (closed form, Mandel & Agol 2002 eq. 1)."""
    if z >= 1 + p:
        return 0.0
    if z <= 1 - p:
        return p * p
    k0 = np.arccos((p * p + z * z - 1) / (2 * p * z))
    k1 = np.arccos((1 - p * p + z * z) / (2 * z))
    return (p * p * k0 + k1 - 0.5 * np.sqrt(4 * z * z - (1 + z * z - p * p) ** 2)) / np.pi


def test_transit_uniform_disk_matches_analytic():
    p = 0.1
    z = np.array([0.0, 0.5, 0.89, 0.93, 0.97, 1.0, 1.03, 1.07, 1.099, 1.2])
    expected = np.array([_lens_area(v, p) for v in z])
    # Quadrature with 48 nodes after removing the sqrt end-point behaviour: exact to ~1e-12.
    np.testing.assert_allclose(occulted_fraction(z, p), expected, atol=1e-10)
    assert occulted_fraction(0.0, p)[0] == pytest.approx(p * p, rel=1e-10)


def test_transit_limb_darkened_depth_matches_closed_form_and_brute_force():
    p, u1, u2 = 0.1, 0.35, 0.25
    # Centred planet: depth = int_0^p I(r) 2 pi r dr / (pi (1 - u1/3 - u2/6)), closed form in s = 1 - r^2.
    s0 = 1 - p * p
    c0, c1 = 1 - u1 - u2, u1 + 2 * u2
    depth = (c0 * (1 - s0) + c1 * 2 / 3 * (1 - s0**1.5) - u2 * (1 - s0**2) / 2) / (1 - u1 / 3 - u2 / 6)
    assert occulted_fraction(0.0, p, u1, u2)[0] == pytest.approx(depth, rel=1e-10)
    # Ingress/egress against a 2-D pixel sum of the limb-darkened disk (an independent method):
    # 3000^2 grid cells of 6.7e-4 R*; the planet edge discretisation error is ~1e-3 relative.
    n = 3000
    g = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(g, g)
    r2 = x**2 + y**2
    inten = np.where(r2 < 1, quadratic_intensity(np.sqrt(np.minimum(r2, 1)), u1, u2), 0.0)
    total = inten.sum()
    for z in (0.5, 0.95, 1.02, 1.08):
        brute = inten[(x - z) ** 2 + y**2 < p * p].sum() / total
        assert occulted_fraction(z, p, u1, u2)[0] == pytest.approx(brute, rel=3e-3)


def test_truth_transit_column_matches_model(night):
    tr = night["truth"]["transit"]
    s0 = night["stars"][night["stars"]["star"] == 0]
    model = transit_model(s0["bjd_tdb_mid"], tr["t0_bjd_tdb"], tr["period_d"], tr["rp_rs"], tr["a_rs"],
                          tr["inc_deg"], tr["u1"], tr["u2"])
    np.testing.assert_allclose(s0["transit"], model, rtol=1e-12)
    # The small night spans the whole transit (T14 ~ 20 min in a 30 min window).
    assert s0["transit"][0] == 1.0 and s0["transit"][-1] == 1.0
    assert 1 - s0["transit"].min() == pytest.approx(tr["depth_at_t0"], rel=0.02)
    # Limb darkening deepens the centre of the transit above the uniform (Rp/Rs)^2.
    assert tr["depth_at_t0"] > tr["depth_uniform"]
    var = night["truth"]["variable_star"]
    sv = night["stars"][night["stars"]["star"] == var["index"]]
    expect = 1 + var["amplitude"] * np.sin(2 * np.pi * (sv["bjd_tdb_mid"] - var["t_ref_bjd_tdb"]) / var["period_d"]
                                           + var["phase_rad"])
    np.testing.assert_allclose(sv["variability"], expect, rtol=1e-12)


def test_scintillation_osborn():
    # Osborn et al. (2015) by hand: 1 m at 2482 m, 30 s, airmass 1.2, C_Y 1.5, H 8000 m.
    by_hand = np.sqrt(1e-5 * 2.25 * 1.0 / 30 * 1.2**3 * np.exp(-2 * 2482 / 8000))
    assert scintillation_sigma(30.0, 1.2, 1.0, 2482.0, 1.5, 8000.0) == pytest.approx(by_hand, rel=1e-12)
    assert 8e-4 < by_hand < 9e-4


def test_realised_scintillation_has_the_stated_sigma(night):
    s = night["stars"]
    z = (s["scint_factor"] - 1) / s["scint_sigma"]
    # ~200 draws: the std of a unit normal is known to ~5 %; 25 % is a 5-sigma band.
    assert np.std(z) == pytest.approx(1.0, abs=0.25)


# ---------------------------------------------------------------------------- determinism, timing, demo

def test_same_seed_same_bytes_other_seed_differs(tmp_path, instrument):
    cfg = small_config(n_bias=1, n_dark=1, n_flat_dusk=1, n_flat_dawn=1, n_science=3, gzip_every=2)
    for name, c in (("a", cfg), ("b", cfg), ("c", dataclasses.replace(cfg, seed=7))):
        simulate_night(tmp_path / name / "raw", tmp_path / name / "truth", c, instrument)
    files = sorted((tmp_path / "a" / "raw").rglob("*.fits*"))
    assert any(f.name.endswith(".gz") for f in files)
    for f in files:
        rel = f.relative_to(tmp_path / "a")
        assert f.read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a/truth/stars.ecsv").read_bytes() == (tmp_path / "b/truth/stars.ecsv").read_bytes()
    other = sorted((tmp_path / "c" / "raw").rglob("Bias*"))
    assert not np.array_equal(fits.getdata(files[0]), fits.getdata(other[0]))


def test_demo_dusk_dawn_and_science_timing(instrument):
    plan = plan_night(demo_config(), instrument)
    site = instrument["site"]
    loc = EarthLocation.from_geodetic(site["longitude_deg"] * u.deg, site["latitude_deg"] * u.deg,
                                      site["altitude_m"] * u.m)

    def sun_alt(jd):
        t = Time(jd, format="jd")
        with sim_site.offline_iers():  # no IERS download attempts in tests
            return get_body("sun", t, loc).transform_to(AltAz(obstime=t, location=loc)).alt.deg

    kinds = {}
    for f in plan.frames:
        kinds.setdefault(f.get("session") or f["kind"], []).append(f)
    assert [len(kinds[k]) for k in ("bias", "dark", "dusk", "dawn", "science")] == [9, 9, 7, 7, 150]
    hour = lambda f: (Time(f["date_obs"]).datetime.hour + Time(f["date_obs"]).datetime.minute / 60 + 12) % 24 - 12
    # Paranal in December: evening twilight ~23:30-00:30 UTC, morning twilight ~08:30-09:30 UTC.
    for f in kinds["dusk"]:
        assert f["date_obs"].startswith("2025-12-15T23") or f["date_obs"].startswith("2025-12-16T00")
        assert -12 < sun_alt(f["jd_start"]) < 0
    for f in kinds["dawn"]:
        assert f["date_obs"].startswith("2025-12-16T08") or f["date_obs"].startswith("2025-12-16T09")
        assert -12 < sun_alt(f["jd_start"]) < 0
    for f in kinds["bias"] + kinds["dark"]:
        assert hour(f) < hour(kinds["dusk"][0])  # calibrations in the afternoon
    sci = kinds["science"]
    assert all(sun_alt(f["jd_start"]) < -18 for f in (sci[0], sci[-1]))
    span_h = (sci[-1]["jd_start"] - sci[0]["jd_start"]) * 24
    assert 1.5 <= span_h <= 2.0
    # Target high in the sky; airmass independently from astropy's AltAz.
    c = SkyCoord(plan.star_sky["ra"] * u.deg, plan.star_sky["dec"] * u.deg)
    jd = plan.science["jd_mid"][[0, -1]]
    with sim_site.offline_iers():
        secz = c.transform_to(AltAz(obstime=Time(jd, format="jd"), location=loc)).secz.value
    np.testing.assert_allclose(plan.science["airmass"][[0, -1]], secz, rtol=1e-6)
    assert secz.max() < 1.2
    tr = plan.transit
    assert 0.009 < tr["depth_uniform"] < 0.012 and 50 < tr["t14_min"] < 70
    t0_utc = plan.science["jd_mid"][np.argmin(plan.science["transit"])]
    assert sci[0]["jd_start"] + tr["t14_min"] / 2880 < t0_utc < sci[-1]["jd_start"] - tr["t14_min"] / 2880


def test_config_files_match_the_demo(instrument):
    plan = plan_night(demo_config(), instrument)
    targets = yaml.safe_load((ROOT / "config" / "targets.yaml").read_text())["targets"]["SIM-1b"][0]
    assert targets["all_star_positions"] == first_frame_positions(plan)
    assert targets["tracking_star"] == 1 and len(targets["all_star_positions"]) == 12
    night = yaml.safe_load((ROOT / "config" / "nights" / "SPIRIT2_20251215.yaml").read_text())
    assert night["centroid_settings"]["star0_positions"]["SIM-1b"] == first_frame_positions(plan)[0]
    # The tracking star is isolated and every listed star keeps its sky annulus (25 px) on the chip
    # through drift and jump.
    x0, y0 = plan.stars["x0"], plan.stars["y0"]
    d = np.hypot(x0 - x0[1], y0 - y0[1])
    assert np.sort(d)[1] > 100
    n = plan.stars["n_listed"]
    ny, nx = plan.shape
    for dx, dy in zip(plan.science["dx"], plan.science["dy"]):
        x, y = x0[:n] + dx, y0[:n] + dy
        assert (x > 25).all() and (x < nx - 26).all() and (y > 25).all() and (y < ny - 26).all()


def test_sexagesimal_round_trip():
    for deg in (76.5, 0.0, 359.99, 12.3456):
        s = sim_site.sexagesimal(deg, hours=True, plus=False)
        assert SkyCoord(s, "+00 00 00", unit=(u.hourangle, u.deg)).ra.deg == pytest.approx(deg % 360, abs=1e-4)
    assert sim_site.sexagesimal(-0.5, precision=1) == "-00 30 00.0"
    assert sim_site.sexagesimal(-24.6272, plus=False, precision=0) == "-24 37 38"


@pytest.mark.slow
def test_demo_night_generation(tmp_path, instrument):
    # Speed is the benchmarks' business (the demo's wall time is in bench_night); this checks the frames.
    truth = simulate_night(tmp_path / "raw", tmp_path / "truth", demo_config(), instrument)
    raw = tmp_path / "raw" / "SPIRIT2" / "images" / "20251215"
    files = list(raw.iterdir())
    assert len(files) == 182 == sum(truth["night"]["n_frames"].values())
    assert fits.getdata(files[0]).shape == (1024, 1280)


def test_explicit_star_list_and_other_instrument(tmp_path):
    inst = load_instrument_file(ROOT / "config" / "instruments" / "ARCSAT.yaml")
    stars = [{"x": 100.25, "y": 120.5, "flux_e_per_s": 2e4}, {"x": 180.0, "y": 60.0, "flux_e_per_s": 3e4},
             {"x": 60.0, "y": 190.0, "flux_e_per_s": 5e3}]
    cfg = small_config(date="20250601", stars=stars, n_field_stars=0, variable_star=None, n_bias=1, n_dark=1,
                       n_flat_dusk=1, n_flat_dawn=1, n_science=2, jump_frame=99)
    truth = simulate_night(tmp_path / "raw", tmp_path / "truth", cfg, inst)
    assert truth["night"]["night_id"] == "ARCSAT_20250601" and truth["variable_star"] is None
    st = Table.read(tmp_path / "truth" / "stars.ecsv")
    first = st[st["frame"] == 0]
    # Only jitter (0.25 px rms) and drift separate frame 0 from the requested base positions.
    np.testing.assert_allclose(first["x"], [s["x"] for s in stars], atol=1.5)
    np.testing.assert_allclose(first["flux0_e_per_s"], [s["flux_e_per_s"] for s in stars])
    sci = sorted((tmp_path / "raw" / "ARCSAT" / "images" / "20250601").glob("SIM-1b*"))
    h = fits.getheader(sci[0])
    assert "OBJCTRA" in h and "RA" not in h  # ARCSAT's keyword map
    assert h["INSTRUME"] == "dcam-spare"
    # The June night at Apache Point: science between astronomical twilights (UTC 03:50-11:00).
    assert truth["night"]["astronomical_dusk_utc"] < h["DATE-OBS"] < truth["night"]["astronomical_dawn_utc"]
