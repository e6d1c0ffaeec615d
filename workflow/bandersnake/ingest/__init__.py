"""Ingest stage: raw-frame discovery, the night's inventory and observation times.

* :mod:`.inventory` - one row per raw file: type, target, filter, exposure, times, session, verdict
  (``rules/inventory.smk``).
* :mod:`.timing`    - JD_UTC / BJD_TDB at mid-exposure from the instrument's time keywords.
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "make_inventory": ".inventory",
    "read_inventory": ".inventory",
    "draft_instrument": ".draft",
})
