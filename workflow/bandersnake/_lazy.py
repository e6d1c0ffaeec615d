"""Lazy entry points for the stage subpackages (PEP 562).

A stage's ``__init__`` names its entry points and the module that defines each; the module is
imported on first use. Importing ``bandersnake.photometry`` for :func:`resolve_for_night` therefore
does not compile the numba kernel, and a job of one stage never imports another stage's heavy
dependencies (numba, matplotlib, astropy.coordinates).
"""

from importlib import import_module


def lazy_exports(package, entry_points):
    """Module-level ``__getattr__``, ``__dir__`` and ``__all__`` for a package's entry points.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    entry_points : dict of str to str
        Entry-point name -> module relative to the package (e.g. ``".masters"``).

    Returns
    -------
    (callable, callable, list of str)
    """
    def __getattr__(name):
        try:
            module = entry_points[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(import_module(module, package), name)

    def __dir__():
        return sorted(entry_points)

    return __getattr__, __dir__, sorted(entry_points)
