"""Loading and validating bandersnake's configuration files.

The workflow configuration (``config/config.yaml``) is validated by the Snakefile with
Snakemake's ``validate()``; this module loads the per-instrument and per-night files the same
way (JSON schemas in ``config/schemas/``, defaults filled in) so the package can be used
without Snakemake.
"""

import copy
import re
from functools import lru_cache
from pathlib import Path

import yaml

from .errors import ConfigError

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schemas"
NIGHT_ID = re.compile(r"^(?P<inst>[A-Za-z0-9-]+)_(?P<date>\d{8})$")


def load_yaml(path):
    """Read a YAML file, raising :class:`ConfigError` naming the file on failure."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
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
    from snakemake.utils import validate as smk_validate

    schema = _schema(schema_name)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(instance))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise ConfigError(f"{source}: {where + ': ' if where else ''}{error.message}")
    # Snakemake's validator fills in the schema defaults (recursively into nested sections).
    smk_validate(instance, str(SCHEMA_DIR / schema_name), set_default=True)
    return instance


@lru_cache(maxsize=None)
def _schema(schema_name):
    return load_yaml(SCHEMA_DIR / schema_name)


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
    validate(data, "instrument.schema.yaml", path)
    if data["name"] != Path(path).stem:
        raise ConfigError(f"{path}: name {data['name']!r} differs from the file name {Path(path).stem!r}")
    return data


def load_instrument(instruments_dir, name):
    """Validated instrument dictionary for ``name`` from ``<instruments_dir>/<name>.yaml``."""
    path = Path(instruments_dir) / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(instruments_dir).glob("*.yaml"))
        raise ConfigError(f"{path}: no instrument file for {name!r} (known: {', '.join(known) or 'none'})")
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


def night_settings(night_defaults, nights_dir, night):
    """Validated settings of ``night``: ``night_defaults`` overridden by its per-night files.

    bandersnatch's date files also carry ``paths``/``processing_flags``/``logging`` sections that
    Snakemake replaces; they are dropped here with no error so old files can be reused.
    """
    settings = copy.deepcopy(night_defaults or {})
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


def raw_night_dir(raw_layout, raw_root, night):
    """Raw folder of ``night`` from the layout template."""
    inst, date = parse_night_id(night)
    return Path(raw_layout.format(raw_root=raw_root, inst=inst, date=date))


def discover_nights(raw_layout, raw_root, instruments):
    """Night ids ``<INST>_<YYYYMMDD>`` whose raw folder exists and holds at least one file.

    Only layouts ending in ``{date}`` below a fixed parent are discoverable; the search lists that
    parent for eight-digit folder names.
    """
    nights = []
    for inst in instruments:
        parent_template, _, tail = raw_layout.rpartition("{date}")
        if tail.strip("/"):
            raise ConfigError(f"raw_layout {raw_layout!r}: cannot discover nights unless it ends with {{date}}")
        parent = Path(parent_template.format(raw_root=raw_root, inst=inst))
        if not parent.is_dir():
            continue
        for entry in sorted(parent.iterdir()):
            if entry.is_dir() and re.fullmatch(r"\d{8}", entry.name) and any(entry.iterdir()):
                nights.append(f"{inst}_{entry.name}")
    return nights
