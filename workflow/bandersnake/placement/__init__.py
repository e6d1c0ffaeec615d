"""Placement stage: targets given on the sky, placed through the night's WCS, comparisons chosen.

* :mod:`.place` - reference WCS (header or one ``solve-field``), drift by following every frame,
  target placement and the choice of comparison stars; ``targets_resolved.yaml`` (``rules/placement.smk``).
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "resolve_for_rule": ".place",
    "resolve_sky_target": ".place",
    "needs_placement": ".entries",
    "write_resolved": ".place",
})
