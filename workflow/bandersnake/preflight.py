"""Configuration checked before any job runs: each problem in one line naming the file and the key.

The Snakefile calls :func:`check_workflow` when it is parsed; the problems it returns stop the run
before the DAG is built, with no traceback and no schema dump. What the JSON schemas cannot say
(relations between keys, indices into targets.yaml, file names, folders on disk) is checked here:

* ``photometry_settings``: ``aper_min <= aper_max < SKYRAD_inner < SKYRAD_outer`` (a sky annulus
  inside the largest aperture gives an all-NaN night that still "succeeds"), the aperture range
  set only in ``night_defaults`` (it names the output files);
* targets.yaml: every entry's ``tracking_star`` is a star index;
* ``analysis_settings.comparisons``: star indices (>= 1) of every target with an entry;
* per-night files: names ``<YYYYMMDD>.yaml`` or ``<INST>_<YYYYMMDD>.yaml``, section and key names
  (with the closest known name suggested), each file on its own against the schema;
* ``raw_root`` exists; a requested night has a raw folder (:func:`check_night_raw` names the
  folder searched).
"""

import copy
import difflib
import re
from pathlib import Path

from . import config as bconfig
from .errors import ConfigError

#: bandersnatch date-file sections accepted and ignored in per-night files.
LEGACY_SECTIONS = ("paths", "processing_flags", "logging", "save_processed_images_streaming")
DATE_FILE = re.compile(r"^\d{8}$")


def _suggest(name, known):
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(map(str, known)))})"


def _unknown_keys(data, schema, path=""):
    """``(key path, suggestion)`` of keys a schema with ``additionalProperties: false`` rejects."""
    out = []
    if not isinstance(data, dict) or not isinstance(schema, dict):
        return out
    props = schema.get("properties", {})
    for key, value in data.items():
        where = f"{path}{key}"
        if key in props:
            out += _unknown_keys(value, props[key], where + ".")
        elif schema.get("additionalProperties") is False:
            out.append(f"{where}: unknown key{_suggest(key, props)}")
    return out


def schema_problems(data, schema_name, source, ignore=()):
    """Problems of ``data`` against a schema, one line each, naming ``source`` and the key.

    Unknown keys get the closest known name; otherwise the schema's best-matching error.
    ``data`` is not modified.
    """
    data = copy.deepcopy(data)
    for key in ignore:
        if isinstance(data, dict):
            data.pop(key, None)
    unknown = _unknown_keys(data, bconfig._schema(schema_name))
    if unknown:
        return [f"{source}: {u}" for u in unknown]
    try:
        bconfig.validate(data, schema_name, source)
    except ConfigError as err:
        return [str(err)]
    return []


def photometry_problems(phot, source):
    """Aperture and sky-annulus radii in the right order (px).

    Parameters
    ----------
    phot : dict
        Validated ``photometry_settings``.
    source : str
        Where the settings come from (file), named in each problem.
    """
    out = []
    where = f"{source}: photometry_settings"
    if phot["aper_min"] > phot["aper_max"]:
        out.append(f"{where}: aper_min ({phot['aper_min']}) is larger than aper_max ({phot['aper_max']})")
    if not phot["aper_max"] < phot["SKYRAD_inner"]:
        out.append(f"{where}: SKYRAD_inner ({phot['SKYRAD_inner']} px) must be larger than aper_max "
                   f"({phot['aper_max']} px): the sky annulus would overlap the largest aperture")
    if not phot["SKYRAD_inner"] < phot["SKYRAD_outer"]:
        out.append(f"{where}: SKYRAD_outer ({phot['SKYRAD_outer']} px) must be larger than SKYRAD_inner "
                   f"({phot['SKYRAD_inner']} px)")
    return out


def transit_problems(analysis, source):
    """The transit fits' prior ranges (``gp_h_range``, ``gp_tau_range_min``: two positive numbers,
    kept by the schema) must not be a single value: an empty prior stops the fit."""
    out = []
    for target, entry in (analysis.get("transit") or {}).items():
        for key in ("gp_h_range", "gp_tau_range_min"):
            if key in entry and entry[key][0] == entry[key][1]:
                out.append(f"{source}: analysis_settings.transit.{target}.{key}: {entry[key]} is a single value, "
                           "not a range")
    return out


def _target_entries(targets):
    """``(name, label, entry)`` for every entry of every target of a validated targets.yaml."""
    for name, value in (targets.get("targets") or {}).items():
        if isinstance(value, dict):
            yield name, f"targets.{name}", value
        else:
            for k, entry in enumerate(value):
                yield name, f"targets.{name}[{k}] (start_date {entry.get('start_date')})", entry


