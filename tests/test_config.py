"""Configuration: schemas fill defaults, unknown or mistyped keys fail naming the key and file."""

import pytest
import yaml

from bandersnake.config import (coerce_command_line_scalars, discover_nights, load_instrument, night_settings,
                                parse_night_id, raw_night_dir, validate)
from bandersnake.errors import ConfigError

from conftest import ROOT, run_snakemake

INSTRUMENTS = ROOT / "config" / "instruments"


@pytest.mark.parametrize("name", ["SPIRIT2", "ARCSAT", "MAXIM", "ASTEP"])
def test_shipped_instruments_validate(name):
    inst = load_instrument(INSTRUMENTS, name)
    assert inst["gain_e_per_adu"] > 0 and inst["site"]["altitude_m"] >= 0
    # Defaults come from the schema (ASTEP lists its own ACQTYPE values).
    assert ("BIAS" if name == "ASTEP" else "Bias Frame") in inst["imagetyp_values"]["bias"]
    assert inst["scintillation"]["C_Y"] == pytest.approx(1.5)


def test_instrument_unknown_key_named(tmp_path):
    data = yaml.safe_load((INSTRUMENTS / "MAXIM.yaml").read_text())
    data["gain"] = 1.2  # bandersnatch's unit-less name: must be gain_e_per_adu here
    (tmp_path / "MAXIM.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"MAXIM.yaml.*'gain' was unexpected"):
        load_instrument(tmp_path, "MAXIM")


def test_missing_instrument_lists_known():
    with pytest.raises(ConfigError, match="known: ARCSAT, ASTEP, MAXIM, SPIRIT2"):
        load_instrument(INSTRUMENTS, "NOPE")


def test_night_settings_merge_and_defaults(tmp_path):
    (tmp_path / "20251215.yaml").write_text(yaml.safe_dump({
        "instrument_settings": {"inst": "SPIRIT2", "date": "20251215", "discard_n_first_science": 3},
        "processing_flags": {"to_make_lists": True},   # bandersnatch's legacy section, ignored
        "centroid_settings": {"star0_positions": {"SIM-1b": [10.5, 20.25]}}}))
    (tmp_path / "SPIRIT2_20251215.yaml").write_text(yaml.safe_dump({"calibration_params": {"flat_MAD_clip": 4}}))
    settings = night_settings({"calibration_params": {"flat_MAD_clip": 2, "bias_MAD_clip": 6}}, tmp_path,
                              "SPIRIT2_20251215")
    assert settings["instrument_settings"]["discard_n_first_science"] == 3
    assert settings["calibration_params"]["flat_MAD_clip"] == 4      # per-night file wins
    assert settings["calibration_params"]["bias_MAD_clip"] == 6      # night_defaults kept
    assert settings["calibration_params"]["dark_MAD_clip"] == 5      # schema default
    assert settings["centroid_settings"]["star0_positions"]["SIM-1b"] == [10.5, 20.25]
    assert settings["photometry_settings"]["aper_min"] == 2


def test_night_settings_typo_named(tmp_path):
    (tmp_path / "SPIRIT2_20251215.yaml").write_text(yaml.safe_dump({"centroid_settings": {"boxsiz": 12}}))
    with pytest.raises(ConfigError, match=r"SPIRIT2_20251215.*'boxsiz' was unexpected"):
        night_settings({}, tmp_path, "SPIRIT2_20251215")


def test_wrong_type_named():
    with pytest.raises(ConfigError, match="calibration_params/bias_MAD_clip"):
        validate({"calibration_params": {"bias_MAD_clip": "five"}}, "night.schema.yaml", "test")


def test_command_line_strings_become_schema_types():
    # what snakemake --config makes of 'processing={"fork_server": false, "threads": 4}' (YAML BaseLoader)
    config = {"processing": {"fork_server": "false", "threads": "4", "path": "streaming"}, "raw_root": "1"}
    coerce_command_line_scalars(config, "config.schema.yaml")
    assert config == {"processing": {"fork_server": False, "threads": 4, "path": "streaming"}, "raw_root": "1"}
    night = {"analysis_settings": {"transit": {"XO1-b": {"t0": "2460828.76", "noise": "gp", "n_tau": "30",
                                                "stellar_density_err": "1e-1", "window": ["0.5", "0.7"]}}},
             "calibration_params": {"bias_MAD_clip": "five"}}
    coerce_command_line_scalars(night, "night.schema.yaml")
    assert night["analysis_settings"]["transit"]["XO1-b"] == {"t0": 2460828.76, "noise": "gp", "n_tau": 30.0,
                                                     "stellar_density_err": 0.1, "window": [0.5, 0.7]}
    # a string that reads as no number stays, for the schema to name
    assert night["calibration_params"]["bias_MAD_clip"] == "five"
    with pytest.raises(ConfigError, match="bias_MAD_clip"):
        validate(night, "night.schema.yaml", "test")


def test_workflow_reads_nested_command_line_values(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    proc = run_snakemake(tmp_path, config={"raw_root": raw, "processing": '{"fork_server": false, "threads": 1}'},
                         extra=["-n"], check=False)
    # past the configuration's checks, up to the (empty) raw tree
    assert "no night to build" in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "processing/" not in proc.stdout + proc.stderr
    proc = run_snakemake(tmp_path, config={"raw_root": raw, "processing": '{"threads": "many"}'}, extra=["-n"],
                         check=False)
    assert proc.returncode != 0 and "processing/threads" in proc.stdout + proc.stderr


def test_night_ids_and_discovery(tmp_path):
    assert parse_night_id("SPIRIT2_20251215") == ("SPIRIT2", "20251215")
    with pytest.raises(ConfigError):
        parse_night_id("SPIRIT2-20251215")
    layout = "{raw_root}/{inst}/images/{date}"
    for night in ("20251215", "20251216", "notadate"):
        (tmp_path / "SPIRIT2" / "images" / night).mkdir(parents=True)
    (tmp_path / "SPIRIT2" / "images" / "20251215" / "a.fits").write_bytes(b"")
    assert discover_nights(layout, tmp_path, ["SPIRIT2", "ARCSAT"]) == ["SPIRIT2_20251215"]  # empty night skipped
    assert raw_night_dir(layout, "/nas", "ARCSAT_20250602").as_posix() == "/nas/ARCSAT/images/20250602"


def test_workflow_rejects_unknown_config_key(tmp_path):
    proc = run_snakemake(tmp_path, config={"raw_root": tmp_path, "bogus_key": 1}, extra=["-n"], check=False)
    assert proc.returncode != 0
    assert "bogus_key: unknown key" in proc.stdout + proc.stderr


def test_workflow_rejects_bad_targets_file(tmp_path):
    bad = tmp_path / "targets.yaml"
    bad.write_text(yaml.safe_dump({"targets": {"T": [{"start_date": "20250101", "all_star_positions": [[1, 2]]}]}}))
    proc = run_snakemake(tmp_path, config={"raw_root": tmp_path, "targets_file": bad}, extra=["-n"], check=False)
    assert proc.returncode != 0
    assert "targets.yaml" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- raw layouts (issue 5)
ASTEP_LAYOUT = "{raw_root}/{date_iso}/{date_iso}-CAMS*"


def _astep_tree(root):
    for date, subs in (("2025-04-03", ("CAMS", "CAMS_SKYFLAT")), ("2025-04-04", ("CAMS",)),
                       ("2025-04-05", ("CAMS",)), ("notes", ())):
        for sub in subs:
            folder = root / date / f"{date}-{sub}"
            folder.mkdir(parents=True)
            if date != "2025-04-05":  # an empty date is not a night
                (folder / f"{date}_01.00.00_SCIENCE.fits").write_bytes(b"")
    (root / "2025-04-06").mkdir()
    (root / "2025-04-06" / "2025-04-07-CAMS").mkdir()  # inner date differs: not matched
    (root / "2025-04-06" / "2025-04-07-CAMS" / "x.fits").write_bytes(b"")


def test_astep_layout_discovery_and_folders(tmp_path):
    from bandersnake.config import raw_night_dirs

    root = tmp_path / "data [v1]"  # glob characters in raw_root are taken literally
    _astep_tree(root)
    nights = discover_nights("{raw_root}/{inst}/images/{date}", root, ["ASTEP", "SPIRIT2"],
                             layouts={"ASTEP": ASTEP_LAYOUT})
    assert nights == ["ASTEP_20250403", "ASTEP_20250404"]
    dirs = raw_night_dirs(ASTEP_LAYOUT, root, "ASTEP_20250403")
    assert [d.name for d in dirs] == ["2025-04-03-CAMS", "2025-04-03-CAMS_SKYFLAT"]
    assert raw_night_dirs(ASTEP_LAYOUT, root, "ASTEP_20250410") == []
    # The shipped ASTEP file carries this layout and its night settings.
    inst = load_instrument(INSTRUMENTS, "ASTEP")
    assert inst["raw_layout"] == ASTEP_LAYOUT and inst["frame_type_source"] == "filename"
    settings = night_settings({}, tmp_path, "ASTEP_20250403", inst["night_settings"])
    assert settings["calibrated_frames"]["enabled"] and settings["kbmod"]["enabled"]
    assert settings["calibration_params"]["dark_exposure_matching"]
    spirit = night_settings({}, tmp_path, "SPIRIT2_20251215", load_instrument(INSTRUMENTS, "SPIRIT2")["night_settings"])
    assert not spirit["calibrated_frames"]["enabled"]  # the demo stays fast


def test_layout_errors_named():
    with pytest.raises(ConfigError, match="needs {date} or {date_iso}"):
        discover_nights("{raw_root}/{inst}", "/nas", ["X"])
    with pytest.raises(ConfigError, match="unknown or malformed field"):
        raw_night_dir("{raw_root}/{night}", "/nas", "X_20250101")


def test_night_file_overrides_instrument_settings(tmp_path):
    (tmp_path / "ASTEP_20250403.yaml").write_text(yaml.safe_dump({"kbmod": {"enabled": False}}))
    inst = load_instrument(INSTRUMENTS, "ASTEP")
    s = night_settings({"cosmics": {"sigclip": 5.0}}, tmp_path, "ASTEP_20250403", inst["night_settings"])
    assert s["kbmod"]["enabled"] is False and s["astrometry"]["enabled"] is True
    assert s["cosmics"]["sigclip"] == 5.0


def test_cosmics_schema_defaults_match_package():
    from bandersnake.calibration import cosmics

    s = validate({}, "night.schema.yaml", "test")
    # The schema documents the same defaults the package uses.
    assert {k: s["cosmics"][k] for k in cosmics.DEFAULTS} == cosmics.DEFAULTS
