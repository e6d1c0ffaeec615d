"""Joint fit of a target's nights: shared radius ratio, impact parameter, stellar density (orbit
shape) and limb darkening; one mid-time per night; a linear ephemeris from those mid-times.

The light-curve model of each night depends on the period only through the orbit's curvature, so
the period is held at the configured value inside the MCMC and the mid-times are free: they are
the transit times (TTV analysis needs them free). The ephemeris update is the weighted linear fit
T(E) = T0 + E P to the nights' mid-times (posterior medians, weights from the 16-84 % half-width),
with the configured ephemeris as one more measurement when it gives ``t0_err`` and ``period_err``;
its errors are those of the weighted least squares (not rescaled by the fit's chi^2, whose few
degrees of freedom would make the rescaling noisy; the chi^2 and O-C are reported for the reader).
"""

import logging
import math

import numpy as np

from .fit import DEFAULTS, fit_transits, prepare_night

log = logging.getLogger("bandersnake.transitfit")


def linear_ephemeris(times, errors, period_guess, ref_epoch_time=None, prior=None):
    """Weighted least-squares ephemeris T(E) = T0 + E P.

    Parameters
    ----------
    times, errors : sequence of float
        Mid-transit times and 1-sigma errors (d).
    period_guess : float
        Period (d) to number the epochs.
    ref_epoch_time : float, optional
        Time of epoch 0 (default: the time nearest the weighted mean).
    prior : dict, optional
        ``t0``, ``t0_err``, ``period``, ``period_err`` of a published ephemeris: its T0 enters as a
        measurement at its own epoch and its period as a measurement of P.

    Returns
    -------
    dict
        ``t0``, ``t0_err``, ``period``, ``period_err`` (d), ``epochs``, ``o_minus_c_min``,
        ``t0_err_min``, ``chi2``, ``dof``.
    """
    times, errors = np.asarray(times, float), np.asarray(errors, float)
    w = 1 / errors**2
    ref = ref_epoch_time if ref_epoch_time is not None else times[np.argmin(np.abs(times - np.average(times, weights=w)))]
    epochs = np.round((times - ref) / period_guess)
    rows, ys, ws = [[1.0, e] for e in epochs], list(times - ref), list(w)
    if prior and prior.get("t0_err") and prior.get("period_err"):
        e0 = round((prior["t0"] - ref) / period_guess)
        rows.append([1.0, e0])
        ys.append(prior["t0"] - ref)
        ws.append(1 / prior["t0_err"] ** 2)
        rows.append([0.0, 1.0])
        ys.append(prior["period"])
        ws.append(1 / prior["period_err"] ** 2)
    a, y, wv = np.array(rows), np.array(ys), np.array(ws)
    if len(y) < 2 or np.linalg.matrix_rank(a) < 2:
        return {"t0": float(times[0]), "t0_err": float(errors[0]), "period": None, "period_err": None,
                "epochs": epochs.astype(int).tolist(), "note": "one mid-time and no prior ephemeris: no period"}
    fisher = a.T @ (a * wv[:, None])
    cov = np.linalg.inv(fisher)
    coef = cov @ (a.T @ (wv * y))
    resid = y - a @ coef
    oc = times - ref - (coef[0] + coef[1] * epochs)
    return {"t0": float(ref + coef[0]), "t0_err": float(math.sqrt(cov[0, 0])), "period": float(coef[1]),
            "period_err": float(math.sqrt(cov[1, 1])), "epochs": epochs.astype(int).tolist(),
            "o_minus_c_min": (oc * 1440).tolist(), "t0_err_min": (errors * 1440).tolist(),
            "chi2": float(np.sum(wv * resid**2)), "dof": int(len(y) - 2)}


def fit_joint(nights, settings, ld):
    """Joint MCMC of several nights.

    Parameters
    ----------
    nights : list of (str, dict)
        Night id and its inputs (``t``, ``flux``, ``err``, ``regressors``, ``exptime_s``; as
        :func:`~.night.read_lc_table` returns), with per-night settings under ``settings`` (t0,
        window, duration) if any.
    settings : dict
        Shared settings: ``period`` (required), ``t0``, ``t0_err``, ``period_err``, ``b``, ``b_err``, ``b_max``,
        ``stellar_density``, ``stellar_density_err``, ``baseline_order``, ``n_tau``, ``max_steps``.
    ld : dict
        Limb-darkening prior.

    Returns
    -------
    dict
        :func:`~.fit.fit_transits`'s result plus ``nights`` and ``ephemeris``.
    """
    s = {**DEFAULTS, **settings}
    if not s.get("period"):
        raise ValueError("a joint fit needs the period (analysis_settings.transit.<target>.period)")
    prepared, starts = [], []
    for name, inp in nights:
        # a window belongs to one night: the shared settings' (the last night's) is not inherited
        night_s = {**{k: v for k, v in s.items() if k != "window"}, **(inp.get("settings") or {})}
        nd, st = prepare_night(name, inp["t"], inp["flux"], inp["err"], night_s, inp.get("regressors"),
                               inp.get("exptime_s"))
        prepared.append(nd)
        starts.append(st)
    res = fit_transits(prepared, starts, s, ld)
    res["nights"] = [n for n, _ in nights]
    t0s = [r["median"] for r in res["t0"]]
    errs = [0.5 * (r["p84"] - r["p16"]) for r in res["t0"]]
    prior = {k: s.get(k) for k in ("t0", "t0_err", "period", "period_err")}
    res["ephemeris"] = linear_ephemeris(t0s, errs, s["period"], prior=prior if s.get("t0") else None)
    return res
