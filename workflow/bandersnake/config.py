"""Loading and validating bandersnake's configuration files.

The workflow configuration (``config/config.yaml``), the instrument, night and targets files are
all validated here against the JSON schemas in ``config/schemas/``, with the schemas' defaults
filled in (as Snakemake's ``validate(..., set_default=True)`` does), so the package can be used
without Snakemake. Each schema is read once per process: the Snakefile validates a dozen files at
every start, and Snakemake's ``validate()`` re-reads the schema with the pure-Python YAML parser
each time (about 0.7 s of every ``snakemake`` start on a one-night run, issue 22).
"""

import copy
import glob
import re
from functools import lru_cache
from pathlib import Path

import yaml

from .errors import ConfigError

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schemas"
NIGHT_ID = re.compile(r"^(?P<inst>[A-Za-z0-9-]+)_(?P<date>\d{8})$")


def load_yaml(path):
    """Read a YAML file, raising :class:`ConfigError` naming the file on failure."""
    try:
        with open(path) as fh:
            # libyaml's parser when PyYAML was built with it: the same safe types, ~10x faster.
            data = yaml.load(fh, Loader=_SAFE_LOADER)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from None
    return {} if data is None else data


def validate(instance, schema_name, source):
    """Validate ``instance`` in place against ``config/schemas/<schema_name>``, filling defaults.

    Raises
    ------
    ConfigError
        Naming ``source`` (a file or config section), the key path and the problem.
    """
    import jsonschema

    checker, filler = _validators(schema_name)
    error = jsonschema.exceptions.best_match(checker.iter_errors(instance))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise ConfigError(f"{source}: {where + ': ' if where else ''}{error.message}")
    # Defaults go in (recursively into nested sections) only once the instance is valid.
    for error in filler.iter_errors(instance):
        raise ConfigError(f"{source}: after filling in defaults: {error.message}")
    return instance


_SCALAR_TYPES = ("boolean", "integer", "number")


def _parse_scalar(text, types):
    """``text`` as one of the JSON ``types`` (YAML 1.1 words for booleans, Python's float syntax
    for numbers: "1e-3" too, which YAML 1.1 keeps a string), or None if it reads as none of them."""
    try:
        value = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError:
        value = None
    if isinstance(value, bool):
        return value if "boolean" in types else None
    if "integer" in types and isinstance(value, int):
        return value
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            return None
    return None


def coerce_command_line_scalars(instance, schema_name):
    """Turn strings where the schema wants a boolean or a number into that type, in place.

    ``snakemake --config 'processing={"fork_server": false}'`` parses the value of a nested key
    with YAML's BaseLoader, which keeps every scalar a string ("false", "2"); the schema would then
    reject what the user meant. Only strings that read as the wanted type change, and only where
    the schema does not also allow a string.
    """

    def walk(value, schema):
        if not isinstance(schema, dict):
            return value
        if isinstance(value, dict):
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            for key in value:
                sub = props.get(key, extra if isinstance(extra, dict) else None)
                value[key] = walk(value[key], sub)
            return value
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [walk(v, schema["items"]) for v in value]
        if isinstance(value, str):
            types = schema.get("type", [])
            types = [types] if isinstance(types, str) else list(types)
            wanted = [t for t in types if t in _SCALAR_TYPES]
            if wanted and "string" not in types:
                parsed = _parse_scalar(value, wanted)
                return value if parsed is None else parsed
        return value

    return walk(instance, _schema(schema_name))


@lru_cache(maxsize=None)
def _schema(schema_name):
    return load_yaml(SCHEMA_DIR / schema_name)


