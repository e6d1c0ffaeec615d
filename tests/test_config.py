"""Configuration: schemas fill defaults, unknown or mistyped keys fail naming the key and file."""

import pytest
import yaml

from bandersnake.config import (discover_nights, load_instrument, night_settings, parse_night_id,
                                raw_night_dir, validate)
from bandersnake.errors import ConfigError

from conftest import ROOT, run_snakemake

INSTRUMENTS = ROOT / "config" / "instruments"


@pytest.mark.parametrize("name", ["SPIRIT2", "ARCSAT", "MAXIM"])
def test_shipped_instruments_validate(name):
    inst = load_instrument(INSTRUMENTS, name)
    assert inst["gain_e_per_adu"] > 0 and inst["site"]["altitude_m"] >= 0
    # Defaults come from the schema.
    assert "Bias Frame" in inst["imagetyp_values"]["bias"]
    assert inst["scintillation"]["C_Y"] == pytest.approx(1.5)


def test_instrument_unknown_key_named(tmp_path):
    data = yaml.safe_load((INSTRUMENTS / "MAXIM.yaml").read_text())
    data["gain"] = 1.2  # bandersnatch's unit-less name: must be gain_e_per_adu here
    (tmp_path / "MAXIM.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"MAXIM.yaml.*'gain' was unexpected"):
        load_instrument(tmp_path, "MAXIM")


def test_missing_instrument_lists_known():
    with pytest.raises(ConfigError, match="known: ARCSAT, MAXIM, SPIRIT2"):
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
    assert "'bogus_key' was unexpected" in proc.stdout + proc.stderr


def test_workflow_rejects_bad_targets_file(tmp_path):
    bad = tmp_path / "targets.yaml"
    bad.write_text(yaml.safe_dump({"targets": {"T": [{"start_date": "20250101", "all_star_positions": [[1, 2]]}]}}))
    proc = run_snakemake(tmp_path, config={"raw_root": tmp_path, "targets_file": bad}, extra=["-n"], check=False)
    assert proc.returncode != 0
    assert "targets.yaml" in proc.stdout + proc.stderr
