"""Templates from a finer survey image on a coarse detector's grid, and difference images.

Entry points (imported lazily, PEP 562, so importing the stage costs nothing until used):
:func:`write_psf`, :func:`write_mapping`, :func:`build_tile` (scatter), :func:`fit_offsets`,
:func:`write_template`, :func:`write_difference` (gather), :func:`make_template` (every step in
one process, :func:`assemble` the gather steps).
"""

from .._lazy import lazy_exports

_ENTRY_POINTS = {
    "write_psf": ".build",
    "write_mapping": ".build",
    "build_tile": ".tile",
    "assemble": ".assemble",
    "fit_offsets": ".assemble",
    "write_template": ".assemble",
    "write_difference": ".assemble",
    "make_template": ".run",
    "parse_tag": ".offsets",
    "settings": ".settings",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _ENTRY_POINTS)
