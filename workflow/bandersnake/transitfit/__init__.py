"""Transit fits whose numbers can be quoted: batman model, emcee posteriors, nights fitted together.

Entry points (the rules of ``rules/transit.smk`` call the stages):

* :func:`transit_fit_stage` -> ``<night>/<TARGET>/transit/transit_fit.yaml``, ``transit_lc.ecsv``,
  ``transit_samples.fits``
* :func:`transit_plots_stage` -> ``transit_fit.png``, ``transit_fit_corner.png``
* :func:`joint_fit_stage` -> ``results/targets/<TARGET>/joint_fit.yaml`` and ``.png``
* :func:`fit_night` / :func:`fit_joint` -> the fits on arrays

Modules: :mod:`.model` (batman, exposure integration, orbit geometry), :mod:`.limbdark` (quadratic
coefficients from the filter), :mod:`.posterior` (priors, likelihood with the baseline marginalised),
:mod:`.noise` (white scale, red-noise beta), :mod:`.sampler` (best fit, emcee sized by the
autocorrelation time, percentiles), :mod:`.fit`, :mod:`.joint`, :mod:`.night` (products), :mod:`.plots`.
Submodules load on first use (PEP 562), so importing the package does not import batman or emcee.
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "transit_fit_stage": ".stages",
    "transit_plots_stage": ".stages",
    "joint_fit_stage": ".stages",
    "fit_night": ".fit",
    "fit_joint": ".joint",
    "linear_ephemeris": ".joint",
    "limb_darkening_prior": ".limbdark",
})
