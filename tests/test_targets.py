"""targets.yaml lookup: dated entries, legacy entries, star0 offsets, clear errors."""

import numpy as np
import pytest

from bandersnake.errors import ConfigError
from bandersnake.photometry.targets import load_targets, resolve_target, sanitize

YAML = """
targets:
  TOI-696c:
    - start_date: "20250101"
      all_star_positions: [[465.205, 661.977], [523.45, 702.31], [412.89, 598.23]]
      tracking_star: 1
    - start_date: "20251201"
      all_star_positions: [[466.0, 663.0], [524.0, 703.0], [413.0, 599.0]]
      tracking_star: 2
      ra: "04 21 12.3"
      dec: "-12 30 00"
  "Sp 1255-5928":
    all_star_positions: [[512.3, 489.1], [478.2, 512.8]]
    tracking_star: 1
"""


@pytest.fixture
def tfile(tmp_path):
    p = tmp_path / "targets.yaml"
    p.write_text(YAML)
    return p


def test_dated_entry_choice(tfile):
    a = resolve_target(tfile, "TOI-696c", "20251130")
    assert a.start_date == "20250101" and a.tracking_star == 1 and a.positions[0, 0] == 465.205
    b = resolve_target(tfile, "TOI-696c", "20251201")
    assert b.start_date == "20251201" and b.tracking_star == 2 and b.ra == "04 21 12.3"
    assert "start_date 20251201" in b.source


def test_legacy_and_sanitized_name(tfile):
    e = resolve_target(load_targets(tfile), "Sp_1255-5928", "19990101")
    assert e.start_date is None and e.n_stars == 2 and e.name == sanitize("Sp 1255-5928")


def test_star0_offset_moves_all_stars(tfile):
    e = resolve_target(tfile, "TOI-696c", "20250601", star0_positions={"TOI-696c": [470.205, 660.977]})
    np.testing.assert_allclose(e.star0_offset, [5.0, -1.0])
    np.testing.assert_allclose(e.positions[2], [417.89, 597.23])
    np.testing.assert_allclose(e.positions[0], [470.205, 660.977])
    same = resolve_target(tfile, "TOI-696c", "20250601", star0_positions={"OTHER": [1, 2]})
    np.testing.assert_allclose(same.positions[0], [465.205, 661.977])


def test_errors_name_file_and_problem(tfile, tmp_path):
    with pytest.raises(ConfigError, match="target 'XO-1' not found"):
        resolve_target(tfile, "XO-1", "20250101")
    with pytest.raises(ConfigError, match="no entry valid on 20240101"):
        resolve_target(tfile, "TOI-696c", "20240101")
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets:\n  X:\n    all_star_positions: [[1, 2]]\n    tracking_star: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml.*tracking_star 3"):
        resolve_target(bad, "X", "20250101")
    with pytest.raises(ConfigError, match="not found"):
        load_targets(tmp_path / "missing.yaml")