def _n_stars(entry):
    """Stars of a targets.yaml entry: its pixel positions or sky coordinates; for an entry given by the
    target's ra/dec only, the target and the ``n_comparisons`` stars the pipeline chooses (default 8)."""
    listed = entry.get("all_star_positions") or entry.get("all_star_coords")
    return len(listed) if listed else 1 + int(entry.get("n_comparisons", 8))


def targets_problems(targets, source):
    """``tracking_star`` of every entry is an index into its ``all_star_positions`` (or ``all_star_coords``);
    entries given by ra/dec only have their tracking star chosen by the pipeline."""
    out = []
    for _, label, entry in _target_entries(targets):
        if "tracking_star" not in entry:
            continue
        n = _n_stars(entry)
        track = entry["tracking_star"]
        if not 0 <= track < n:
            out.append(f"{source}: {label}.tracking_star: {track} is not a star index (0..{n - 1}, "
                       f"{n} star(s) in all_star_positions)")
    return out


def _entries_on(targets, date=None):
    """``(label, entry)`` of the entry of each target that applies on ``date`` (every entry when
    ``date`` is None)."""
    out = []
    for name, value in (targets.get("targets") or {}).items():
        if isinstance(value, dict):
            out.append((f"targets.{name}", value))
            continue
        dated = [(str(e.get("start_date")), k, e) for k, e in enumerate(value)]
        if date is not None:
            valid = [d for d in dated if d[0] <= str(date)]
            dated = [max(valid)] if valid else []
        out += [(f"targets.{name}[{k}] (start_date {d})", e) for d, k, e in dated]
    return out


def comparisons_problems(analysis, targets, source, date=None):
    """``analysis_settings.comparisons`` are star indices (the schema keeps them >= 1, 0 being the
    target); an index no target has was silently ignored. With several targets the same list
    serves all of them, so an index is wrong only when it is past the stars of every target entry
    that applies (on ``date`` for a per-night file)."""
    comps = analysis.get("comparisons")
    entries = _entries_on(targets, date)
    if not comps or not entries:
        return []
    most = max(_n_stars(e) for _, e in entries)
    bad = sorted({int(c) for c in comps if int(c) >= most})
    if not bad:
        return []
    label = entries[0][0] if len(entries) == 1 else f"any of the {len(entries)} target entries"
    return [f"{source}: analysis_settings.comparisons: {bad} not star(s) of {label} in the targets file "
            f"(stars 1..{most - 1})"]


def _drop_legacy_keys(data):
    """Remove bandersnatch's date-file keys that :func:`bandersnake.config.night_settings` ignores."""
    for legacy in LEGACY_SECTIONS:
        data.pop(legacy, None)
    for section, keys in (("instrument_settings", ("inst", "date")), ("calibration_params", ("image_extension",))):
        if isinstance(data.get(section), dict):
            for key in keys:
                data[section].pop(key, None)


def night_file_problems(path):
    """Name and sections of one per-night file ``nights/<YYYYMMDD>.yaml`` / ``<INST>_<YYYYMMDD>.yaml``."""
    path = Path(path)
    stem = path.stem
    if not (DATE_FILE.match(stem) or bconfig.NIGHT_ID.match(stem)):
        return [f"{path}: not a night file name (<YYYYMMDD>.yaml or <INST>_<YYYYMMDD>.yaml); it would be ignored"]
    out = []  # a file for an instrument without an instrument file is unused, not an error
    try:
        data = bconfig.load_yaml(path)
    except ConfigError as err:
        return out + [str(err)]
    if not isinstance(data, dict):
        return out + [f"{path}: expected a mapping of sections (instrument_settings, photometry_settings, ...)"]
    data = copy.deepcopy(data)
    _drop_legacy_keys(data)
    return out + schema_problems(data, "night.schema.yaml", str(path))


