"""Light-curve analysis of one (night, target): differential photometry, precision, plots, exports.

Entry points (one per product; the Snakemake rules call these):

* :func:`run_differential` -> ``photometry/differential.fits``, ``precision_metrics.fits``,
  ``differential_summary.txt``
* :func:`make_plots` -> the diagnostic PNGs; :func:`plot_precision_vs_brightness` for several nights
* :func:`write_exports` -> juliet ``lc.dat`` and an AAVSO Extended Format file

The transit fits live in :mod:`bandersnake.transitfit` (rules/transit.smk); :mod:`.transit` keeps
the project's own Mandel & Agol model as a cross-check of batman in the tests, with a quick
least-squares fit the tests use (:func:`fit_transit`).

When the data make the analysis impossible, :func:`run_differential` raises
:class:`~bandersnake.errors.AnalysisNotPossible`; the stages then publish every product marked
failed with the reason (:mod:`.status`, :func:`analysis_failure`).

The Snakemake rules (``rules/analysis.smk``) call these through :mod:`.stages`, one function per rule.
Entry points are imported on first use, so a job pays only for the modules it needs.
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "run_differential": ".differential",
    "read_differential": ".differential",
    "make_plots": ".plots",
    "plot_precision_vs_brightness": ".plots",
    "write_exports": ".exports",
    "write_juliet": ".exports",
    "write_aavso": ".exports",
    "fit_transit": ".transit",
    "read_precision_metrics": ".precision",
    "MissingProductError": ".io",
    "ProductError": ".io",
    "AnalysisNotPossible": "..errors",
    "analysis_failure": ".status",
    "differential_stage": ".stages",
    "exports_stage": ".stages",
    "filter_of_master_flat": ".stages",
    "plots_stage": ".stages",
    "precision_summary_stage": ".stages",
})
