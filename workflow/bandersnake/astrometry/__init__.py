"""Astrometry stage: plate solutions, the Tycho-2 catalogue from the index files, KBMOD frames.

* :mod:`.solve`  - source detection and hinted ``solve-field`` per frame, WCS cards.
* :mod:`.tycho`  - Tycho-2 stars read offline from astrometry.net's index files.
* :mod:`.kbmod`  - KBMOD input frames from calibrated, solved frames (``rules/kbmod.smk``).
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "solve_field": ".solve",
    "read_wcs": ".solve",
    "kbmod_from_calibrated": ".kbmod",
})
