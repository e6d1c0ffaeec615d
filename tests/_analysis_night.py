"""A simulated night set up for the analysis workflow tests (test_analysis_workflow, test_report).

The simulator's small 256x256 night, with the SPIRIT2 instrument file cut to that shape, a
targets file with the true first-frame positions, and a night file whose
``analysis_settings.transit`` gives the target the true ephemeris (so the transit fit runs).
"""

from pathlib import Path

import yaml

from bandersnake.config import load_instrument
from bandersnake.sim.night import simulate_night, small_config

from conftest import ROOT

NIGHT = "SPIRIT2_20240310"


def make_analysis_night(root, seed=3, transit_keys=("t0", "period", "b", "u1", "u2"), **overrides):
    """Simulate ``NIGHT`` under ``root`` and write its configuration.

    Parameters
    ----------
    root : Path
        Working directory of the test (raw/, truth/, instruments/, nights/, targets.yaml).
    transit_keys : tuple of str
        Truth values given to the transit fit (names of the fit settings).
    overrides : dict
        :class:`bandersnake.sim.night.SimConfig` fields replacing ``small_config``'s.

    Returns
    -------
    dict
        ``root``, ``night``, ``target``, ``truth`` (truth.yaml), ``config`` (``--config`` items),
        ``nights_dir``.
    """
    root = Path(root)
    spirit2 = yaml.safe_load((ROOT / "config" / "instruments" / "SPIRIT2.yaml").read_text())
    spirit2["shape"] = [256, 256]  # the small simulated night is a 256x256 sub-frame
    (root / "instruments").mkdir(parents=True, exist_ok=True)
    (root / "instruments" / "SPIRIT2.yaml").write_text(yaml.safe_dump(spirit2))
    inst = load_instrument(root / "instruments", "SPIRIT2")
    cfg = small_config(date=NIGHT.split("_")[1], seed=seed, **overrides)
    truth = simulate_night(root / "raw", root / "truth", cfg, inst)
    targets = yaml.safe_load((root / "truth" / "targets.yaml").read_text())
    (root / "targets.yaml").write_text(yaml.safe_dump(targets))
    target = next(iter(targets["targets"]))
    tr = truth["transit"]
    source = {"t0": tr["t0_bjd_tdb"], "period": tr["period_d"], "b": tr["impact_parameter"],
              "u1": tr["u1"], "u2": tr["u2"]}
    nights_dir = root / "nights"
    nights_dir.mkdir(exist_ok=True)
    write_night_file(nights_dir, {"analysis_settings": {"transit": {target: {k: float(source[k]) for k in transit_keys}}}})
    config = dict(raw_root=root / "raw", targets_file=root / "targets.yaml", nights_dir=nights_dir,
                  instruments_dir=root / "instruments")
    return dict(root=root, night=NIGHT, target=target, truth=truth, config=config, nights_dir=nights_dir)


def write_night_file(nights_dir, settings):
    """Write ``settings`` as the night file of ``NIGHT`` in ``nights_dir``."""
    Path(nights_dir).mkdir(parents=True, exist_ok=True)
    (Path(nights_dir) / f"{NIGHT}.yaml").write_text(yaml.safe_dump(settings))
