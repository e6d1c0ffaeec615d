"""Configuration checked before any job runs (issue 17, item 5): each problem one line naming the
file and the key, never a traceback or a schema dump."""

import copy

import pytest
import yaml

from bandersnake import preflight
from bandersnake.config import validate

from conftest import ROOT, run_snakemake

DEFAULT_PHOT = validate({}, "night.schema.yaml", "test")["photometry_settings"]


def _phot(**kw):
    return dict(copy.deepcopy(DEFAULT_PHOT), **kw)


def test_defaults_have_no_problem():
    assert preflight.photometry_problems(_phot(), "x") == []


@pytest.mark.parametrize("kw, words", [
    (dict(aper_min=13), ["aper_min (13)", "aper_max (12)"]),
    # Before: the annulus inside the largest aperture gave an all-NaN night that exited 0.
    (dict(SKYRAD_inner=10), ["SKYRAD_inner (10 px)", "aper_max (12 px)"]),
    (dict(SKYRAD_inner=30, SKYRAD_outer=25), ["SKYRAD_outer (25 px)", "SKYRAD_inner (30 px)"]),
])
def test_radii_order(kw, words):
    problems = preflight.photometry_problems(_phot(**kw), "nights/SPIRIT2_20251215.yaml")
    assert len(problems) == 1
    assert problems[0].startswith("nights/SPIRIT2_20251215.yaml: photometry_settings")
    assert all(w in problems[0] for w in words)


def _targets(track=1, n=4):
    return {"targets": {"T-1": [{"start_date": "20250101", "all_star_positions": [[i, i] for i in range(n)],
                                 "tracking_star": track}]}}


def test_transit_prior_ranges():
    good = {"transit": {"XO1-b": {"t0": 2460828.7, "gp_h_range": [0.05, 2], "gp_tau_range_min": [40, 5]}}}
    assert preflight.transit_problems(good, "x") == []      # a range in either order
    bad = {"transit": {"XO1-b": {"t0": 2460828.7, "gp_h_range": [0.5, 0.5]}}}
    assert preflight.transit_problems(bad, "nights/ARCSAT_20250602.yaml") == [
        "nights/ARCSAT_20250602.yaml: analysis_settings.transit.XO1-b.gp_h_range: [0.5, 0.5] is a single value, "
        "not a range"]


def test_tracking_star_index():
    assert preflight.targets_problems(_targets(track=3), "t.yaml") == []
    (problem,) = preflight.targets_problems(_targets(track=4), "t.yaml")
    assert problem.startswith("t.yaml: targets.T-1[0]") and "tracking_star: 4" in problem and "0..3" in problem


def test_targets_on_the_sky_are_checked_without_pixel_positions():
    # A target given by ra/dec only has no pixel list (the pipeline chooses 1 + n_comparisons stars);
    # all_star_coords count like pixel positions.
    sky = validate({"targets": {"S-1": {"ra": 10.0, "dec": 20.0, "n_comparisons": 5}}}, "targets.schema.yaml", "t")
    assert preflight.targets_problems(sky, "t.yaml") == []
    assert preflight.comparisons_problems({"comparisons": [5]}, sky, "x") == []
    assert preflight.comparisons_problems({"comparisons": [6]}, sky, "x") != []
    coords = validate({"targets": {"S-1": {"all_star_coords": [[10, 20], [10.1, 20]], "tracking_star": 2}}},
                      "targets.schema.yaml", "t")
    (problem,) = preflight.targets_problems(coords, "t.yaml")
    assert "tracking_star: 2" in problem and "0..1" in problem


def test_comparisons_indices():
    assert preflight.comparisons_problems({"comparisons": None}, _targets(), "x") == []
    assert preflight.comparisons_problems({"comparisons": [1, 3]}, _targets(), "x") == []
    (problem,) = preflight.comparisons_problems({"comparisons": [2, 7]}, _targets(), "cfg.yaml")
    assert "cfg.yaml: analysis_settings.comparisons: [7]" in problem and "1..3" in problem


def test_night_file_names_and_sections(tmp_path):
    good = tmp_path / "SPIRIT2_20251215.yaml"
    good.write_text(yaml.safe_dump({"photometry_settings": {"SKYRAD_inner": 16},
                                    "paths": {"raw": "/x"}}))  # bandersnatch's legacy section: ignored
    assert preflight.night_file_problems(good) == []
    typo = tmp_path / "20251215.yaml"
    typo.write_text(yaml.safe_dump({"photometry_setting": {"aper_max": 5}}))
    (problem,) = preflight.night_file_problems(typo)
    assert problem == f"{typo}: photometry_setting: unknown key (did you mean 'photometry_settings'?)"
    nested = tmp_path / "20251216.yaml"
    nested.write_text(yaml.safe_dump({"photometry_settings": {"aper_mx": 5}}))
    (problem,) = preflight.night_file_problems(nested)
    assert "photometry_settings.aper_mx: unknown key (did you mean 'aper_max'?)" in problem
    badname = tmp_path / "SPIRIT2-20251215.yaml"
    badname.write_text("{}")
    assert "not a night file name" in preflight.night_file_problems(badname)[0]


