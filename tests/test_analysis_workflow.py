"""The light-curve analysis in the workflow: a simulated night through `snakemake`, against truth.

Slow tests build one simulated night of 120 frames (80 min at 40 s cadence, a 41-min transit of
1.17 % centred in the window) through every rule, then check the recovered transit against the
simulator's truth, the achieved precision against the noise model, the published products, and
that changing analysis settings re-runs the analysis only. Fast tests cover the helpers the rules
use to pick their settings and the contained failures.
"""

import os
import re

import numpy as np
import pytest
import yaml
from astropy.io import fits
from matplotlib.image import imread

from _analysis_night import make_analysis_night, write_night_file
from _analysis_synth import INSTRUMENT, make_night
from bandersnake.analysis import stages
from bandersnake.transitfit import transit_fit_stage, transit_plots_stage
from bandersnake.analysis.differential import DEFAULT_SETTINGS, run_differential
from bandersnake.analysis.io import MissingProductError
from bandersnake.analysis.plots import PLOTS
from bandersnake.config import _schema, deep_merge, validate

from conftest import run_snakemake

SUMMARY_PLOT = "work/summary/precision_vs_brightness.png"
ANALYSIS_RULES = {"differential", "analysis_plots", "analysis_exports", "transit_fit", "transit_plots"}
# Jobs downstream of the analysis that must follow it (the night's summary and publication).
PUBLISH_RULES = {"night_summary", "publish_night"}


