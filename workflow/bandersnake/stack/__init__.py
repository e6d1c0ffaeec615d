"""Deep images: aligned, mask-aware stacks with sources, an effective PSF, zero points and depth.

Stage ``rules/stack.smk``. Entry points (loaded lazily, PEP 562, so importing the stage costs
nothing until one is used):

* :func:`stack_group` (:mod:`.build`): select, align, resample and combine one group's
  calibrated frames into a stack image and its frame table;
* :func:`measure_stack` (:mod:`.measure`): sources, ePSF, PSF photometry, zero point and limits
  of a stack image into the ``<TARGET>_<FILTER>_stk.fits`` product and its plots;
* :func:`stack_nights` (:mod:`.nights`): one target and filter over several nights.
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "stack_group": ".build",
    "stack_night_group": ".build",
    "select_frames": ".build",
    "stack_frames": ".build",
    "group_paths": ".build",
    "measure_stack": ".measure",
    "describe_stack": ".measure",
    "stack_nights": ".nights",
})
