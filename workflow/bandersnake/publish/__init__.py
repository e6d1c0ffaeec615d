"""Publish stage: the night's summary and the hard-linked ``results/<night>/`` tree.

* :mod:`.summary` - ``night_summary.txt``: frames accepted/rejected, calibrations, flags per target.
* :mod:`.links`   - ``results/<night>/`` as hard links of the night's products in ``work/``.
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "night_summary": ".summary",
    "publish_night": ".links",
})
