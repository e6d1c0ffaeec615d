"""Photometric zero point of a stack against a reference catalogue, and limiting magnitudes.

Catalogues (``stack.catalogue.source``):

* ``tycho`` (default, offline): Tycho-2 V_T of the astrometry.net index files
  (:func:`bandersnake.astrometry.tycho.stars_in_cone`); their uncertainty is not in the index
  files, so every star gets ``tycho_mag_err`` (0.05 mag by default).
* ``file``: a user catalogue, ECSV or CSV with columns ``ra``, ``dec`` (deg), ``mag``,
  ``mag_err`` (mag) and optionally ``colour`` (mag).
* ``gaia`` / ``panstarrs`` / ``skymapper`` / ``2mass`` (online, only when asked): VizieR through
  ``astroquery`` (an optional dependency: ``pip install astroquery``), cached on disk as ECSV under
  ``cache_dir`` so a stack is re-measured offline. Tests use recorded responses, never the network.

The zero point is the inverse-variance weighted mean of ``m_cat - m_inst`` over matched,
unflagged stars with S/N >= ``min_snr``, iteratively clipped at ``clip_sigma`` times the larger
of the weighted scatter and the stars' own errors; with ``colour_term`` and a ``colour`` column a
linear colour term is fitted as well. ZPTMUCER is the larger of the formal error of the mean and
scatter / sqrt(N).
"""

import logging
import math
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..errors import BandersnakeError

log = logging.getLogger(__name__)

# VizieR tables: (catalogue id, RA column, Dec column, {band: (mag column, error column)}, colour columns)
ONLINE = {
    "gaia": ("I/355/gaiadr3", "RA_ICRS", "DE_ICRS", {"G": ("Gmag", "e_Gmag"), "BP": ("BPmag", "e_BPmag"),
                                                     "RP": ("RPmag", "e_RPmag")}, ("BPmag", "RPmag")),
    "panstarrs": ("II/349/ps1", "RAJ2000", "DEJ2000", {b: (f"{b}mag", f"e_{b}mag") for b in "grizy"},
                  ("gmag", "rmag")),
    "skymapper": ("II/379/smssdr4", "RAICRS", "DEICRS", {b: (f"{b}PSF", f"e_{b}PSF") for b in "uvgriz"},
                  ("gPSF", "rPSF")),
    "2mass": ("II/246/out", "RAJ2000", "DEJ2000", {"J": ("Jmag", "e_Jmag"), "H": ("Hmag", "e_Hmag"),
                                                   "K": ("Kmag", "e_Kmag"), "Ks": ("Kmag", "e_Kmag")},
              ("Jmag", "Kmag")),
}

DEFAULTS = dict(source="tycho", file=None, band=None, index_dir="/usr/share/astrometry", tycho_mag_err=0.05,
                cache_dir=None, match_radius_arcsec=None, min_snr=10.0, clip_sigma=3.0, colour_term=False,
                mag_range=None)


def _standard(table, path_for_errors):
    missing = [c for c in ("ra", "dec", "mag") if c not in table.colnames]
    if missing:
        raise BandersnakeError(f"{path_for_errors}: catalogue has no column(s) {', '.join(missing)} "
                               "(needs ra, dec in deg, mag, mag_err)")
    out = Table({"ra": np.asarray(table["ra"], float), "dec": np.asarray(table["dec"], float),
                 "mag": np.asarray(table["mag"], float)})
    out["mag_err"] = np.asarray(table["mag_err"], float) if "mag_err" in table.colnames else np.full(len(out), 0.05)
    if "colour" in table.colnames:
        out["colour"] = np.asarray(table["colour"], float)
    good = np.isfinite(out["ra"]) & np.isfinite(out["dec"]) & np.isfinite(out["mag"])
    return out[good]


def file_catalogue(path):
    """A user catalogue (ECSV or CSV: ra, dec in deg, mag, mag_err, optional colour)."""
    path = Path(path)
    if not path.exists():
        raise BandersnakeError(f"{path}: catalogue file not found")
    fmt = "ascii.ecsv" if path.suffix.lower() == ".ecsv" else "ascii.csv"
    try:
        table = Table.read(path, format=fmt)
    except Exception as err:  # astropy's readers raise many types for a malformed file
        raise BandersnakeError(f"{path}: unreadable catalogue ({type(err).__name__}: {err})") from None
    return _standard(table, path)


def tycho_catalogue(ra_deg, dec_deg, radius_deg, index_dir, mag_err=0.05):
    """Tycho-2 stars (V_T) around a position from the astrometry.net index files."""
    from ..astrometry.tycho import stars_in_cone

    s = stars_in_cone(ra_deg, dec_deg, radius_deg, index_dir)
    t = Table({"ra": s.ra, "dec": s.dec, "mag": np.asarray(s.mag, float)})
    t["mag_err"] = np.full(len(t), float(mag_err))
    return t[np.isfinite(t["mag"])]


