"""One night's transit fit from the workflow's products: inputs, YAML report, light-curve table.

:func:`night_inputs` gathers the best (or configured) aperture's light curve, the detrending
regressors the juliet export writes (target sky, xc, yc, x_width, y_width, airmass, each scaled to
[-1, 1]) and the exposure time. :func:`report_dict` turns a fit into the YAML written as
``transit/transit_fit.yaml``; :func:`write_lc_table` writes ``transit/transit_lc.ecsv``, the
light curve and regressors the fit used, which the joint fit of a target's nights reads.
"""

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("bandersnake.transitfit")

REGRESSORS = ("airmass", "sky", "xc", "yc", "x_width", "y_width")
UNITS_NOTE = ("times BJD_TDB (d); t14 in d; rp_rs_sq = (Rp/R*)^2, the transit depth as usually quoted "
              "(fraction of the stellar flux); max_flux_drop = deepest fractional loss of light of the "
              "model, limb darkening included; each quantity: posterior median, minus/plus to the 16th/84th "
              "percentiles, p2.5/p97.5 for the 95 % interval")


def detrend_names(settings):
    """Regressors the settings ask for (``detrend`` list, plus ``airmass`` with ``detrend_airmass``)."""
    names = list(settings.get("detrend") or [])
    if settings.get("detrend_airmass") and "airmass" not in names:
        names.append("airmass")
    bad = [n for n in names if n not in REGRESSORS]
    if bad:
        raise ValueError(f"unknown detrending regressor(s) {bad}; choose from {list(REGRESSORS)}")
    return names


def night_inputs(differential_path, centroid_path, settings, aperture=None):
    """Arrays the fit of one night needs.

    Returns
    -------
    dict
        ``t`` (BJD_TDB), ``flux``, ``err``, ``regressors`` (dict, scaled to [-1, 1]), ``exptime_s``
        (median exposure, s), ``aperture`` (px).
    """
    from ..analysis.differential import read_differential
    from ..analysis.exports import _target_columns, scale_to_unit
    from ..analysis.io import read_centroids

    table = read_differential(differential_path, aperture)
    radius = float(table["_header"]["APERRAD"])
    ok = table["frame_ok"].astype(bool)
    names = detrend_names(settings)
    regs = {}
    if names:
        phot = Path(differential_path).parent / f"photometry_aper{int(round(radius))}.fits"
        cols = _target_columns(table, centroid_path, phot)
        regs = {n: scale_to_unit(np.asarray(cols[n], float)[ok]) for n in names}
    cen = read_centroids(centroid_path)
    exptime = float(np.nanmedian(cen["exptime"])) if "exptime" in cen else None
    return {"t": np.asarray(table["BJD_TDB"], float)[ok], "flux": np.asarray(table["diff_flux"], float)[ok],
            "err": np.asarray(table["diff_flux_err"], float)[ok], "regressors": regs, "exptime_s": exptime,
            "aperture": radius}


def plain(v):
    """YAML-safe python values (numpy scalars and arrays to floats and lists)."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()]
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    return v


def report_dict(res, settings, night="", target="", aperture=None):
    """The YAML report of a night's fit (see the module docstring for the keys)."""
    b_prior = res.get("b_prior")
    p = res["parameters"]
    b_fixed = p["b"]["median"] if p["b"].get("fixed") else None
    rep = {"success": True, "message": "converged" if res["chain"]["converged"] else
           "chain shorter than n_tau autocorrelation times: intervals less certain",
           "night": night, "target": target, "aperture": aperture,
           "t0": res["t0"], "rp_rs_sq": p["rp_rs_sq"], "max_flux_drop": p["max_flux_drop"]}
    for key in ("rp_rs", "b", "t14", "a_rs", "inc_deg", "stellar_density", "u1", "u2"):
        if key in p:
            rep[key] = p[key]
    if "contacts" in res:    # first / last contact, T0 -/+ T14/2 (what a partial transit measures)
        rep.update(res["contacts"])
    rep["baseline"] = res["baseline"]
    rep["noise"] = res["noise"]
    rep["chain"] = {k: v for k, v in res["chain"].items() if k != "max_log_prob_vector"}
    rep["priors"] = {"period": res.get("period"), "window": res.get("window"),
                     "stellar_density": list(res["density_prior"]) if res.get("density_prior") else None,
                     "limb_darkening": res["ld"], "b_fixed": b_fixed,
                     "b_gaussian": list(b_prior) if b_prior else None, "b_max": settings.get("b_max"),
                     "gp": res.get("gp_prior"),
                     "baseline_order": int(settings.get("baseline_order", 1)), "detrend": detrend_names(settings)}
    rep["units"] = UNITS_NOTE
    return plain(rep)


MODEL_COLUMNS = ("transit_model", "baseline", "model", "red_noise")


def write_lc_table(inputs, res, settings, path, night="", target=""):
    """The light curve, errors and regressors the fit used, with its settings (ECSV, for the joint
    fit), and the posterior-median model: ``transit_model``, ``baseline``, ``model`` (their product)
    and, with the GP, ``red_noise`` (its mean)."""
    from astropy.table import Table

    from ..fitsio import atomic_path

    best = res["best"]
    t = Table()
    t["BJD_TDB"] = best["t"]
    t["flux"] = best["flux"]
    t["flux_err"] = best["err_in"]          # the errors as given: each fit scales them itself
    # the posterior-median model, for the figures (rule transit_plots) and the user
    t["transit_model"] = best["transit"]
    t["baseline"] = best["baseline"]
    t["model"] = best["model"]
    if best.get("red_noise") is not None:
        t["red_noise"] = best["red_noise"]
    mask = np.isin(inputs["t"], best["t"])
    for name, v in inputs["regressors"].items():
        t[name] = np.asarray(v)[mask]
    t["BJD_TDB"].unit = "d"
    t.meta.update(plain({"night": night, "target": target, "exptime_s": inputs.get("exptime_s"),
                         "aperture": inputs.get("aperture"), "regressors": list(inputs["regressors"]),
                         "settings": {k: v for k, v in settings.items()}}))
    with atomic_path(path) as tmp:
        t.write(tmp, format="ascii.ecsv", overwrite=True)
    return Path(path)


def read_lc_table(path):
    """(arrays dict, meta) of a ``transit_lc.ecsv``; the arrays include the model columns
    (:data:`MODEL_COLUMNS`) present."""
    from astropy.table import Table

    t = Table.read(path, format="ascii.ecsv")
    regs = {n: np.asarray(t[n], float) for n in t.meta.get("regressors", [])}
    arrays = {"t": np.asarray(t["BJD_TDB"], float), "flux": np.asarray(t["flux"], float),
              "err": np.asarray(t["flux_err"], float), "regressors": regs, "exptime_s": t.meta.get("exptime_s")}
    # the posterior-median model (tables of a successful fit)
    arrays.update({n: np.asarray(t[n], float) for n in MODEL_COLUMNS if n in t.colnames})
    return arrays, dict(t.meta)
