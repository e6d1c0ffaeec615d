"""Templates from a finer survey image on a coarse detector's grid, and difference images.

Entry points (imported lazily, PEP 562, so importing the stage costs nothing until used):
:func:`write_psf`, :func:`write_mapping`, :func:`build_tile` (scatter), :func:`fit_offsets`,
:func:`write_template`, :func:`write_difference` (gather), :func:`make_template` (every step in
one process, :func:`assemble` the gather steps).
"""

_ENTRY_POINTS = {
    "write_psf": ".build",
    "write_mapping": ".build",
    "build_tile": ".tile",
    "assemble": ".assemble",
    "fit_offsets": ".assemble",
    "write_template": ".assemble",
    "write_difference": ".assemble",
    "make_template": ".run",
    "settings": ".settings",
}


def __getattr__(name):
    if name in _ENTRY_POINTS:
        import importlib

        return getattr(importlib.import_module(_ENTRY_POINTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_ENTRY_POINTS)