def test_requested_nights():
    args = ["--cores", "4", "results/SPIRIT2_20251215/", "work/ARCSAT_20250602/calib/inventory.ecsv",
            "./results/SPIRIT2_20251215", "--config", "raw_root=x", "other_20250101"]
    assert preflight.requested_nights(args, ["results", "work/"]) == ["SPIRIT2_20251215", "ARCSAT_20250602"]


def test_missing_night_folder_named(tmp_path):
    (tmp_path / "SPIRIT2" / "images" / "20251215").mkdir(parents=True)
    (tmp_path / "SPIRIT2" / "images" / "20251215" / "a.fits").write_bytes(b"")
    layout = "{raw_root}/{inst}/images/{date}"
    assert preflight.check_night_raw("SPIRIT2_20251215", layout, tmp_path) is None
    message = preflight.check_night_raw("SPIRIT2_20251216", layout, tmp_path)
    assert f"searched {tmp_path}/SPIRIT2/images/20251216" in message
    assert "nights of SPIRIT2 found: SPIRIT2_20251215" in message


# ---------------------------------------------------------------- through snakemake (dry runs)
def _raw_tree(root):
    night = root / "raw" / "SPIRIT2" / "images" / "20251215"
    night.mkdir(parents=True)
    (night / "a.fits").write_bytes(b"")
    return root / "raw"


def _output(proc):
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_workflow_stops_with_every_problem_before_any_job(tmp_path):
    raw = _raw_tree(tmp_path)
    nights = tmp_path / "nights"
    nights.mkdir()
    (nights / "SPIRIT2_20251215.yaml").write_text(yaml.safe_dump({"photometry_settings": {"SKYRAD_outer": 14}}))
    (nights / "20251215.yaml").write_text(yaml.safe_dump({"centroid_setings": {}}))
    targets = yaml.safe_load((ROOT / "config" / "targets.yaml").read_text())
    targets["targets"]["SIM-1b"][0]["tracking_star"] = 40
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump(targets))
    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump({"night_defaults": {"photometry_settings": {"aper_min": 13},
                                                       "analysis_settings": {"comparisons": [2, 30]}}}))
    proc = run_snakemake(tmp_path, targets=["results/SPIRIT2_20251215/"],
                         config={"raw_root": raw, "nights_dir": nights, "targets_file": tmp_path / "targets.yaml"},
                         extra=["-n", "--configfile", str(over)], check=False)
    out = _output(proc)
    assert proc.returncode != 0
    assert "Traceback" not in out and "Failed validating" not in out  # no traceback, no schema dump
    assert "5 configuration problems (nothing was run)" in out, out[-3000:]
    for words in ("aper_min (13) is larger than aper_max (12)", "tracking_star: 40",
                  "analysis_settings.comparisons: [30]", "20251215.yaml: centroid_setings: unknown key "
                  "(did you mean 'centroid_settings'?)",
                  "SPIRIT2_20251215.yaml: photometry_settings: SKYRAD_outer (14 px) must be larger"):
        assert words in out, words
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["raw_root", "night", "default_target"])
def test_missing_raw_folders_named(tmp_path, case):
    raw = _raw_tree(tmp_path)
    if case == "raw_root":
        proc = run_snakemake(tmp_path, config={"raw_root": tmp_path / "nope"}, extra=["-n"], check=False)
        expected = f"raw_root {tmp_path / 'nope'}: folder not found"
    elif case == "night":
        proc = run_snakemake(tmp_path, targets=["results/SPIRIT2_20251216/"], config={"raw_root": raw},
                             extra=["-n"], check=False)
        expected = (f"night SPIRIT2_20251216: no raw folder; searched {raw}/SPIRIT2/images/20251216")
    else:
        empty = tmp_path / "empty"
        empty.mkdir()
        proc = run_snakemake(tmp_path, config={"raw_root": empty}, extra=["-n"], check=False)
        expected = f"no night to build under raw_root {empty}"
    assert proc.returncode != 0
    assert expected in _output(proc), _output(proc)[-2000:]


def test_comparisons_with_several_targets():
    """One list serves every target: wrong only when no applicable target entry has the star."""
    targets = {"targets": {"A": [{"start_date": "20250101", "all_star_positions": [[0, 0]] * 4, "tracking_star": 1},
                                 {"start_date": "20250601", "all_star_positions": [[0, 0]] * 9, "tracking_star": 1}],
                           "B": {"all_star_positions": [[0, 0]] * 6, "tracking_star": 1}}}
    assert preflight.comparisons_problems({"comparisons": [7]}, targets, "x") == []
    assert preflight.comparisons_problems({"comparisons": [7]}, targets, "n.yaml", date="20250602") == []
    (problem,) = preflight.comparisons_problems({"comparisons": [7]}, targets, "n.yaml", date="20250301")
    assert "[7]" in problem and "stars 1..5" in problem
