# Deep stacks (issue 20): per night, target and filter, the calibrated frames with a WCS are aligned
# onto one tangent-plane grid and combined (rule stack_image), then measured: sources, ePSF, PSF
# photometry, zero point, limiting magnitudes (rule stack_measure). Across nights: stack_nights.


rule stack_image:
    """Stack image (SCI e-/s, ERR, MASK, NCOMB) of one target and filter, and its frame table with reasons."""
    input:
        calibrated=work("{night}/calibrated"),
        inventory=work("{night}/calib/inventory.ecsv"),
    output:
        image=temp(work("{night}/{target}/stack/{target}_{filter}_image.fits")),
        frames=work("{night}/{target}/stack/{target}_{filter}_frames.ecsv"),
    log:
        logs("{night}/logs/stack_image_{target}_{filter}.log"),
    benchmark:
        bench("{night}/benchmarks/stack_image_{target}_{filter}.tsv")
    conda:
        "../envs/bandersnake.yaml"
    resources:
        mem_mb=config["processing"]["combine_memory_mb"] + 1024,
    params:
        settings=lambda w: night_cfg(w.night)["stack"],
        instrument=lambda w: instrument_cfg(w.night),
        memory_mb=config["processing"]["combine_memory_mb"],
    script:
        "../workflow/scripts/stack_image.py"


rule stack_measure:
    """Sources, ePSF, PSF photometry, zero point and limits of a stack: <TARGET>_<FILTER>_stk.fits and plots."""
    input:
        image=work("{night}/{target}/stack/{target}_{filter}_image.fits"),
    output:
        stack=work("{night}/{target}/stack/{target}_{filter}_stk.fits"),
        epsf=report(
            work("{night}/{target}/stack/{target}_{filter}_epsf.png"),
            caption="../workflow/report/stack_epsf.rst",
            category="{night}",
            subcategory="{target}",
            labels={
                "night": "{night}",
                "target": "{target}",
                "figure": "ePSF {filter}",
            },
        ),
        zp=report(
            work("{night}/{target}/stack/{target}_{filter}_zp.png"),
            caption="../workflow/report/stack_zp.rst",
            category="{night}",
            subcategory="{target}",
            labels={
                "night": "{night}",
                "target": "{target}",
                "figure": "zero point {filter}",
            },
        ),
    log:
        logs("{night}/logs/stack_measure_{target}_{filter}.log"),
    benchmark:
        bench("{night}/benchmarks/stack_measure_{target}_{filter}.tsv")
    conda:
        "../envs/bandersnake.yaml"
    params:
        settings=lambda w: night_cfg(w.night)["stack"],
        catalogue=lambda w: stack_catalogue(night_cfg(w.night)),
        title="{night} {target} {filter}",
    script:
        "../workflow/scripts/stack_measure.py"


rule stack_nights:
    """One target and filter stacked over every night built (results/stacks/<TARGET>_<FILTER>/)."""
    input:
        stacks=stack_nights_inputs,
    output:
        stack=f"{RESULTS}/stacks/{{target}}_{{filter}}/{{target}}_{{filter}}_stk.fits",
        nights=f"{RESULTS}/stacks/{{target}}_{{filter}}/{{target}}_{{filter}}_nights.ecsv",
        epsf=report(
            f"{RESULTS}/stacks/{{target}}_{{filter}}/{{target}}_{{filter}}_epsf.png",
            caption="../workflow/report/stack_epsf.rst",
            category="stacks",
            subcategory="{target}",
            labels={"target": "{target}", "figure": "ePSF {filter}, all nights"},
        ),
        zp=report(
            f"{RESULTS}/stacks/{{target}}_{{filter}}/{{target}}_{{filter}}_zp.png",
            caption="../workflow/report/stack_zp.rst",
            category="stacks",
            subcategory="{target}",
            labels={"target": "{target}", "figure": "zero point {filter}, all nights"},
        ),
    log:
        logs("stacks/logs/stack_nights_{target}_{filter}.log"),
    benchmark:
        bench("stacks/benchmarks/stack_nights_{target}_{filter}.tsv")
    wildcard_constraints:
        filter=r"[A-Za-z0-9+.-]+",
    conda:
        "../envs/bandersnake.yaml"
    resources:
        mem_mb=config["processing"]["combine_memory_mb"] + 1024,
    params:
        settings=lambda w: stack_nights_settings(w),
        catalogue=lambda w: stack_catalogue(stack_nights_settings(w, full=True)),
        memory_mb=config["processing"]["combine_memory_mb"],
        title="all nights {target} {filter}",
    script:
        "../workflow/scripts/stack_nights.py"
