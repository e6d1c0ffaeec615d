"""Quadratic limb darkening of the host star from the filter: a shipped table, or the user's values.

The table (``data/ld_quadratic.yaml``) holds u1, u2 of dwarf stars per passband and effective
temperature; its header says where the numbers come from. :func:`limb_darkening_prior` gives the
centres and widths of the Gaussian priors the fit uses, and says which source it took.
"""

import logging
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger("bandersnake.transitfit")

TABLE = Path(__file__).parent / "data" / "ld_quadratic.yaml"
DEFAULT_TEFF_K = 5750.0
# Filter names seen in headers (lower case, quotes/primes removed) -> band of the table.
ALIASES = {
    "u": "U", "b": "B", "v": "V", "r": "R", "rc": "R", "i": "I", "ic": "I",
    "up": "u", "gp": "g", "rp": "r", "ip": "i", "zp": "z", "g": "g", "z": "z",
    "sloan_u": "u", "sloan_g": "g", "sloan_r": "r", "sloan_i": "i", "sloan_z": "z",
    "sdss_u": "u", "sdss_g": "g", "sdss_r": "r", "sdss_i": "i", "sdss_z": "z",
    # SPECULOOS' I+z' (700-1100 nm) sits between i' and z': z' is the nearer profile
    "i+z": "z", "i+zp": "z", "iz": "z", "zyj": "z",
    "tess": "TESS", "kepler": "Kepler", "cheops": "CHEOPS", "gaia": "Gaia_G", "gaia_g": "Gaia_G",
    "ngts": "NGTS",
}


@lru_cache(maxsize=1)
def load_table(path=TABLE):
    """The limb-darkening table as a dict (``teff_K``, ``bands``, ``sigma``, ``source``)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


def band_of_filter(filter_name):
    """Table band for a filter name (``z``, ``z'``, ``Sloan_z``, ``I+z``, ``TESS`` ...), None if unknown."""
    if filter_name is None:
        return None
    key = re.sub(r"['\"]", "p", str(filter_name).strip()).lower().replace(" ", "_")
    bands = load_table()["bands"]
    if str(filter_name).strip() in bands:
        return str(filter_name).strip()
    return ALIASES.get(key)


def table_coefficients(band, teff_k):
    """Interpolated (u1, u2) of ``band`` at ``teff_k`` (K) and whether Teff lies inside the table."""
    tab = load_table()
    grid = np.asarray(tab["teff_K"], float)
    row = tab["bands"][band]
    inside = grid[0] <= teff_k <= grid[-1]
    teff = float(np.clip(teff_k, grid[0], grid[-1]))
    return float(np.interp(teff, grid, row["u1"])), float(np.interp(teff, grid, row["u2"])), inside


def limb_darkening_prior(settings, filter_name=None):
    """Centres and widths of the Gaussian priors on u1, u2.

    Parameters
    ----------
    settings : dict
        Fit settings: ``u1``, ``u2`` (user values, win over the table), ``ld_sigma`` (prior width,
        default the table's 0.1; 0 fixes the coefficients), ``teff`` (K, default 5750), ``filter``
        (overrides ``filter_name``).
    filter_name : str, optional
        The science filter (the master flat's FILTER).

    Returns
    -------
    dict
        ``u1``, ``u2``, ``sigma`` and ``source`` (text recorded in the fit's YAML).
    """
    s = settings or {}
    tab = load_table()
    sigma = s.get("ld_sigma")
    if s.get("u1") is not None and s.get("u2") is not None:
        sig = float(tab["sigma"] if sigma is None else sigma)
        return {"u1": float(s["u1"]), "u2": float(s["u2"]), "sigma": sig, "source": "user values (settings u1, u2)"}
    name = s.get("filter") or filter_name
    name = None if name is None else str(name)
    band = band_of_filter(name)
    teff = float(s.get("teff") or DEFAULT_TEFF_K)
    if band is None:
        log.warning("limb darkening: filter %r is not in the table (%s); using the z-band values at %g K "
                    "with a prior width of 0.2; give analysis_settings.transit.<target>.u1/u2 or filter",
                    name, ", ".join(tab["bands"]), teff)
        u1, u2, _ = table_coefficients("z", teff)
        return {"u1": u1, "u2": u2, "sigma": 0.2 if sigma is None else float(sigma),
                "source": f"filter {name!r} unknown: z band at Teff {teff:g} K, widened prior"}
    u1, u2, inside = table_coefficients(band, teff)
    sig = float(tab["sigma"] if sigma is None else sigma)
    if not inside:
        log.warning("limb darkening: Teff %g K outside the table (%g-%g K): nearest edge, prior width doubled",
                    teff, tab["teff_K"][0], tab["teff_K"][-1])
        sig *= 2
    return {"u1": u1, "u2": u2, "sigma": sig,
            "source": f"table band {band} (filter {name!r}), Teff {teff:g} K, log g 4.5: {tab['source']}"}
