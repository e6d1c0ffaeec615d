"""Calibration stage: master bias, dark and flat, the bad-pixel map, and calibrated science frames.

* :mod:`.masters`  - master bias/dark/flat and bad-pixel map from the night's calibration frames
  (``rules/calibration.smk``), with the documented fallback chain (:class:`Fallback`).
* :mod:`.combine`  - memory-bounded sigma-clipped combination of frame stacks.
* :mod:`.reduce`   - raw reading, per-frame calibration, reduced frames (traditional path).
* :mod:`.cosmics`  - cosmic-ray flagging (astroscrappy).
* :mod:`.frames`   - calibrated SCI/ERR/MASK frames of every science frame (``rules/calibrated.smk``).
* :mod:`.mef`      - the SCI/ERR/MASK layout and mask bits of calibrated frames.
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "Fallback": ".masters",
    "build_master_bias": ".masters",
    "build_master_dark": ".masters",
    "build_master_dark_matched": ".masters",
    "build_master_flat": ".masters",
    "build_bad_pixel_map": ".masters",
    "check_night_calibrations": ".masters",
    "master_paths": ".reduce",
    "reduce_frames": ".reduce",
    "calibrate_night": ".frames",
    "frames_from_inventory": ".frames",
    "solve_night": ".frames",
    "kbmod_night": ".frames",
})