def check_workflow(config, defaults_source="night_defaults (config.yaml, --configfile, --config)"):
    """Every configuration problem found before any job runs, one line each.

    Parameters
    ----------
    config : dict
        Snakemake's ``config`` (config.yaml + ``--config``), paths already resolved.
    defaults_source : str
        How ``night_defaults`` is named in the messages.

    Returns
    -------
    list of str
        Empty when the configuration is usable.
    """
    problems = schema_problems(config, "config.schema.yaml", "config (config.yaml and --config)")
    if problems:
        return problems
    problems = schema_problems(config["night_defaults"], "night.schema.yaml", defaults_source)
    if problems:
        return problems
    defaults = bconfig.validate(copy.deepcopy(config["night_defaults"]), "night.schema.yaml", defaults_source)
    problems += photometry_problems(defaults["photometry_settings"], defaults_source)
    problems += transit_problems(defaults["analysis_settings"], defaults_source)
    # targets.yaml
    targets_path = Path(config["targets_file"])
    targets = {}
    if targets_path.exists():
        try:
            targets = bconfig.validate(bconfig.load_yaml(targets_path), "targets.schema.yaml", str(targets_path))
        except ConfigError as err:
            problems.append(str(err))
        problems += targets_problems(targets, str(targets_path))
    problems += comparisons_problems(defaults["analysis_settings"], targets, defaults_source)
    # instrument files and their night_settings
    inst_dir = Path(config["instruments_dir"])
    instruments = sorted(p.stem for p in inst_dir.glob("*.yaml")) if inst_dir.is_dir() else None
    if instruments is None:
        problems.append(f"instruments_dir {config['instruments_dir']}: folder not found")
    # per-night files
    nights_dir = Path(config["nights_dir"])
    if nights_dir.is_dir():
        for path in sorted(nights_dir.glob("*.y*ml")):
            file_problems = night_file_problems(path)
            problems += file_problems
            if file_problems:
                continue
            merged = bconfig.deep_merge(config["night_defaults"], bconfig.load_yaml(path))
            _drop_legacy_keys(merged)
            try:
                merged = bconfig.validate(merged, "night.schema.yaml", str(path))
            except ConfigError as err:
                problems.append(str(err))
                continue
            data = bconfig.load_yaml(path)
            phot = data.get("photometry_settings") or {}
            for key in ("aper_min", "aper_max"):
                if key in phot and phot[key] != defaults["photometry_settings"][key]:
                    problems.append(f"{path}: photometry_settings.{key}: the aperture range names the output "
                                    "files, so it is set once for the run (night_defaults or --config), not per night")
            # Only what the file itself brings: problems inherited from night_defaults are named once.
            inherited = {p.split(": ", 1)[1] for p in problems if p.startswith(defaults_source)}
            problems += [p for p in photometry_problems(merged["photometry_settings"], str(path))
                         + transit_problems(merged["analysis_settings"], str(path))
                         + comparisons_problems(merged["analysis_settings"], targets, str(path),
                                                date=path.stem.split("_")[-1])
                         if p.split(": ", 1)[1] not in inherited]
    # nights listed in the configuration
    for night in config.get("nights") or []:
        inst, _ = bconfig.parse_night_id(night)
        if instruments is not None and inst not in instruments:
            problems.append(f"config: nights: {night}: no instrument file {inst}.yaml in {config['instruments_dir']}")
    return problems


def raw_root_problem(raw_root, default_root=None):
    """``raw_root`` must be an existing folder (the built-in demo's is made by ``simulate_demo``)."""
    if Path(raw_root).is_dir():
        return None
    if default_root is not None and str(raw_root) == str(default_root):
        return (f"raw_root {raw_root}: folder not found; make the demo night first (`make demo` or "
                "`snakemake --cores 2 simulate_demo`) or give your raw tree: --config raw_root=/path/to/raw")
    return f"raw_root {raw_root}: folder not found (--config raw_root=... or raw_root in config.yaml)"


def check_night_raw(night, raw_layout, raw_root, instruments=()):
    """The raw folder of ``night``, or a message naming the folder (pattern) searched.

    Returns
    -------
    str or None
        None when at least one raw folder of the night exists.
    """
    if bconfig.raw_night_dirs(raw_layout, raw_root, night):
        return None
    searched = bconfig.raw_night_dir(raw_layout, raw_root, night)
    inst, _ = bconfig.parse_night_id(night)
    message = f"night {night}: no raw folder; searched {searched} (raw_layout {raw_layout!r}, raw_root {raw_root})"
    if not Path(raw_root).is_dir():
        return message + f"; raw_root {raw_root} does not exist"
    try:
        found = bconfig.discover_nights(raw_layout, raw_root, [inst])
    except ConfigError:
        found = []
    if found:
        shown = found if len(found) <= 5 else found[:2] + ["..."] + found[-2:]
        message += f"; nights of {inst} found: {', '.join(shown)}"
    return message


def requested_nights(args, prefixes, night_re=r"[A-Za-z0-9-]+_[0-9]{8}"):
    """Night ids named by command-line targets such as ``results/<night>/`` or ``work/<night>/...``."""
    pattern = re.compile(rf"^(?:\./)?(?:{'|'.join(re.escape(p.rstrip('/')) for p in prefixes)})/({night_re})(?:/|$)")
    out = []
    for arg in args:
        match = pattern.match(str(arg))
        if match and match[1] not in out:
            out.append(match[1])
    return out


def format_problems(problems):
    """The message printed when the configuration is unusable."""
    head = f"bandersnake: {len(problems)} configuration problem{'s' if len(problems) > 1 else ''} " \
           "(nothing was run):"
    return "\n".join([head] + [f"  - {p}" for p in problems])


__all__ = ["check_workflow", "check_night_raw", "raw_root_problem", "requested_nights", "format_problems",
           "photometry_problems", "targets_problems", "comparisons_problems", "night_file_problems",
           "schema_problems"]
