"""Light-curve analysis of one (night, target): differential photometry, precision, plots, exports.

Entry points (one per product; the Snakemake rules call these):

* :func:`run_differential` -> ``photometry/differential.fits``, ``precision_metrics.fits``,
  ``differential_summary.txt``
* :func:`make_plots` -> the diagnostic PNGs; :func:`plot_precision_vs_brightness` for several nights
* :func:`write_exports` -> juliet ``lc.dat`` and an AAVSO Extended Format file

The transit fits live in :mod:`bandersnake.transitfit` (rules/transit.smk); :mod:`.transit` keeps
the project's own Mandel & Agol model as a cross-check of batman in the tests, with a quick
least-squares fit the tests use.

When the data make the analysis impossible, :func:`run_differential` raises
:class:`~bandersnake.errors.AnalysisNotPossible`; the stages then publish every product marked
failed with the reason (:mod:`.status`, :func:`analysis_failure`).

The Snakemake rules (``rules/analysis.smk``) call these through :mod:`.stages`, one function per rule.
"""

from ..errors import AnalysisNotPossible
from .differential import read_differential, run_differential
from .exports import write_aavso, write_exports, write_juliet
from .io import MissingProductError, ProductError
from .plots import make_plots, plot_precision_vs_brightness
from .precision import read_precision_metrics
from .status import analysis_failure

__all__ = [
    "run_differential", "read_differential", "make_plots", "plot_precision_vs_brightness",
    "write_exports", "write_juliet", "write_aavso", "read_precision_metrics",
    "MissingProductError", "ProductError", "AnalysisNotPossible", "analysis_failure",
]
