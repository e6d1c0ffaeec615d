"""Templates of coarse frames from finer reference images, and difference images (config: templates).

psf -> mapping (cells <-> tiles) -> one job per tile of the coarse grid -> fit of the offsets ->
one template per offset, the difference image. The tiles are known when the workflow is parsed
(from the coarse frame's shape and tile_px), so `snakemake -n` lists every job of a full CCD.
"""

# Input functions and TEMPLATES (the validated `templates` section): rules/common/templates.smk.


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
    resources:
        mem_mb=lambda w: TEMPLATES[w.name]["tile_mem_mb"],
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
