ANALYSIS_INPUTS = dict(
    photometry=expand(
        work("{{night}}/{{target}}/photometry/photometry_aper{aper}.fits"),
        aper=APERTURES,
    ),
    centroids=work("{night}/{target}/centroiding/centroids.fits"),
)


rule differential:
    """Differential photometry (Broeg-weighted ensemble), best aperture and precision metrics;
    the noise model uses the measured read noise and dark current of the night's masters.
    Data that make the analysis impossible (target unusable in every frame, too few frames) give
    products marked ANASTAT='FAILED' with the reason, and the later analysis rules write theirs
    saying so: the night is still published. Any other error fails the job.
    """
    input:
        **ANALYSIS_INPUTS,
        bias=work("{night}/calib/master_bias.fits"),
        dark=work("{night}/calib/master_dark.fits"),
    output:
        differential=work("{night}/{target}/photometry/differential.fits"),
        summary=work("{night}/{target}/photometry/differential_summary.txt"),
        metrics=work("{night}/{target}/photometry/precision_metrics.fits"),
    log:
        logs("{night}/logs/differential_{target}.log"),
    benchmark:
        bench("{night}/benchmarks/differential_{target}.tsv")
    conda:
        "../envs/bandersnake.yaml"
    params:
        analysis=differential_params,
    script:
        "../workflow/scripts/analysis_differential.py"


rule analysis_plots:
    """Diagnostic plots of one (night, target), in the report under <night> / <target>."""
    input:
        **ANALYSIS_INPUTS,
        differential=work("{night}/{target}/photometry/differential.fits"),
        metrics=work("{night}/{target}/photometry/precision_metrics.fits"),
    output:
        **analysis_plot_outputs(),
    log:
        logs("{night}/logs/analysis_plots_{target}.log"),
    # after the transit fit, the longest of the jobs left: first among them
    priority: 5
    conda:
        "../envs/bandersnake.yaml"
    params:
        bin_min=lambda w: analysis_settings(w.night)["bin_min"],
    script:
        "../workflow/scripts/analysis_plots.py"


rule analysis_exports:
    """The best aperture's light curve for juliet (lc.dat) and AAVSO (Extended Format)."""
    input:
        **ANALYSIS_INPUTS,
        differential=work("{night}/{target}/photometry/differential.fits"),
        # The master flat's FILTER keyword names the AAVSO filter.
        flat=lambda w: masters_for_target(w)["flat"],
    output:
        juliet=work("{night}/{target}/exports/lc.dat"),
        aavso=work("{night}/{target}/exports/{target}_aavso.txt"),
    log:
        logs("{night}/logs/analysis_exports_{target}.log"),
    conda:
        "../envs/bandersnake.yaml"
    params:
        instrument_name=lambda w: instrument_cfg(w.night)["name"],
        exports=lambda w: analysis_settings(w.night)["exports"],
    script:
        "../workflow/scripts/analysis_exports.py"


rule precision_vs_brightness:
    """Observed precision against brightness of every target and night built by the default target."""
    input:
        precision_summary_inputs,
    output:
        report(
            PRECISION_SUMMARY,
            caption="../workflow/report/precision_vs_brightness.rst",
            category="All nights",
            labels={"figure": "precision_vs_brightness"},
        ),
    log:
        logs("summary/logs/precision_vs_brightness.log"),
    conda:
        "../envs/bandersnake.yaml"
    script:
        "../workflow/scripts/analysis_summary.py"
