"""Input functions and parameters of the light-curve analysis (rules/analysis.smk)."""

from bandersnake.analysis import stages as analysis_stages
from bandersnake.analysis.plots import PLOTS as ANALYSIS_PLOTS

# Multi-night plot: outside results/<night>/ (those are directory outputs of publish_night).
PRECISION_SUMMARY = work("summary/precision_vs_brightness.png")


def analysis_settings(night):
    """Validated ``analysis_settings`` of a night."""
    return night_cfg(night)["analysis_settings"]


def transit_fit_settings(night, target):
    """Transit-fit settings of a target on a night, None when the night gives it no ephemeris."""
    return analysis_stages.transit_settings(analysis_settings(night), target)


def analysis_products(night, target):
    """Products of the light-curve analysis of one (night, target); the transit fit only when
    ``analysis_settings.transit`` gives the target a ``t0`` or ``window``."""
    base = f"{night}/{target}"
    products = [
        work(f"{base}/photometry/{name}")
        for name in (
            "differential.fits",
            "differential_summary.txt",
            "precision_metrics.fits",
        )
    ]
    products += [work(f"{base}/plots/{name}.png") for name in ANALYSIS_PLOTS]
    products += [
        work(f"{base}/exports/lc.dat"),
        work(f"{base}/exports/{target}_aavso.txt"),
    ]
    if transit_fit_settings(night, target) is not None:
        products += [
            work(f"{base}/transit/transit_fit.yaml"),
            work(f"{base}/transit/transit_fit.png"),
            work(f"{base}/transit/transit_fit_corner.png"),
            work(f"{base}/transit/transit_lc.ecsv"),
            work(f"{base}/transit/transit_samples.fits"),
        ]
    return products


def analysis_plot_outputs():
    """Declared PNGs of the analysis_plots rule, each sent to the report with its caption."""
    return {
        name: report(
            work(f"{{night}}/{{target}}/plots/{name}.png"),
            caption=f"../workflow/report/{name}.rst",
            category="{night}",
            subcategory="{target}",
            labels={"night": "{night}", "target": "{target}", "figure": name},
        )
        for name in ANALYSIS_PLOTS
    }


def differential_params(wildcards):
    """Settings of the differential job: the analysis settings it uses and the instrument's
    noise figures (no photometry settings, so only the analysis re-runs when they change).
    """
    return dict(
        night=wildcards.night,
        target=wildcards.target,
        settings=analysis_stages.differential_settings(
            analysis_settings(wildcards.night)
        ),
        instrument=analysis_stages.noise_instrument(instrument_cfg(wildcards.night)),
    )


def transit_params(wildcards):
    settings = transit_fit_settings(wildcards.night, wildcards.target)
    if settings is None:
        raise WorkflowError(
            f"night {wildcards.night}: no transit fit for target {wildcards.target}; give it "
            "analysis_settings.transit.<target>.t0 (and period) or .window"
        )
    return settings


def precision_summary_inputs(wildcards):
    """precision_metrics.fits of every target of every night built by the default target."""
    return [
        work(f"{night}/{target}/photometry/precision_metrics.fits")
        for night in all_nights()
        for target in photometry_targets(night)
    ]
