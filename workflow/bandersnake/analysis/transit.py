"""The project's own Mandel-Agol transit model and a quick least-squares fit, for the tests.

The workflow fits transits with :mod:`bandersnake.transitfit` (batman model, emcee posteriors).
This module stays as an independent implementation: tests/test_transitfit.py checks batman
against :mod:`bandersnake.sim.transit` and tests/test_transit_models_agree.py this model against
that one, and tests use :func:`fit_transit` as a fast depth check of light curves.

Model: Mandel & Agol (2002) flux of a star with the quadratic law
``I(mu) = 1 - u1 (1 - mu) - u2 (1 - mu)^2`` occulted by an opaque disc of radius ``p`` (stellar
radii) at projected separation ``z``. We evaluate their integral form directly,

    blocked = I(1) A(1) + int_0^{pi/2} A(sin t) [u1 + 2 u2 (1 - cos t)] sin t dt,
    F = 1 - blocked / (pi (1 - u1/3 - u2/6)),

where ``A(r)`` is the overlap area of the planet with the stellar disc of radius ``r``
(integration by parts of the Mandel & Agol annulus sum). Gauss-Legendre quadrature on the
pieces where ``A`` is smooth, with a cosine substitution that removes the square-root ends of
the lens piece, gives the flux to better than 1e-7 (tested against the uniform-disc closed form
and a brute-force 2-D integration), without the elliptic-integral case analysis.

Fit: scipy ``least_squares`` of mid-time T0, radius ratio p, total duration T14, impact
parameter b (free in [0, b_max] or fixed) and a polynomial baseline (optionally + airmass).
Uncertainties come from the Jacobian covariance, scaled by max(1, reduced chi^2) and by the
red-noise factor beta of the residuals (time-averaging method, Winn et al. 2008). For white
noise and parameters that are nearly linear near the optimum this is the Cramer-Rao bound; the
test suite checks its coverage on many noise realisations. A bootstrap was not chosen: it costs
~100 fits and an i.i.d. resampling of residuals ignores correlated noise, which beta covers.
"""

import logging
import math

import numpy as np

log = logging.getLogger("bandersnake.analysis")

_GL_X, _GL_W = np.polynomial.legendre.leggauss(20)  # converges to 1e-14 (see tests)


def overlap_area(r, p, z):
    """Area of overlap of a disc of radius ``r`` and a disc of radius ``p`` at centre distance ``z``.

    All arguments broadcast; lengths in stellar radii.
    """
    r, p, z = np.broadcast_arrays(np.asarray(r, float), np.asarray(p, float), np.asarray(z, float))
    area = np.zeros(r.shape)
    inside = z <= np.abs(r - p)
    area[inside] = math.pi * np.minimum(r, p)[inside] ** 2
    lens = (~inside) & (z < r + p)
    if lens.any():
        rl, pl, zl = r[lens], p[lens], z[lens]
        k0 = np.arccos(np.clip((zl**2 + rl**2 - pl**2) / (2 * zl * rl), -1, 1))
        k1 = np.arccos(np.clip((zl**2 + pl**2 - rl**2) / (2 * zl * pl), -1, 1))
        tri = np.sqrt(np.clip(4 * zl**2 * rl**2 - (zl**2 + rl**2 - pl**2) ** 2, 0, None))
        area[lens] = rl**2 * k0 + pl**2 * k1 - 0.5 * tri
    return area


def _segment(theta_lo, theta_hi, p, z, u1, u2, cosine=False):
    """Integral of A(sin t) [u1 + 2 u2 (1 - cos t)] sin t over [theta_lo, theta_hi] (per z)."""
    lo, hi = theta_lo[:, None], theta_hi[:, None]
    if cosine:  # t = lo + (hi - lo)(1 - cos phi)/2 clusters nodes at both ends
        phi = (_GL_X[None, :] + 1) * math.pi / 2
        t = lo + (hi - lo) * (1 - np.cos(phi)) / 2
        jac = (hi - lo) / 2 * np.sin(phi) * math.pi / 2
    else:
        t = lo + (hi - lo) * (_GL_X[None, :] + 1) / 2
        jac = (hi - lo) / 2 * np.ones_like(t)
    r = np.sin(t)
    f = overlap_area(r, p, z[:, None]) * (u1 + 2 * u2 * (1 - np.cos(t))) * r
    return np.sum(f * jac * _GL_W[None, :], axis=1)


