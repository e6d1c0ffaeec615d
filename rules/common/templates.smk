"""Input functions and the validated `templates` section of the templates stage (rules/templates.smk)."""

from bandersnake.errors import BandersnakeError
from bandersnake.templates.offsets import offset_tag
from bandersnake.templates.settings import settings as template_settings


wildcard_constraints:
    tile=r"x[0-9]{4}_y[0-9]{4}",
    tag=r"dx[+-][0-9]+\.[0-9]{2}_dy[+-][0-9]+\.[0-9]{2}",


def _templates_config():
    try:
        return {
            name: template_settings(entry, f"config: templates.{name}")
            for name, entry in config.get("templates", {}).items()
        }
    except BandersnakeError as err:
        raise WorkflowError(str(err))


TEMPLATES = _templates_config()


def tpl(path):
    """Path of a published template product."""
    return f"{RESULTS}/templates/{path}"


@lru_cache(maxsize=None)
def template_tiles(name):
    """Tile names of a template, from its coarse frame's shape (science region) and tile_px."""
    # astropy.wcs/table only when a template is asked for, not at every start (issue 22).
    from bandersnake.templates import geometry as tgeometry

    cfg = TEMPLATES[name]
    try:
        frame = tgeometry.read_frame(cfg["frame"])
    except BandersnakeError as err:
        raise WorkflowError(f"templates.{name}: {err}")
    return [t["name"] for t in tgeometry.tile_grid(frame.region, cfg["tile_px"])]


def template_tile_files(wildcards):
    return expand(
        work("templates/{name}/tiles/{tile}.fits"),
        name=wildcards.name,
        tile=template_tiles(wildcards.name),
    )


def template_references(wildcards):
    from bandersnake.templates import geometry as tgeometry

    cfg = TEMPLATES[wildcards.name]
    try:
        return tgeometry.expand_references(cfg["references"], cfg["mask_suffix"])
    except BandersnakeError as err:
        raise WorkflowError(f"templates.{wildcards.name}: {err}")


def template_products(name):
    """Every published product of a template."""
    cfg = TEMPLATES[name]
    tags = [offset_tag(*o) for o in cfg["offsets"]]
    out = [tpl(f"{name}/mapping.ecsv"), tpl(f"{name}/offsets.ecsv")]
    out += [tpl(f"{name}/template_{t}.{ext}") for t in tags for ext in ("fits", "png")]
    if cfg["difference"]:
        out += [tpl(f"{name}/difference.fits"), tpl(f"{name}/difference.png")]
    return out


def all_template_products():
    return [p for name in TEMPLATES for p in template_products(name)]