@lru_cache(maxsize=None)
def _validators(schema_name):
    """A plain validator and one that fills each property's ``default`` (jsonschema's FAQ recipe,
    the one Snakemake's ``validate`` uses), built once per schema."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    filling = validators.extend(Draft202012Validator, {"properties": set_defaults})
    schema = _schema(schema_name)
    return Draft202012Validator(schema), filling(schema)


def parse_night_id(night):
    """Split ``<INST>_<YYYYMMDD>`` into ``(inst, date)``.

    Raises
    ------
    ConfigError
        When ``night`` does not have that form.
    """
    match = NIGHT_ID.match(night)
    if match is None:
        raise ConfigError(f"night id {night!r} is not of the form <INST>_<YYYYMMDD>")
    return match["inst"], match["date"]


@lru_cache(maxsize=None)
def _load_instrument_cached(path):
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"instrument file {path}: expected a mapping of instrument keys (schema "
                          "config/schemas/instrument.schema.yaml), found a YAML {type(data).__name__}")
    validate(data, "instrument.schema.yaml", f"instrument file {path}")
    if data["name"] != Path(path).stem:
        raise ConfigError(f"instrument file {path}: name {data['name']!r} differs from the file name "
                          f"{Path(path).stem!r}")
    return data


def is_instrument_file(path):
    """Whether a YAML file declares itself an instrument: a mapping whose ``name`` is its file stem.

    Other YAML files beside the instrument files (a targets file, notes) are not instruments and
    are never validated as such.
    """
    try:
        data = load_yaml(path)
    except ConfigError:
        return True     # broken YAML: let loading it report the error, naming the file
    return isinstance(data, dict) and str(data.get("name", "")) == Path(path).stem


def instrument_names(instruments_dir):
    """Instruments of ``instruments_dir``: the stems of its instrument files (:func:`is_instrument_file`)."""
    return sorted(p.stem for p in Path(instruments_dir).glob("*.yaml") if is_instrument_file(p))


def load_instrument(instruments_dir, name):
    """Validated instrument dictionary for ``name`` from ``<instruments_dir>/<name>.yaml``.

    Only that file is read: instrument files are found by name (a night's ``<INST>`` or the
    workflow's ``instruments`` list), so another YAML in the folder is never validated.
    """
    path = Path(instruments_dir) / f"{name}.yaml"
    if not path.exists():
        known = instrument_names(instruments_dir) if Path(instruments_dir).is_dir() else []
        raise ConfigError(f"instrument file {path}: not found: no instrument {name!r} in {instruments_dir} "
                          f"(known: {', '.join(known) or 'none'}; "
                          "bandersnake-init-instrument RAW_DIR drafts one)")
    return copy.deepcopy(_load_instrument_cached(str(path)))


def deep_merge(base, override):
    """Return ``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def night_config_files(nights_dir, night):
    """Per-night files that apply to ``night``: ``<YYYYMMDD>.yaml`` then ``<INST>_<YYYYMMDD>.yaml``."""
    _, date = parse_night_id(night)
    return [p for p in (Path(nights_dir) / f"{date}.yaml", Path(nights_dir) / f"{night}.yaml") if p.exists()]


def night_settings(night_defaults, nights_dir, night, instrument_defaults=None):
    """Validated settings of ``night``: ``night_defaults``, then the instrument file's
    ``night_settings`` (``instrument_defaults``), then its per-night files, key by key.

    bandersnatch's date files also carry ``paths``/``processing_flags``/``logging`` sections that
    Snakemake replaces; they are dropped here with no error so old files can be reused.
    """
    settings = deep_merge(night_defaults or {}, instrument_defaults or {})
    for path in night_config_files(nights_dir, night):
        data = load_yaml(path)
        for legacy in ("paths", "processing_flags", "logging", "save_processed_images_streaming"):
            data.pop(legacy, None)
        data.get("instrument_settings", {}).pop("inst", None)
        data.get("instrument_settings", {}).pop("date", None)
        data.get("calibration_params", {}).pop("image_extension", None)
        settings = deep_merge(settings, data)
    validate(settings, "night.schema.yaml", f"settings of night {night}")
    return settings


def date_fields(date):
    """Template fields of a night date ``YYYYMMDD``: ``{date}`` and ``{date_iso}`` (``YYYY-MM-DD``)."""
    date = str(date)
    return {"date": date, "date_iso": f"{date[:4]}-{date[4:6]}-{date[6:]}"}


def instrument_layout(instrument, raw_layout):
    """Raw layout of an instrument: its own ``raw_layout`` key when set, else the workflow's."""
    return (instrument or {}).get("raw_layout") or raw_layout


def _fill_layout(raw_layout, raw_root, inst, **dates):
    """``raw_layout`` with its fields filled; ``raw_root`` is glob-escaped (it is a literal path)."""
    try:
        return raw_layout.format(raw_root=glob.escape(str(raw_root)), inst=inst, **dates)
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"raw_layout {raw_layout!r}: unknown or malformed field ({err}); "
                          "known fields: {raw_root}, {inst}, {date}, {date_iso}") from None