def occulted_flux(z, p, u1=0.0, u2=0.0):
    """Relative flux of a quadratically limb-darkened star occulted by a dark disc.

    Parameters
    ----------
    z : ndarray
        Centre separation (stellar radii).
    p : float
        Radius ratio Rp/R*.
    u1, u2 : float
        Quadratic limb-darkening coefficients.

    Returns
    -------
    ndarray
        F(z), 1 out of transit.
    """
    z = np.atleast_1d(np.abs(np.asarray(z, dtype=float)))
    flux = np.ones(z.shape)
    hit = z < 1 + p
    if not hit.any() or p <= 0:
        return flux
    zh = z[hit]
    a1 = overlap_area(1.0, p, zh)
    blocked = (1 - u1 - u2) * a1
    if u1 != 0 or u2 != 0:
        th1 = np.arcsin(np.clip(np.abs(zh - p), 0, 1))
        th2 = np.arcsin(np.clip(zh + p, 0, 1))
        top = np.full(zh.shape, math.pi / 2)
        blocked = (blocked + _segment(np.zeros_like(zh), th1, p, zh, u1, u2)
                   + _segment(th1, th2, p, zh, u1, u2, cosine=True)
                   + _segment(th2, top, p, zh, u1, u2))
    flux[hit] = 1 - blocked / (math.pi * (1 - u1 / 3 - u2 / 6))
    return flux


def separation(t, t0, p, t14, b, period=None):
    """Projected separation z(t) (stellar radii) for a transit of total duration ``t14`` (d).

    With ``period`` (d) a circular orbit whose a/R* and inclination reproduce ``t14`` and ``b``;
    without, a straight chord at constant speed (the limit P >> T14).
    """
    t = np.asarray(t, dtype=float)
    chord2 = max((1 + p) ** 2 - b**2, 1e-12)
    if period is None:
        x = 2 * (t - t0) / t14
        return np.sqrt(b**2 + chord2 * x**2)
    s = math.sin(math.pi * t14 / period)
    a = math.sqrt(b**2 + chord2 / max(s**2, 1e-12))
    cosi = b / a
    phase = 2 * math.pi * (t - t0) / period
    z = a * np.sqrt(np.sin(phase) ** 2 + (cosi * np.cos(phase)) ** 2)
    return np.where(np.cos(phase) > 0, z, 10.0 + a)  # behind the star: no occultation


def transit_model(t, t0, p, t14, b=0.0, u1=0.4, u2=0.25, period=None):
    """Relative flux of a transit at times ``t`` (d); see :func:`separation` and :func:`occulted_flux`."""
    return occulted_flux(separation(t, t0, p, t14, b, period), p, u1, u2)


def red_noise_beta(t, resid, err, bins_min=(10, 15, 20, 30)):
    """Red-noise factor beta >= 1 (Winn et al. 2008): binned residual scatter over its white expectation."""
    t = np.asarray(t, float)
    betas = []
    sigma1 = np.std(resid, ddof=1)
    for width in bins_min:
        idx = np.floor((t - t.min()) / (width / 1440.0)).astype(int)
        counts = np.bincount(idx)
        use = counts[idx] > 0
        sums = np.bincount(idx[use], resid[use])
        good = counts > 0
        if good.sum() < 4:
            continue
        means = sums[good] / counts[good]
        n_mean = np.mean(counts[good])
        m = good.sum()
        expected = sigma1 / math.sqrt(n_mean) * math.sqrt(m / (m - 1))
        betas.append(np.std(means, ddof=1) / expected)
    return max(1.0, float(np.median(betas))) if betas else 1.0


def box_search(t, y, w, t0_range, durations):
    """Best (t0, t14, depth) of a box transit by weighted least squares on a grid."""
    best = (-np.inf, None, None, 0.0)
    step = max(np.median(np.diff(np.sort(t))) * 2, 2 / 1440)
    grid = np.arange(t0_range[0], t0_range[1] + step, step)
    for d in durations:
        for t0 in grid:
            inside = np.abs(t - t0) < d / 2
            if inside.sum() < 3 or (~inside).sum() < 3:
                continue
            m_in = np.average(y[inside], weights=w[inside])
            m_out = np.average(y[~inside], weights=w[~inside])
            depth = m_out - m_in
            snr = depth * math.sqrt(w[inside].sum())
            if snr > best[0]:
                best = (snr, t0, d, depth)
    return best[1], best[2], best[3]