def _cache_path(cache_dir, name, band, ra, dec, radius):
    return Path(cache_dir) / f"{name}_{band}_{ra:.4f}_{dec:+.4f}_{radius * 60:.2f}arcmin.ecsv"


def online_catalogue(name, ra_deg, dec_deg, radius_deg, band, cache_dir, vizier=None):
    """A VizieR catalogue (Gaia DR3, Pan-STARRS1, SkyMapper, 2MASS) around a position, cached on disk.

    Parameters
    ----------
    name : {'gaia', 'panstarrs', 'skymapper', '2mass'}
    band : str
        Band of the catalogue (e.g. 'G', 'r', 'J').
    cache_dir : str or Path
        Query results are kept here as ECSV; a cached query never goes online.
    vizier : object, optional
        Stand-in for ``astroquery.vizier.Vizier`` (``query_region(coord, radius=, catalog=)``
        returning a list of tables), for tests with recorded responses.
    """
    if name not in ONLINE:
        raise BandersnakeError(f"stack.catalogue.source {name!r}: not one of tycho, file, {', '.join(ONLINE)}")
    cat_id, rac, decc, bands, colours = ONLINE[name]
    if band not in bands:
        raise BandersnakeError(f"stack.catalogue.band {band!r}: {name} has bands {', '.join(bands)}")
    magc, errc = bands[band]
    cache = _cache_path(cache_dir, name, band, ra_deg, dec_deg, radius_deg) if cache_dir else None
    if cache is not None and cache.exists():
        return Table.read(cache, format="ascii.ecsv")
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    if vizier is None:
        try:
            from astroquery.vizier import Vizier
        except ImportError:
            raise BandersnakeError("stack.catalogue.source needs astroquery for online catalogues "
                                   "(pip install astroquery), or use 'tycho' or 'file'") from None
        vizier = Vizier(columns=[rac, decc, magc, errc, *colours], row_limit=-1)
    try:
        res = vizier.query_region(SkyCoord(ra_deg, dec_deg, unit="deg"), radius=radius_deg * u.deg, catalog=cat_id)
    except Exception as err:  # network errors come in many types
        raise BandersnakeError(f"{name} query at ({ra_deg:.4f}, {dec_deg:+.4f}) failed: {err}") from None
    if not res or len(res[0]) == 0:
        raise BandersnakeError(f"{name}: no stars within {radius_deg * 60:.1f}' of ({ra_deg:.4f}, {dec_deg:+.4f})")
    raw = res[0]
    t = Table({"ra": np.asarray(raw[rac], float), "dec": np.asarray(raw[decc], float),
               "mag": np.ma.filled(np.ma.asarray(raw[magc], float), np.nan)})
    t["mag_err"] = (np.ma.filled(np.ma.asarray(raw[errc], float), np.nan) if errc in raw.colnames
                    else np.full(len(t), 0.02))
    if all(c in raw.colnames for c in colours):
        t["colour"] = (np.ma.filled(np.ma.asarray(raw[colours[0]], float), np.nan)
                       - np.ma.filled(np.ma.asarray(raw[colours[1]], float), np.nan))
    t.meta.update(catalog=cat_id, band=band, ra=ra_deg, dec=dec_deg, radius_deg=radius_deg)
    t = t[np.isfinite(t["mag"])]
    if cache is not None:
        from ..fitsio import atomic_path

        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            t.write(tmp, format="ascii.ecsv", overwrite=True)
    return t


def load_catalogue(settings, ra_deg, dec_deg, radius_deg):
    """Reference catalogue of a stack field as configured (:data:`DEFAULTS` keys).

    Returns
    -------
    table : astropy.table.Table
        ``ra``, ``dec`` (deg), ``mag``, ``mag_err`` (mag), optionally ``colour``.
    label : str
        Catalogue and band, for headers (e.g. 'Tycho-2 V_T').
    """
    s = dict(DEFAULTS, **(settings or {}))
    src = s["source"]
    if src == "tycho":
        return tycho_catalogue(ra_deg, dec_deg, radius_deg, s["index_dir"], s["tycho_mag_err"]), "Tycho-2 V_T"
    if src == "file":
        if not s["file"]:
            raise BandersnakeError("stack.catalogue.source 'file' needs stack.catalogue.file (ECSV/CSV path)")
        return file_catalogue(s["file"]), f"file {Path(s['file']).name}"
    return (online_catalogue(src, ra_deg, dec_deg, radius_deg, s["band"], s["cache_dir"]),
            f"{src} {s['band']}")