def raw_night_dir(raw_layout, raw_root, night):
    """Raw folder (or glob pattern, when the layout holds glob characters) of ``night``."""
    inst, date = parse_night_id(night)
    return Path(_fill_layout(raw_layout, raw_root, inst, **date_fields(date)))


def raw_night_dirs(raw_layout, raw_root, night):
    """Existing raw folders of ``night``, sorted.

    The layout may hold glob characters (``*``, ``?``, ``[...]``) after the date fields are
    filled in, e.g. ASTEP's ``{raw_root}/{date_iso}/{date_iso}-CAMS*``, which collects both the
    ``-CAMS`` (science, darks, biases) and the ``-CAMS_SKYFLAT`` folder of a date.
    """
    pattern = str(raw_night_dir(raw_layout, raw_root, night))
    if not glob.has_magic(pattern):
        return [Path(pattern)] if Path(pattern).is_dir() else []
    return [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_dir()]


def _glob_regex(pattern):
    """Regex of a glob pattern; wildcards never cross a path separator."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[" and "]" in pattern[i + 2:]:
            j = pattern.index("]", i + 2)
            body = pattern[i + 1:j]
            negate = body.startswith("!")
            body = "".join("\\" + ch if ch in "[]\\^" else ch for ch in body[negate:])
            out += "[" + ("^" if negate else "") + body + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return out


def _layout_regex(raw_layout, raw_root, inst):
    """Regex matching the paths of a layout, capturing ``date`` / ``date_iso``; and its glob."""
    parts = re.split(r"(\{date\}|\{date_iso\})", raw_layout)
    regex, pattern, seen = "", "", set()
    for part in parts:
        if part in ("{date}", "{date_iso}"):
            name = part[1:-1]
            if name in seen:  # a repeated field must take the same value
                regex += f"(?P={name})"
            else:
                regex += r"(?P<date>\d{8})" if name == "date" else r"(?P<date_iso>\d{4}-\d{2}-\d{2})"
                seen.add(name)
            pattern += "[0-9]" * 8 if name == "date" else "[0-9]" * 4 + "-" + "[0-9]" * 2 + "-" + "[0-9]" * 2
            continue
        literal = _fill_layout(part, raw_root, inst)
        pattern += literal
        regex += _glob_regex(literal)
    if not seen:
        raise ConfigError(f"raw_layout {raw_layout!r}: needs {{date}} or {{date_iso}} to discover nights")
    return re.compile(regex + r"/?\Z"), pattern


def discover_nights(raw_layout, raw_root, instruments, layouts=None):
    """Night ids ``<INST>_<YYYYMMDD>`` having at least one file in a raw folder.

    Discovery globs the layout with the date fields replaced by digit patterns, then reads the
    date back from each matching folder. A date whose layout matches several folders (ASTEP's
    ``-CAMS`` and ``-CAMS_SKYFLAT``) is one night.

    Parameters
    ----------
    raw_layout : str
        Workflow-wide layout template.
    raw_root : str or Path
    instruments : list of str
    layouts : dict, optional
        Per-instrument layout overriding ``raw_layout`` (the instrument file's ``raw_layout``).
    """
    nights = set()
    for inst in instruments:
        layout = (layouts or {}).get(inst) or raw_layout
        regex, pattern = _layout_regex(layout, raw_root, inst)
        for path in glob.glob(pattern):
            match = regex.match(path)
            if match is None or not Path(path).is_dir() or not any(Path(path).iterdir()):
                continue
            found = match.groupdict()
            date = found.get("date") or found["date_iso"].replace("-", "")
            if found.get("date_iso") and found.get("date") and found["date_iso"].replace("-", "") != found["date"]:
                continue
            nights.add(f"{inst}_{date}")
    return sorted(nights)
