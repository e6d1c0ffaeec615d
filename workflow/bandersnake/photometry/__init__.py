"""Photometry stage: centroids and multi-aperture photometry of each (night, target).

* :mod:`.drivers`   - the streaming driver (:func:`run_streaming`, one pass over the raw frames with the
  numba kernel) and the traditional one from calibrated frames; writes the product tables.
* :mod:`.kernel`    - the numba kernel: calibrate the needed pixels, track, centroid, sum apertures.
* :mod:`.aperture`  - exact circular-aperture sums and sky annulus statistics.
* :mod:`.centroid`  - windowed/flux-weighted centroids and the tracking star's component.
* :mod:`.targets`   - targets.yaml: pixel positions per night, comparison stars.
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "run_streaming": ".drivers",
    "centroid_and_photometry_from_reduced": ".drivers",
    "resolve_for_night": ".targets",
})
