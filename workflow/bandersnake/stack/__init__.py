"""Deep images: aligned, mask-aware stacks with sources, an effective PSF, zero points and depth.

Stage ``rules/stack.smk``. Entry points (loaded lazily, PEP 562, so importing the stage costs
nothing until one is used):

* :func:`stack_group` (:mod:`.build`): select, align, resample and combine one group's
  calibrated frames into a stack image and its frame table;
* :func:`measure_stack` (:mod:`.measure`): sources, ePSF, PSF photometry, zero point and limits
  of a stack image into the ``<TARGET>_<FILTER>_stk.fits`` product and its plots;
* :func:`stack_nights` (:mod:`.nights`): one target and filter over several nights.
"""

_ENTRY = {"stack_group": ".build", "measure_stack": ".measure", "stack_nights": ".nights",
          "stack_night_group": ".build", "group_paths": ".build",
          "select_frames": ".build", "stack_frames": ".build"}


def __getattr__(name):
    if name in _ENTRY:
        import importlib

        return getattr(importlib.import_module(_ENTRY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_ENTRY))
