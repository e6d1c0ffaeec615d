rule transit_fit:
    """Transit fit of the best aperture (batman model, emcee posterior, red noise as a GP), for
    targets whose analysis_settings.transit entry gives an ephemeris (t0, period) or a window.
    """
    input:
        differential=work("{night}/{target}/photometry/differential.fits"),
        centroids=work("{night}/{target}/centroiding/centroids.fits"),
        # regressors (sky) are read from the fitted aperture's table
        photometry=ANALYSIS_INPUTS["photometry"],
        # its FILTER keyword names the band of the limb-darkening table
        flat=lambda w: masters_for_target(w)["flat"],
    output:
        fit=work("{night}/{target}/transit/transit_fit.yaml"),
        lc=work("{night}/{target}/transit/transit_lc.ecsv"),
        samples=work("{night}/{target}/transit/transit_samples.fits"),
    log:
        logs("{night}/logs/transit_fit_{target}.log"),
    benchmark:
        bench("{night}/benchmarks/transit_fit_{target}.tsv")
    # the night's longest job, on its critical path: it starts before the plots and exports
    # that become ready with it
    priority: 10
    conda:
        "../envs/bandersnake.yaml"
    # two MCMC ensembles side by side
    threads: min(2, config["processing"]["threads"])
    params:
        transit=transit_params,
    script:
        "../workflow/scripts/transit_fit.py"


rule transit_plots:
    """Figures of a transit fit: the detrended light curve with the model, and the corner plot
    (apart from the fit, so they are drawn beside the night's other plots)."""
    input:
        fit=work("{night}/{target}/transit/transit_fit.yaml"),
        lc=work("{night}/{target}/transit/transit_lc.ecsv"),
        samples=work("{night}/{target}/transit/transit_samples.fits"),
        differential=work("{night}/{target}/photometry/differential.fits"),
    output:
        plot=report(
            work("{night}/{target}/transit/transit_fit.png"),
            caption="../workflow/report/transit_fit.rst",
            category="{night}",
            subcategory="{target}",
            labels={"night": "{night}", "target": "{target}", "figure": "transit_fit"},
        ),
        corner=report(
            work("{night}/{target}/transit/transit_fit_corner.png"),
            caption="../workflow/report/transit_fit_corner.rst",
            category="{night}",
            subcategory="{target}",
            labels={
                "night": "{night}",
                "target": "{target}",
                "figure": "transit_corner",
            },
        ),
    log:
        logs("{night}/logs/transit_plots_{target}.log"),
    conda:
        "../envs/bandersnake.yaml"
    script:
        "../workflow/scripts/transit_plots.py"


rule joint_fit:
    """Joint transit fit of every night of a target: shared radius ratio, impact parameter,
    stellar density and limb darkening, a mid-time per night, an updated linear ephemeris.
    """
    input:
        unpack(joint_fit_inputs),
    output:
        fit=f"{RESULTS}/targets/{{target}}/joint_fit.yaml",
        plot=report(
            f"{RESULTS}/targets/{{target}}/joint_fit.png",
            caption="../workflow/report/joint_fit.rst",
            category="Targets",
            subcategory="{target}",
            labels={"target": "{target}", "figure": "joint_fit"},
        ),
    log:
        logs("targets/logs/joint_fit_{target}.log"),
    benchmark:
        bench("targets/benchmarks/joint_fit_{target}.tsv")
    conda:
        "../envs/bandersnake.yaml"
    params:
        joint=joint_fit_params,
    script:
        "../workflow/scripts/joint_fit.py"
