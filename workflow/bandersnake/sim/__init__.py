"""The night simulator: raw frames with known truth (transits, positions, noise, WCS).

* :mod:`.night`    - the entry point: plan and write a whole night (``bandersnake-simulate``, the demo).
* :mod:`.transit`  - limb-darkened transit light curve (quadratic law), circular orbit.
* :mod:`.site`     - site geometry with astropy: sun altitude, airmass, BJD_TDB (no downloads).
* :mod:`.detector` - true bias structure, dark-rate map, flat field and bad-pixel map.
* :mod:`.render`   - Moffat stars in stamps, cosmic-ray tracks, one raw frame in ADU.
* :mod:`.maxim`    - MaxIm DL-style headers, file names and (optionally gzipped) uint16 writes.
* :mod:`.astep`    - ASTEP-style date folders and frame names.
* :mod:`.survey`   - reference cells + a coarse frame from one star list (the templates stage).
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "demo_config": ".night",
    "simulate_night": ".night",
    "small_config": ".night",
    "simulate_pair": ".survey",
})