def planned_jobs(proc):
    """Rule names of the jobs a dry run would execute (without the target rule ``all``)."""
    return set(re.findall(r"^\s*(?:local)?rule (\w+):", proc.stdout + proc.stderr, flags=re.M)) - {"all"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One simulated night built through the whole workflow, plus the multi-night summary plot."""
    root = tmp_path_factory.mktemp("analysis_wf")
    # 120 frames at 40 s: 80 min around a 41-min transit (P 0.5 d, a/R* 6, b 0.3), six stars.
    # header_wcs: the frames carry their WCS (as PinPoint writes it), for the run with the target on the sky.
    night = make_analysis_night(root, n_science=120, readout_s=10.0, n_stars=6, transit_period_d=0.5,
                                a_rs=6.0, transit_offset_min=0.0, header_wcs=True)
    run_snakemake(root, ["all", SUMMARY_PLOT], config=night["config"])
    night["base"] = root / "results" / night["night"] / night["target"]
    return night


# ----------------------------------------------------------------------------- slow: whole workflow

@pytest.mark.slow
def test_analysis_products_published(built):
    base, target = built["base"], built["target"]
    names = ["photometry/differential.fits", "photometry/differential_summary.txt",
             "photometry/precision_metrics.fits", "exports/lc.dat", f"exports/{target}_aavso.txt",
             "transit/transit_fit.yaml", "transit/transit_fit.png", "transit/transit_fit_corner.png",
             "transit/transit_lc.ecsv"] + [f"plots/{p}.png" for p in PLOTS]
    for name in names:
        assert (base / name).is_file(), name
        # Published as a hard link of the work-tree product (same inode), not a copy.
        assert os.path.samefile(base / name, built["root"] / "work" / built["night"] / target / name)
    for name in [n for n in names if n.endswith(".png")] + [SUMMARY_PLOT]:
        path = base / name if not name.startswith("work/") else built["root"] / name
        img = imread(path)
        assert img.shape[0] > 200 and img[..., :3].std() > 0.05, name  # a drawn figure, not blank


@pytest.mark.slow
def test_transit_depth_matches_truth(built):
    """The fit is given the truth's period, t0 (start value), impact parameter (fixed) and limb
    darkening (prior centre); (Rp/R*)^2, mid-time and the orbit's size are free. The truth must lie
    in the 95 % intervals (a 1-in-20 miss per quantity for honest intervals; the coverage benchmark
    measures the rates), and the intervals must be informative (16-84 % half-width of (Rp/R*)^2
    below 15 % of it), or the check would be empty."""
    fit = yaml.safe_load((built["base"] / "transit" / "transit_fit.yaml").read_text())
    truth = built["truth"]["transit"]
    assert fit["success"], fit["message"]
    k2 = fit["rp_rs_sq"]
    assert 0.5 * (k2["p84"] - k2["p16"]) < 0.15 * truth["rp_rs"] ** 2
    assert k2["p2.5"] <= truth["rp_rs"] ** 2 <= k2["p97.5"], (k2, truth["rp_rs"] ** 2)
    drop = fit["max_flux_drop"]
    assert drop["p2.5"] <= truth["depth_at_t0"] <= drop["p97.5"], (drop, truth["depth_at_t0"])
    assert fit["t0"]["p2.5"] <= truth["t0_bjd_tdb"] <= fit["t0"]["p97.5"]
    assert fit["t14"]["p2.5"] * 1440 <= truth["t14_min"] <= fit["t14"]["p97.5"] * 1440


@pytest.mark.slow
def test_precision_close_to_noise_model(built):
    """Target, best aperture: observed 10-min rolling precision / theoretical noise (CCD equation
    with the masters' read noise and dark current + Osborn scintillation, target + ensemble).
    Requirement <= 1.2; >= 0.8 guards against a noise model inflated enough to pass trivially."""
    with fits.open(built["base"] / "photometry" / "precision_metrics.fits") as hdul:
        m = hdul["PRECISION"].data
        header = hdul["PRECISION"].header
    row = m[(m["star_number"] == 0) & m["is_best_aperture"]][0]
    assert 0.8 <= row["noise_ratio"] <= 1.2, (row["sigma_obs_10min"], row["sigma_theory_diff"])
    # The noise model read the night's masters, not the instrument's nominal 20 e-.
    calib = built["root"] / "work" / built["night"] / "calib"
    assert header["RDNOISE"] == pytest.approx(fits.getheader(calib / "master_bias.fits")["RDNOISE"])
    assert header["DARKCUR"] == pytest.approx(fits.getheader(calib / "master_dark.fits")["DARKCUR"])
    # The simulator's read noise is the instrument's 20 e-: the measured one is within 5 %.
    assert header["RDNOISE"] == pytest.approx(20.0, rel=0.05)


@pytest.mark.slow
def test_exports_match_the_light_curve(built):
    base, target = built["base"], built["target"]
    with fits.open(base / "photometry" / "differential.fits") as hdul:
        best = hdul[f"APER{int(hdul[0].header['BESTAPER'])}"].data
    kept = best["frame_ok"].astype(bool)
    rows = np.loadtxt(base / "exports" / "lc.dat", usecols=(0, 1, 2))
    assert len(rows) == kept.sum()
    np.testing.assert_allclose(rows[:, 0], best["BJD_TDB"][kept], atol=1e-8)  # written with 8 decimals
    np.testing.assert_allclose(rows[:, 1], best["diff_flux"][kept], rtol=1e-8)
    aavso = (base / "exports" / f"{target}_aavso.txt").read_text().splitlines()
    assert aavso[0] == "#TYPE=EXTENDED" and "#DATE=JD" in aavso
    data = [line.split(",") for line in aavso if not line.startswith("#")]
    assert len(data) == kept.sum() and all(d[0] == target and d[4] == "CV" for d in data)


def _dry_run(built, tmp_path, analysis_settings):
    """Jobs a dry run plans after ``analysis_settings`` are merged into the night file."""
    nights_dir = tmp_path / "nights"
    current = yaml.safe_load((built["nights_dir"] / f"{built['night']}.yaml").read_text())
    write_night_file(nights_dir, deep_merge(current, {"analysis_settings": analysis_settings}))
    config = dict(built["config"], nights_dir=nights_dir)
    return planned_jobs(run_snakemake(built["root"], ["all", SUMMARY_PLOT], config=config, extra=["-n"]))


@pytest.mark.slow
def test_nothing_to_do_after_a_build(built):
    assert planned_jobs(run_snakemake(built["root"], ["all", SUMMARY_PLOT], config=built["config"],
                                      extra=["-n"])) == set()


@pytest.mark.slow
def test_changed_differential_setting_reruns_only_the_analysis(built, tmp_path):
    jobs = _dry_run(built, tmp_path, {"outlier_sigma": 5.0})
    assert jobs == ANALYSIS_RULES | PUBLISH_RULES | {"precision_vs_brightness"}


@pytest.mark.slow
def test_changed_transit_setting_reruns_only_the_fit(built, tmp_path):
    jobs = _dry_run(built, tmp_path, {"transit": {built["target"]: {"u1": 0.3}}})
    assert jobs == {"transit_fit", "transit_plots"} | PUBLISH_RULES


@pytest.mark.slow
def test_changed_plot_setting_reruns_only_the_plots(built, tmp_path):
    assert _dry_run(built, tmp_path, {"bin_min": 5.0}) == {"analysis_plots"} | PUBLISH_RULES


# ----------------------------------------------------------------------------- fast: stage helpers

def test_differential_settings_follow_the_schema():
    """The schema's analysis_settings defaults are the package's: one source of truth in practice."""
    filled = validate({}, "night.schema.yaml", "test")["analysis_settings"]
    assert stages.differential_settings(filled) == DEFAULT_SETTINGS
    props = _schema("night.schema.yaml")["properties"]["analysis_settings"]["properties"]
    assert set(DEFAULT_SETTINGS) <= set(props)


def test_transit_settings_match_sanitised_names():
    settings = {"transit": {"XO-1 b": {"t0": 1.0}, "WASP-2": {"period": 2.0}, "W3": {"window": [1, 2]}}}
    assert stages.transit_settings(settings, "XO-1_b") == {"t0": 1.0}
    assert stages.transit_settings(settings, "WASP-2") is None      # no t0 or window: no fit
    assert stages.transit_settings(settings, "W3") == {"window": [1, 2]}
    assert stages.transit_settings({}, "XO-1_b") is None


def test_transit_entry_without_t0_or_window_is_a_config_error():
    from bandersnake.errors import ConfigError
    with pytest.raises(ConfigError, match="t0"):
        validate({"analysis_settings": {"transit": {"X": {"period": 1.0}}}}, "night.schema.yaml", "night file")
    with pytest.raises(ConfigError, match="'b' is a dependency of 'b_err'"):   # an error without its value
        validate({"analysis_settings": {"transit": {"X": {"t0": 1.0, "b_err": 0.1}}}}, "night.schema.yaml", "night file")


@pytest.mark.parametrize("name, code", [("z", "SZ"), ("z'", "SZ"), ("V", "V"), ("Ic", "I"), ("I+z", "CV")])
def test_aavso_filter_codes(name, code):
    assert stages.aavso_filter_code(name) == code
    assert stages.aavso_filter_code(name, override="TG") == "TG"


def test_master_noise_from_headers(tmp_path, caplog):
    bias, dark = tmp_path / "master_bias.fits", tmp_path / "master_dark.fits"
    fits.PrimaryHDU(header=fits.Header({"RDNOISE": 11.5})).writeto(bias)
    fits.PrimaryHDU(header=fits.Header({"DARKCUR": "unknown"})).writeto(dark)
    rn, dc = stages.master_noise(bias, dark)
    assert rn == 11.5 and dc is None                     # not a number: fall back, with a warning
    assert "no usable dark current" in caplog.text
    with pytest.raises(MissingProductError, match="master_dark"):
        stages.master_noise(bias, tmp_path / "absent.fits")


def test_filter_of_master_flat(tmp_path):
    flat = tmp_path / "master_flat_zYJ.fits"
    fits.PrimaryHDU(header=fits.Header({"FILTER": "zYJ"})).writeto(flat)
    assert stages.filter_of_master_flat(flat) == "zYJ"
    bare = tmp_path / "master_flat_I+z.fits"
    fits.PrimaryHDU().writeto(bare)
    assert stages.filter_of_master_flat(bare) == "I+z"  # no keyword: the file name


def test_missing_photometry_names_the_rule(tmp_path):
    bias, dark = tmp_path / "b.fits", tmp_path / "d.fits"
    fits.PrimaryHDU(header=fits.Header({"RDNOISE": 10.0})).writeto(bias)
    fits.PrimaryHDU(header=fits.Header({"DARKCUR": 0.1})).writeto(dark)
    out = {k: tmp_path / "photometry" / n for k, n in (("differential", "differential.fits"),
           ("summary", "differential_summary.txt"), ("metrics", "precision_metrics.fits"))}
    with pytest.raises(MissingProductError, match="run the photometry rule"):
        stages.differential_stage([tmp_path / "photometry" / "photometry_aper4.fits"],
                                  tmp_path / "centroiding" / "centroids.fits", bias, dark, INSTRUMENT, {}, out)


def test_transit_fit_that_cannot_run_does_not_stop_the_night(tmp_path):
    """Eight frames: too few for a fit. The stage writes success: false with the reason and a plot."""
    n = make_night(tmp_path, n_frames=8, radii=(4,), outliers=False)
    s = run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=tmp_path / "photometry")
    out_yaml, out_png = tmp_path / "transit" / "fit.yaml", tmp_path / "transit" / "fit.png"
    outputs = {"fit": out_yaml, "lc": tmp_path / "transit" / "lc.ecsv", "samples": tmp_path / "transit" / "samples.fits"}
    report = transit_fit_stage(s["paths"]["differential"], n["centroid_path"], outputs, {"t0": float(n["bjd"][4])})
    assert report["success"] is False and "too few" in report["message"]
    assert yaml.safe_load(out_yaml.read_text())["success"] is False
    transit_plots_stage(out_yaml, outputs["lc"], outputs["samples"], s["paths"]["differential"],
                        {"plot": out_png, "corner": tmp_path / "transit" / "corner.png"})
    assert imread(out_png).shape[0] > 200


@pytest.mark.slow
def test_target_given_on_the_sky_matches_hand_picked(built, tmp_path):
    """The same night with the target given only by RA/Dec: the pipeline places it through the
    frames' WCS and picks the comparisons itself (bandersnake.placement). Measured: depth
    1.135 +- 0.076 % vs truth 1.167 % (0.4 sigma; hand-picked 1.118 +- 0.081 %), out-of-transit
    scatter 0.210 % vs 0.208 % hand-picked (+0.8 %)."""
    from test_placement import _oot_scatter

    target, name = built["target"], built["night"]
    fit_file = f"work/{name}/{target}/transit/transit_fit.yaml"
    diff_file = f"work/{name}/{target}/photometry/differential.fits"
    tr = built["truth"]["target"]
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump(
        {"targets": {target: [{"start_date": "20200101", "ra": float(tr["ra_deg"]), "dec": float(tr["dec_deg"])}]}}))
    run_snakemake(tmp_path, [fit_file, diff_file], config=dict(built["config"], targets_file=tmp_path / "targets.yaml"))
    entry = yaml.safe_load((tmp_path / f"work/{name}/{target}/targets_resolved.yaml").read_text())["targets"][target][0]
    # The target lands on its true first-frame position (the detection's centroid: < 0.3 px).
    star0 = built["truth"]["stars"][0]
    assert np.hypot(entry["all_star_positions"][0][0] - star0["x_first"],
                    entry["all_star_positions"][0][1] - star0["y_first"]) < 0.3
    assert len(entry["all_star_positions"]) >= 3
    fit = yaml.safe_load((tmp_path / fit_file).read_text())
    truth = built["truth"]["transit"]
    # The bars: depth within 1 sigma of the truth, out-of-transit scatter within 10 % of
    # the hand-picked run's.
    # the transit fit reports posteriors (issue 19): the deepest flux drop's 95 % interval holds the truth
    drop = fit["max_flux_drop"]
    assert fit["success"] and drop["p2.5"] <= truth["depth_at_t0"] <= drop["p97.5"], (drop, truth["depth_at_t0"])
    s_hand = _oot_scatter(built["root"] / diff_file, truth)
    s_sky = _oot_scatter(tmp_path / diff_file, truth)
    assert abs(s_sky - s_hand) <= 0.1 * s_hand, (s_sky, s_hand)