def fit_transit(t, flux, err, period=None, t0=None, window=None, duration=None, b=None, b_max=0.9,
                u1=0.4, u2=0.25, baseline_order=1, airmass=None):
    """Fit a transit to a light curve.

    Parameters
    ----------
    t : ndarray
        Times (BJD_TDB, d).
    flux, err : ndarray
        Relative flux and 1-sigma error.
    period : float, optional
        Orbital period (d); a circular orbit is used with it, a straight chord without.
    t0 : float, optional
        Predicted mid-transit time (d); with ``period`` the epoch nearest the data is used. Start
        value of the fit; the fit may move it within ``window`` (default +-0.5 T14 guess).
    window : (float, float), optional
        Range of allowed mid-times (d). Without ``t0``, a box search inside it gives the start.
    duration : float, optional
        Starting guess of T14 (d); default: box search over 0.5-5 h.
    b : float, optional
        Fix the impact parameter; None fits it in [0, ``b_max``].
    u1, u2 : float
        Quadratic limb darkening (fixed).
    baseline_order : int
        Degree of the polynomial in time multiplying the model.
    airmass : ndarray, optional
        Adds a linear airmass term to the baseline.

    Returns
    -------
    dict
        ``t0``, ``t0_err`` (d), ``rp_rs``, ``rp_rs_err``, ``depth`` = (Rp/R*)^2 and ``depth_err``,
        ``depth_model`` (largest fractional flux loss of the fitted model, limb darkening
        included) and ``depth_model_err``, ``duration`` (T14, d) and ``duration_err``, ``b``,
        ``b_err``, ``chi2_red``, ``beta``, ``n_points``, ``success``, ``message``, ``baseline``
        (coefficients), plus ``model`` and ``t`` arrays for plotting.
    """
    t = np.asarray(t, float)
    flux = np.asarray(flux, float)
    err = np.asarray(err, float)
    ok = np.isfinite(t) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    if airmass is not None:
        airmass = np.asarray(airmass, float)
        ok &= np.isfinite(airmass)
    t, flux, err = t[ok], flux[ok], err[ok]
    am = airmass[ok] if airmass is not None else None
    if len(t) < 10:
        raise ValueError(f"only {len(t)} usable points: too few for a transit fit")
    tref = float(np.mean(t))

    if t0 is not None and period is not None:
        t0 = t0 + period * round((tref - t0) / period)
    if window is None:
        half = (duration if duration is not None else 3 / 24) / 2
        window = (t0 - half, t0 + half) if t0 is not None else (t.min() - 0.25 * (t.max() - t.min()),
                                                                   t.max() + 0.25 * (t.max() - t.min()))
    window = (float(min(window)), float(max(window)))
    if t0 is None or duration is None:
        # 10 and 20 min first: short nights (or short transits) leave no out-of-transit frames
        # around a box of 30 min or more.
        durations = [duration] if duration is not None else np.concatenate(
            [[10 / 1440, 20 / 1440], np.arange(0.5, 5.01, 0.25) / 24])
        rng = (t0, t0) if t0 is not None else window
        bt0, bdur, bdepth = box_search(t, flux, 1 / err**2, rng, durations)
        if bt0 is None:
            raise ValueError("no transit-like dip found in the search window (too few frames in or out of "
                             "every trial box; give a duration)")
        t0 = bt0 if t0 is None else t0
        duration = bdur if duration is None else duration
        depth0 = bdepth
    else:
        inside = np.abs(t - t0) < duration / 4
        depth0 = np.median(flux[~inside]) - np.median(flux[inside]) if inside.sum() > 2 else 0.01
    p0 = math.sqrt(min(max(depth0, 1e-4), 0.2) * 1.2)
    t0 = float(np.clip(t0, *window))

    fit_b = b is None
    names = ["t0", "p", "t14"] + (["b"] if fit_b else []) + [f"c{i}" for i in range(baseline_order + 1)]
    names += ["k_airmass"] if am is not None else []
    # Times are fitted in hours from the mean time: least_squares' xtol is relative to |x|, and a
    # BJD of 2.46e6 d would let it stop 30 minutes from the optimum.
    hr = 24.0
    x0 = [(t0 - tref) * hr, p0, duration * hr] + ([0.3] if fit_b else [])
    x0 += [float(np.median(flux))] + [0.0] * baseline_order
    x0 += [0.0] if am is not None else []
    lo = [(window[0] - tref) * hr, 0.005, 0.2] + ([0.0] if fit_b else []) + [-np.inf] * (baseline_order + 1)
    hi = [(window[1] - tref) * hr, 0.5, 12.0] + ([b_max] if fit_b else []) + [np.inf] * (baseline_order + 1)
    lo += [-np.inf] if am is not None else []
    hi += [np.inf] if am is not None else []
    x0 = np.clip(x0, np.array(lo) + 1e-12, np.array(hi) - 1e-12)
    am_ref = float(np.median(am)) if am is not None else 0.0
    dt = (t - tref)

    def model(x):
        par = dict(zip(names, x))
        base = np.polyval([par[f"c{i}"] for i in range(baseline_order, -1, -1)], dt)
        if am is not None:
            base = base + par["k_airmass"] * (am - am_ref)
        return base * transit_model(t, tref + par["t0"] / hr, par["p"], par["t14"] / hr, par.get("b", b), u1, u2,
                                    period)

    # A night that misses the baseline on one side leaves depth, duration and baseline nearly
    # degenerate, and the trust-region steps creep along that valley: XO-1 b on the real ARCSAT
    # night took 3376 evaluations, 8x scipy's default budget of 100 per parameter.
    from scipy.optimize import least_squares  # here: the Snakefile imports this module at every start

    res = least_squares(lambda x: (model(x) - flux) / err, x0, bounds=(lo, hi), x_scale="jac",
                        max_nfev=2000 * len(x0))
    resid = flux - model(res.x)
    dof = max(1, len(t) - len(names))
    chi2_red = float(np.sum((resid / err) ** 2) / dof)
    beta = red_noise_beta(t, resid, err)
    try:
        cov = np.linalg.inv(res.jac.T @ res.jac) * max(1.0, chi2_red) * beta**2
    except np.linalg.LinAlgError:
        cov = np.full((len(names), len(names)), np.nan)
    par = dict(zip(names, res.x))
    sig = dict(zip(names, np.sqrt(np.clip(np.diag(cov), 0, None))))
    for key in ("t0", "t14"):  # back to days
        sig[key] /= hr
    par["t14"] /= hr
    par["t0"] = tref + par["t0"] / hr
    bb = par.get("b", b)

    def model_depth(x):
        pp = dict(zip(names, x))
        z_min = pp.get("b", b)
        return 1 - occulted_flux(np.array([z_min]), pp["p"], u1, u2)[0]

    grad = _num_grad(model_depth, res.x, np.maximum(np.abs(res.x) * 1e-6, 1e-9))
    out = {
        "t0": par["t0"], "t0_err": sig["t0"],
        "rp_rs": par["p"], "rp_rs_err": sig["p"],
        "depth": par["p"] ** 2, "depth_err": 2 * par["p"] * sig["p"],
        "depth_model": model_depth(res.x), "depth_model_err": float(math.sqrt(max(grad @ cov @ grad, 0))),
        "duration": par["t14"], "duration_err": sig["t14"],
        "b": float(bb), "b_err": float(sig.get("b", 0.0)), "b_fixed": not fit_b,
        "u1": u1, "u2": u2, "period": period,
        "baseline": [float(par[f"c{i}"]) for i in range(baseline_order + 1)],
        "chi2_red": chi2_red, "beta": beta, "n_points": int(len(t)),
        "success": bool(res.success), "message": str(res.message),
        "t": t, "flux": flux, "err": err, "model": model(res.x),
        "transit_only": transit_model(t, par["t0"], par["p"], par["t14"], bb, u1, u2, period),
    }
    # b = 0 is a physical limit, not a failed fit; other parameters at a bound are worth a warning.
    at_bound = [n for n, v, lo_, hi_ in zip(names, res.x, lo, hi)
                if np.isfinite(lo_) and (abs(v - hi_) < 1e-6 or (abs(v - lo_) < 1e-6 and n != "b"))]
    if at_bound:
        out["message"] += f"; parameters at a bound: {', '.join(at_bound)}"
        log.warning("transit fit: parameters at a bound: %s", ", ".join(at_bound))
    return out


def _num_grad(f, x, h):
    g = np.zeros(len(x))
    for i in range(len(x)):
        xp, xm = np.array(x, float), np.array(x, float)
        xp[i] += h[i]
        xm[i] -= h[i]
        g[i] = (f(xp) - f(xm)) / (2 * h[i])
    return g
