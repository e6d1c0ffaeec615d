"""Targets given on the sky: placement through the night's WCS and automatic comparison stars.

Entry points are loaded lazily (PEP 562), so importing this stage does not import the others.
"""

_ENTRY = {"resolve_for_rule": "place", "resolve_sky_target": "place", "needs_placement": "place",
          "write_resolved": "place"}


def __getattr__(name):
    if name in _ENTRY:
        import importlib

        return getattr(importlib.import_module(f".{_ENTRY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