def crossmatch(ra1, dec1, ra2, dec2, radius_arcsec):
    """Nearest neighbour in (ra2, dec2) of each (ra1, dec1) within ``radius_arcsec``.

    Returns
    -------
    index : ndarray of int
        Index into the second list, -1 where nothing is close enough.
    sep : ndarray
        Separation (arcsec).
    """
    from astropy.coordinates import SkyCoord

    if len(ra1) == 0 or len(ra2) == 0:
        return np.full(len(ra1), -1), np.full(len(ra1), np.inf)
    c1 = SkyCoord(ra1, dec1, unit="deg")
    c2 = SkyCoord(ra2, dec2, unit="deg")
    idx, sep, _ = c1.match_to_catalog_sky(c2)
    sep = sep.arcsec
    return np.where(sep <= radius_arcsec, idx, -1), sep


def fit_zeropoint(m_cat, e_cat, m_inst, e_inst, clip_sigma=3.0, colour=None, max_iter=10):
    """Iteratively clipped, inverse-variance weighted zero point ``m_cat = m_inst + ZP (+ c colour)``.

    Returns
    -------
    dict
        ``zp``, ``zp_err`` (mag), ``n`` (stars kept), ``used`` (bool array), ``scatter`` (weighted
        RMS of the kept residuals), ``colour_term`` (NaN when not fitted), ``residual``.
    """
    m_cat, m_inst = np.asarray(m_cat, float), np.asarray(m_inst, float)
    var = np.asarray(e_cat, float) ** 2 + np.asarray(e_inst, float) ** 2
    var = np.where(np.isfinite(var) & (var > 0), var, 0.01 ** 2)
    d = m_cat - m_inst
    ok = np.isfinite(d)
    use_colour = colour is not None and np.isfinite(np.asarray(colour, float)[ok]).sum() >= 5
    col = np.asarray(colour, float) if use_colour else None
    if use_colour:
        ok &= np.isfinite(col)
    used = ok.copy()
    zp, ct = math.nan, math.nan
    for _ in range(max_iter):
        if used.sum() == 0:
            break
        w = 1.0 / var[used]
        if use_colour and used.sum() >= 5:
            A = np.column_stack([np.ones(used.sum()), col[used]])
            coef = np.linalg.lstsq(A * np.sqrt(w)[:, None], d[used] * np.sqrt(w), rcond=None)[0]
            zp, ct = float(coef[0]), float(coef[1])
            model = zp + ct * np.where(np.isfinite(col), col, 0.0)
        else:
            zp = float(np.sum(w * d[used]) / np.sum(w))
            model = np.full(len(d), zp)
        res = d - model
        scatter = float(np.sqrt(np.sum(w * res[used] ** 2) / np.sum(w))) if used.sum() > 1 else 0.0
        tol = clip_sigma * np.sqrt(np.maximum(var, scatter ** 2))
        new = ok & (np.abs(res) <= tol)
        if np.array_equal(new, used):
            break
        used = new
    n = int(used.sum())
    if n == 0:
        return dict(zp=math.nan, zp_err=math.nan, n=0, used=used, scatter=math.nan, colour_term=math.nan,
                    residual=np.full(len(d), np.nan))
    w = 1.0 / var[used]
    formal = float(1.0 / np.sqrt(np.sum(w)))
    res = d - (zp + (ct * np.where(np.isfinite(col), col, 0.0) if use_colour else 0.0))
    scatter = float(np.std(res[used], ddof=1)) if n > 1 else math.nan
    err = max(formal, scatter / math.sqrt(n)) if n > 1 else formal
    return dict(zp=zp, zp_err=err, n=n, used=used, scatter=scatter, colour_term=ct if use_colour else math.nan,
                residual=res)


def limiting_magnitudes(zp, ap_sigma, ee, nsigmas=(3, 5, 10)):
    """``{N: magnitude}`` of a point source measured at N sigma in the limiting aperture.

    Parameters
    ----------
    zp : float
        Zero point (mag for 1 e-/s); NaN gives instrumental magnitudes (``-2.5 log10 flux``).
    ap_sigma : float
        Sky noise in the aperture (e-/s), from random apertures.
    ee : float
        Fraction of a point source's light in the aperture.
    """
    zp = 0.0 if not math.isfinite(zp) else zp
    out = {}
    for n in nsigmas:
        flux = n * ap_sigma / ee if (ee and ee > 0 and math.isfinite(ee)) else math.nan
        out[n] = zp - 2.5 * math.log10(flux) if flux and math.isfinite(flux) and flux > 0 else math.nan
    return out
