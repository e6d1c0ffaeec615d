"""Astrometry stage: plate solutions, the Tycho-2 catalogue from the index files, KBMOD frames.

* :mod:`.solve`  - source detection and hinted ``solve-field`` per frame, WCS cards.
* :mod:`.follow` - a night's solutions from one reference ``solve-field``: every other frame matched
  to the catalogue and refitted (TAN-SIP), progress/resume, neighbour checks.
* :mod:`.tycho`  - Tycho-2 stars read offline from astrometry.net's index files.
* :mod:`.kbmod`  - KBMOD input frames from calibrated, solved frames (``rules/kbmod.smk``).
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "solve_field": ".solve",
    "read_wcs": ".solve",
    "solve_sequence": ".follow",
    "kbmod_from_calibrated": ".kbmod",
})
