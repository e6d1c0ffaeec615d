"""Templates of coarse frames from finer reference images, and difference images (config: templates).

psf -> mapping (cells <-> tiles) -> one job per tile of the coarse grid -> fit of the offsets ->
one template per offset, the difference image. The tiles are known when the workflow is parsed
(from the coarse frame's shape and tile_px), so `snakemake -n` lists every job of a full CCD.
"""

from bandersnake.errors import BandersnakeError
from bandersnake.templates import geometry as tgeometry
from bandersnake.templates.offsets import offset_tag
from bandersnake.templates.run import settings as template_settings


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


rule templates:
    """Every configured template (`snakemake --cores 4 templates`)."""
    input:
        all_template_products(),


rule templates_psf:
    """The coarse instrument's PSF on the supersampled grid (Gaussian, or ePSF from the frame's stars)."""
    input:
        frame=lambda w: TEMPLATES[w.name]["frame"],
    output:
        work("templates/{name}/psf.fits"),
    log:
        logs("templates/{name}/logs/psf.log"),
    conda:
        "../envs/bandersnake.yaml"
    params:
        cfg=lambda w: TEMPLATES[w.name],
    script:
        "../workflow/scripts/templates_psf.py"


rule templates_mapping:
    """Which reference cells cover which tiles of the coarse grid (and the section each tile reads)."""
    input:
        frame=lambda w: TEMPLATES[w.name]["frame"],
        psf=work("templates/{name}/psf.fits"),
        references=template_references,
    output:
        tpl("{name}/mapping.ecsv"),
    log:
        logs("templates/{name}/logs/mapping.log"),
    conda:
        "../envs/bandersnake.yaml"
    params:
        cfg=lambda w: TEMPLATES[w.name],
    script:
        "../workflow/scripts/templates_mapping.py"


rule templates_tile:
    """One tile: drizzle its cells, combine bands, convolve, bin at every offset (scatter)."""
    input:
        frame=lambda w: TEMPLATES[w.name]["frame"],
        psf=work("templates/{name}/psf.fits"),
        mapping=tpl("{name}/mapping.ecsv"),
    output:
        temp(work("templates/{name}/tiles/{tile}.fits")),
    log:
        logs("templates/{name}/logs/tile_{tile}.log"),
    benchmark:
        bench("templates/{name}/benchmarks/tile_{tile}.tsv")
    conda:
        "../envs/bandersnake.yaml"
    resources:
        mem_mb=lambda w: TEMPLATES[w.name]["tile_mem_mb"],
    params:
        cfg=lambda w: TEMPLATES[w.name],
    script:
        "../workflow/scripts/templates_tile.py"


rule templates_fit:
    """Scale and background at every offset, the best offset refined (gather)."""
    input:
        frame=lambda w: TEMPLATES[w.name]["frame"],
        tiles=template_tile_files,
    output:
        tpl("{name}/offsets.ecsv"),
    log:
        logs("templates/{name}/logs/fit.log"),
    benchmark:
        bench("templates/{name}/benchmarks/fit.tsv")
    conda:
        "../envs/bandersnake.yaml"
    params:
        cfg=lambda w: TEMPLATES[w.name],
    script:
        "../workflow/scripts/templates_fit.py"


rule templates_template:
    """One offset's template in the frame's units, with COVERAGE and MASK, and its preview."""
    input:
        frame=lambda w: TEMPLATES[w.name]["frame"],
        tiles=template_tile_files,
        fit=tpl("{name}/offsets.ecsv"),
    output:
        fits=tpl("{name}/template_{tag}.fits"),
        png=report(
            tpl("{name}/template_{tag}.png"),
            caption="../workflow/report/template.rst",
            category="Templates",
            subcategory="{name}",
        ),
    log:
        logs("templates/{name}/logs/template_{tag}.log"),
    conda:
        "../envs/bandersnake.yaml"
    script:
        "../workflow/scripts/templates_template.py"


rule templates_difference:
    """Coarse frame minus the flux-scaled template at the best offset, and its preview."""
    input:
        frame=lambda w: TEMPLATES[w.name]["frame"],
        tiles=template_tile_files,
        fit=tpl("{name}/offsets.ecsv"),
    output:
        fits=tpl("{name}/difference.fits"),
        png=report(
            tpl("{name}/difference.png"),
            caption="../workflow/report/difference.rst",
            category="Templates",
            subcategory="{name}",
        ),
    log:
        logs("templates/{name}/logs/difference.log"),
    conda:
        "../envs/bandersnake.yaml"
    script:
        "../workflow/scripts/templates_difference.py"
