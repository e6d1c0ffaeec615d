"""Settings of one template (config ``templates.<name>``): schema defaults and checks.

Light on purpose: the workflow imports it when it parses the config, before any job runs.
"""

import copy

from ..config import validate
from ..errors import ConfigError
from .offsets import offset_tag


def settings(entry, source="config: templates"):
    """One template's settings, validated against templates.schema.yaml with its defaults filled in.

    Raises
    ------
    ConfigError
        Naming ``source`` and the key.
    """
    cfg = validate(copy.deepcopy(dict(entry)), "templates.schema.yaml", source)
    cfg["psf"] = {"model": "gaussian", "fwhm_arcsec": None, "saturation": None, **cfg.get("psf", {})}
    cfg["offsets"] = [tuple(map(float, o)) for o in cfg["offsets"]]
    tags = [offset_tag(*o) for o in cfg["offsets"]]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"{source}: offsets must differ at two decimals (they name the files): {tags}")
    if cfg["psf"]["model"] == "gaussian" and not cfg["psf"]["fwhm_arcsec"]:
        raise ConfigError(f"{source}: psf: model gaussian needs fwhm_arcsec")
    return cfg
