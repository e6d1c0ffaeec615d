"""targets.yaml lookup: reference star positions and tracking star of a target on a night.

Format (bandersnatch's, schema ``config/schemas/targets.schema.yaml``)::

    targets:
      TOI-696c:
        - start_date: "20250101"
          all_star_positions: [[465.205, 661.977], [523.45, 702.31]]   # [x, y], 0-based px
          tracking_star: 1
        - start_date: "20251201"
          ...
      Legacy-Target:                 # legacy single entry, valid for every date
        all_star_positions: [[512.3, 489.1], [478.2, 512.8]]
        tracking_star: 1

The entry with the most recent ``start_date`` on or before the night's date applies. A night's
``star0_positions[target] = [x, y]`` moves every star by ``star0 - all_star_positions[0]``.
"""

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

_BAD_CHARS = re.compile(r"[^A-Za-z0-9+._-]")


def sanitize(name):
    """Target name as in the inventory: characters outside ``[A-Za-z0-9+._-]`` become ``_``."""
    return _BAD_CHARS.sub("_", str(name).strip())


@dataclass
class TargetEntry:
    """Star positions of one target for one night.

    Attributes
    ----------
    name : str
    positions : ndarray, shape (n_stars, 2)
        ``[x, y]`` per star (px, 0-based); star 0 is the target.
    tracking_star : int
    start_date : str or None
        ``YYYYMMDD`` of the entry used (None for a legacy entry).
    ra, dec : float or str or None
        Target coordinates when targets.yaml gives them.
    star0_offset : ndarray, shape (2,)
        Offset applied from the night's ``star0_positions`` (px).
    source : str
        Where the entry came from (file and key), for headers and logs.
    """

    name: str
    positions: np.ndarray
    tracking_star: int
    start_date: str | None = None
    ra: object = None
    dec: object = None
    star0_offset: np.ndarray = field(default_factory=lambda: np.zeros(2))
    source: str = ""

    @property
    def n_stars(self):
        return len(self.positions)


def load_targets(path):
    """Read targets.yaml and return its ``targets`` mapping (a top-level mapping is accepted too)."""
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: targets file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'targets' key")
    return data.get("targets", data)


def _pick_entry(value, date, where):
    if isinstance(value, dict):
        return value, None
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected an entry or a list of dated entries")
    dated = []
    for k, e in enumerate(value):
        if not isinstance(e, dict) or "start_date" not in e:
            raise ConfigError(f"{where}[{k}]: a dated entry needs start_date (YYYYMMDD)")
        dated.append((str(e["start_date"]), e))
    valid = [(d, e) for d, e in dated if d <= date]
    if not valid:
        first = min(d for d, _ in dated)
        raise ConfigError(f"{where}: no entry valid on {date} (earliest start_date {first})")
    d, e = max(valid, key=lambda de: de[0])
    return e, d


def resolve_target(targets, name, date, star0_positions=None, source="targets.yaml"):
    """Star positions and tracking star of ``name`` on night ``date``.

    Parameters
    ----------
    targets : dict or str or Path
        The ``targets`` mapping, or the path of targets.yaml.
    name : str
        Target name (as in the inventory; compared also after :func:`sanitize`).
    date : str
        Night date ``YYYYMMDD``.
    star0_positions : dict, optional
        The night's ``centroid_settings.star0_positions``; when it has the target, every star
        is moved by ``star0 - all_star_positions[0]``.

    Returns
    -------
    TargetEntry

    Raises
    ------
    ConfigError
        Unknown target, no entry valid on the date, malformed positions or tracking star.
    """
    if not isinstance(targets, dict):
        source = str(targets)
        targets = load_targets(targets)
    date = str(date)
    key = name if name in targets else next((k for k in targets if sanitize(k) == sanitize(name)), None)
    if key is None:
        raise ConfigError(f"{source}: target {name!r} not found (known: {', '.join(sorted(map(str, targets))) or 'none'})")
    where = f"{source}: targets.{key}"
    entry, start = _pick_entry(targets[key], date, where)
    try:
        pos = np.asarray(entry["all_star_positions"], dtype=np.float64)
        track = int(entry["tracking_star"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: needs all_star_positions [[x, y], ...] and tracking_star ({err})") from None
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0 or not np.isfinite(pos).all():
        raise ConfigError(f"{where}: all_star_positions must be a non-empty list of finite [x, y]")
    if not 0 <= track < len(pos):
        raise ConfigError(f"{where}: tracking_star {track} is not a star index (0..{len(pos) - 1})")
    offset = np.zeros(2)
    star0 = (star0_positions or {})
    s0 = star0.get(name, star0.get(key, star0.get(sanitize(name))))
    if s0 is not None:
        s0 = np.asarray(s0, dtype=np.float64)
        if s0.shape != (2,) or not np.isfinite(s0).all():
            raise ConfigError(f"star0_positions[{name}]: expected [x, y]")
        offset = s0 - pos[0]
        pos = pos + offset
    return TargetEntry(name=sanitize(name), positions=pos, tracking_star=track, start_date=start,
                       ra=entry.get("ra"), dec=entry.get("dec"), star0_offset=offset,
                       source=where + (f" (start_date {start})" if start else " (legacy entry)"))


def resolve_for_night(targets_file, settings):
    """:func:`resolve_target` for a photometry job's settings (``target``, ``date``, ``centroid``)."""
    return resolve_target(targets_file, settings["target"], settings["date"],
                          star0_positions=settings["centroid"]["star0_positions"])
