"""Transit fit of one night or several nights together: best fit, noise, MCMC, summary.

:func:`fit_transits` is the engine (arrays in, a result dict out); :func:`fit_night` fits one
night, :mod:`.joint` several. Times are BJD_TDB days; depths are fractions of the stellar flux.

Quantities reported (medians and percentiles of the posterior, see :func:`~.sampler.summarize`):
``t0`` (per night), ``rp_rs_sq`` = (Rp/R*)^2 (the transit depth people quote and compare),
``rp_rs``, ``b``, ``t14`` (d), ``a_rs``, ``inc_deg`` and ``stellar_density`` (g/cm^3, with a
period), ``u1``, ``u2``, ``max_flux_drop`` (the deepest fractional loss of light of the model,
limb darkening included: not the depth), the baseline and detrending coefficients, plus the noise
(white scale, beta, rms; with the GP its ratio, time scale and amplitude) and the chain (steps,
walkers, autocorrelation times).
"""

import logging
import math

import numpy as np

from ..analysis.transit import box_search  # the start values of the old least-squares fit
from .model import TransitModel, ingress_duration, stellar_density
from .posterior import RP_RS_SQ_MAX, T14_MIN_D, NightData, Posterior, design_matrix
from .sampler import best_fit, run_mcmc, set_noise, summarize

log = logging.getLogger("bandersnake.transitfit")

DEFAULTS = dict(b_max=None, baseline_order=1, detrend=[], supersample_s=None, n_tau=25, max_steps=20000,
                seed=0, ld_sigma=None, noise="gp", gp_kernel="matern32", gp_h_prior="half_cauchy", threads=1)


def prepare_night(name, t, flux, err, settings, regressors=None, exptime_s=None):
    """A :class:`NightData` and start values (t0, t14, depth) for one night.

    Parameters
    ----------
    name : str
    t, flux, err : ndarray
        BJD_TDB (d), relative flux, error.
    settings : dict
        ``t0``, ``period``, ``window``, ``duration``, ``baseline_order``, ``supersample_s`` (longest
        sub-exposure of the exposure integration, s; None: tau/15 of the expected ingress).
    regressors : dict of ndarray, optional
        Detrending regressors (already scaled), same length as ``t``.
    exptime_s : float, optional
        Exposure time (s) for the integration of the model.
    """
    s = {**DEFAULTS, **(settings or {})}
    t, flux, err = (np.asarray(a, float) for a in (t, flux, err))
    regs = {k: np.asarray(v, float) for k, v in (regressors or {}).items()}
    ok = np.isfinite(t) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    for v in regs.values():
        ok &= np.isfinite(v)
    t, flux, err = t[ok], flux[ok], err[ok]
    regs = {k: v[ok] for k, v in regs.items()}
    n_lin = 1 + int(s["baseline_order"]) + len(regs)
    if len(t) < n_lin + 8:
        raise ValueError(f"{name}: only {len(t)} usable points: too few for a transit fit with {n_lin} baseline terms")
    period, t0 = s.get("period"), s.get("t0")
    tmid = float(np.mean(t))
    if t0 is not None and period:
        t0 = t0 + period * round((tmid - t0) / period)
    duration = s.get("duration")
    window = s.get("window")
    if window is None:
        half = (duration if duration is not None else 3 / 24) / 2
        if t0 is not None:
            window = (t0 - half, t0 + half)
        else:
            window = (t.min() - 0.25 * np.ptp(t), t.max() + 0.25 * np.ptp(t))
    window = (float(min(window)), float(max(window)))
    w = 1 / err**2
    if t0 is None or duration is None:
        durations = [duration] if duration is not None else np.concatenate(
            [[10 / 1440, 20 / 1440], np.arange(0.5, 5.01, 0.25) / 24])
        bt0, bdur, depth = box_search(t, flux, w, (t0, t0) if t0 is not None else window, durations)
        if bt0 is None:
            raise ValueError(f"{name}: no transit-like dip found in the search window (too few frames in or out "
                             "of every trial box; give a duration)")
        t0 = bt0 if t0 is None else t0
        duration = bdur if duration is None else duration
    else:
        inside = np.abs(t - t0) < duration / 4
        depth = np.median(flux[~inside]) - np.median(flux[inside]) if inside.sum() > 2 and (~inside).sum() > 2 else 0.01
    t0 = float(np.clip(t0, *window))
    design, lin_names = design_matrix(t, int(s["baseline_order"]), regs)
    step = s["supersample_s"]
    if step is None:   # tau/15 of the shortest ingress the start values allow (see .model)
        step = ingress_duration(duration, math.sqrt(min(max(depth, 2e-4), 0.2))) * 86400 / 15
    model = TransitModel(t, period, exptime_s, step)
    night = NightData(name, t, flux, err, design, lin_names, model, window, tref=round(tmid, 3))
    night.info["exptime_s"] = exptime_s
    night.info["supersample"] = model.factor
    return night, {"t0": t0, "t14": float(duration), "depth": float(min(max(depth, 2e-4), 0.2))}


def start_vectors(post, starts):
    """Starting vectors over a few impact parameters and durations for the best-fit search."""
    t0s = [st["t0"] for st in starts]
    depth = float(np.median([st["depth"] for st in starts]))
    t14 = float(np.median([st["t14"] for st in starts]))
    vecs = []
    bs = [None] if post.b_fixed is not None else [0.1, 0.45, 0.75]
    if post.b_prior:   # and the published value
        bs.insert(0, float(np.clip(post.b_prior[0], 0.0, 0.95)))
    for b in bs:
        for f in (1.0,):
            k2 = min(depth * 1.2, RP_RS_SQ_MAX * 0.9)
            vecs.append(post.pack(t0s, k2, b, float(np.clip(t14 * f, T14_MIN_D * 1.1, 0.45))))
    return vecs


def best_gp_start(post, x_white):
    """Start of the GP chain: the white-noise best fit of the transit with, per night, the best GP
    ratio and time scale for that transit (a grid, then Nelder-Mead on the two numbers). The
    walkers spread from there; a full optimisation of every parameter cost 3 s and did not change
    the chain's result (its burn-in is discarded)."""
    from scipy.optimize import minimize

    x = np.concatenate([x_white, np.zeros(2 * post.n_nights)])
    par = post.unpack(x)
    h_lo, h_hi = post.gp_log10_h
    for i, night in enumerate(post.nights):
        tr = post.transit(par, i)
        lo, hi = night.info["gp"]["log_tau_range"]

        def neg(v, tr=tr, lo=lo, hi=hi, night=night):
            lh, lt = v
            if not (h_lo <= lh <= h_hi and lo <= lt <= hi):
                return 1e300
            sol = post.gp_solve(night, tr, 10.0 ** lh, 10.0 ** lt / 1440.0)
            return -(sol[0] + float(post.log_gp_h_prior(lh))) if sol is not None else 1e300

        lhs = [v for v in (-1.0, -0.4, 0.0) if h_lo < v < h_hi] or np.linspace(h_lo, h_hi, 5)[1:4]
        pad = min(0.1, (hi - lo) / 5)     # inside a user's narrow range too
        grid = [(lh, lt) for lh in lhs for lt in np.linspace(lo + pad, hi - pad, 4)]
        v0 = min(grid, key=neg)
        res = minimize(neg, v0, method="Nelder-Mead", options=dict(maxiter=200, xatol=1e-3, fatol=1e-3))
        x[post.n_shape + 2 * i: post.n_shape + 2 * i + 2] = res.x if res.fun < neg(v0) else v0
    return x


def derived(post, samples):
    """Arrays of every reported quantity from the posterior samples (thinned chain)."""
    out = {name: [] for name in ("rp_rs_sq", "rp_rs", "b", "t14", "u1", "u2", "a_rs", "inc_deg",
                                 "stellar_density", "max_flux_drop")}
    t0s = [[] for _ in post.nights]
    zero = TransitModel(np.zeros(1), post.period)
    for x in samples:
        par = post.unpack(x)
        for i, t0 in enumerate(par["t0"]):
            t0s[i].append(t0)
        k = math.sqrt(par["rp_rs_sq"])
        a_rs, inc, t14, per = post.orbit(par)
        out["rp_rs_sq"].append(par["rp_rs_sq"])
        out["rp_rs"].append(k)
        out["b"].append(par["b"])
        out["t14"].append(t14)
        out["u1"].append(par["u1"])
        out["u2"].append(par["u2"])
        out["a_rs"].append(a_rs if post.period else np.nan)
        out["inc_deg"].append(inc if post.period else np.nan)
        out["stellar_density"].append(stellar_density(a_rs, post.period) if post.period else np.nan)
        # deepest point: mid-transit, no exposure smearing
        m = zero.flux_orbit(0.0, k, a_rs, inc, par["u1"], par["u2"], per)
        out["max_flux_drop"].append(1.0 - float(m[0]))
    return {k: np.array(v) for k, v in out.items()}, [np.array(v) for v in t0s]


UNITS = {"t0": "d (BJD_TDB)", "rp_rs_sq": "(Rp/R*)^2, fraction of the stellar flux", "rp_rs": "Rp/R*",
         "b": "R*", "t14": "d", "u1": "", "u2": "", "a_rs": "R*", "inc_deg": "deg", "stellar_density": "g/cm^3",
         "max_flux_drop": "fraction of the out-of-transit flux"}


def ingress_egress_in_frames(night, t0, t14, rp_rs, b):
    """Posterior probability that the night's frames cover part of the ingress (first to second
    contact) and part of the egress (third to fourth), from samples of T0, T14 (d), Rp/R* and b
    (ingress duration: :func:`~.model.ingress_duration`).

    A night that covers neither (frames all in the transit's flat part, or all out of transit)
    constrains T0 and the depth only through the priors and the baseline: warned, since such a fit
    can look confident (a red-noise wiggle taken for an ingress).
    """
    lo, hi = float(np.min(night.t)), float(np.max(night.t))
    ingress = ingress_duration(t14, rp_rs, b)
    t1, t4 = t0 - t14 / 2, t0 + t14 / 2
    out = {"ingress": float(np.mean((t1 < hi) & (t1 + ingress > lo))),
           "egress": float(np.mean((t4 - ingress < hi) & (t4 > lo)))}
    if max(out.values()) < 0.5:
        log.warning("%s: the frames (%.4f-%.4f) probably cover neither the ingress nor the egress "
                    "(posterior probability %.2f, %.2f): its T0 and rp_rs_sq rest on the priors and the "
                    "baseline", night.name, lo, hi, out["ingress"], out["egress"])
    return out


def b_prior_from(settings):
    """(mean, sigma) of the Gaussian prior on b when the settings give ``b`` with ``b_err`` > 0, else
    None (``b`` alone fixes it)."""
    if settings.get("b") is not None and settings.get("b_err"):
        return float(settings["b"]), float(settings["b_err"])
    return None


def fit_transits(nights, starts, settings, ld):
    """Fit one or several prepared nights with shared shape and per-night mid-times.

    Parameters
    ----------
    nights : list of NightData
    starts : list of dict
        Start values per night (:func:`prepare_night`).
    settings : dict
        ``period``, ``b`` (with ``b_err``: a Gaussian prior; alone: fixed), ``b_max``,
        ``stellar_density``, ``stellar_density_err``, ``n_tau``,
        ``max_steps``, ``seed``, ``threads`` (processes of the MCMC: 1 or 2).
    ld : dict
        Limb-darkening prior (:func:`~.limbdark.limb_darkening_prior`).

    Returns
    -------
    dict
        ``parameters`` (summaries), ``t0`` (list of summaries, per night), ``samples`` (dict of
        arrays), ``chain``, ``noise``, ``baseline``, ``best`` (per night: t, flux, err, model,
        transit, baseline arrays at the posterior median), ``names``.
    """
    s = {**DEFAULTS, **(settings or {})}
    density = None
    if s.get("stellar_density") is not None:
        density = (float(s["stellar_density"]), float(s.get("stellar_density_err") or 0.1 * s["stellar_density"]))
        if not s.get("period"):
            log.warning("stellar_density given without a period: the density prior is not used")
    noise = s.get("noise") or "gp"
    b_prior = b_prior_from(s)
    common = dict(period=s.get("period"), b_fixed=None if b_prior else s.get("b"), b_prior=b_prior,
                  b_max=s.get("b_max"), ld=ld, density=density)
    # best fit under white noise first: the start of every noise model, and the residuals whose
    # white scale and beta are reported (and used by the beta and white models)
    post = Posterior(nights, noise="white" if noise == "white" else "beta", **common)
    x_best, _ = best_fit(post, start_vectors(post, starts), threads=int(s.get("threads") or 1))
    set_noise(post, x_best, beta=noise != "white")
    if noise == "gp":
        post = Posterior(nights, noise="gp", kernel=s.get("gp_kernel") or "matern32", gp_h_range=s.get("gp_h_range"),
                         gp_tau_range_min=s.get("gp_tau_range_min"), gp_h_prior=s["gp_h_prior"], **common)
        x_best = best_gp_start(post, x_best)
    chain = run_mcmc(post, x_best, seed=int(s["seed"]), n_tau=float(s["n_tau"]), max_steps=int(s["max_steps"]),
                     threads=int(s.get("threads") or 1))
    samples = chain.pop("samples")
    log_prob = chain.pop("log_prob")
    values, t0s = derived(post, samples)
    params = {k: summarize(v, UNITS[k]) for k, v in values.items()
              if not (k in ("a_rs", "inc_deg", "stellar_density") and not post.period)}
    if post.b_fixed is not None:
        params["b"] = {"median": float(post.b_fixed), "fixed": True, "unit": "R*"}
    if not post.fit_ld:
        params["u1"] = {"median": ld["u1"], "fixed": True, "unit": ""}
        params["u2"] = {"median": ld["u2"], "fixed": True, "unit": ""}
    # b and rp_rs_sq live on bounded ranges: a posterior against b = 0 is reported by its
    # percentiles (p16 = 0.0x means "consistent with a central transit"), with a 95 % upper limit.
    if post.b_fixed is None:
        params["b"]["upper_95"] = float(np.percentile(values["b"], 95))
    t0_summ = [summarize(v, UNITS["t0"]) for v in t0s]
    # first and last contact per night (T0 -/+ T14/2): a night that sees only the ingress or the
    # egress measures that contact time directly; its T0 leans on T14, so on b
    contacts = [{"t1": summarize(v - values["t14"] / 2, UNITS["t0"]), "t4": summarize(v + values["t14"] / 2, UNITS["t0"]),
                 "ingress_egress_in_frames": ingress_egress_in_frames(night, v, values["t14"], values["rp_rs"], values["b"])}
                for night, v in zip(nights, t0s)]
    # Baseline coefficients: conditional Gaussian draws for a subset of the samples (with the GP,
    # also the white scale's conditional estimate and so the red noise's amplitude).
    rng = np.random.default_rng(int(s["seed"]) + 1)
    pick = rng.choice(len(samples), size=min(len(samples), 1000), replace=False)
    baseline, gp_summaries = [], []
    pars = [post.unpack(samples[j]) for j in pick]
    orbits = np.array([post.orbit(par)[:2] for par in pars])           # a/R*, inclination (deg)
    for i, night in enumerate(nights):
        draws, scale, gp_sigma = [], [], []
        if post.noise == "gp":   # all picked samples in one vectorised call
            t0 = np.array([par["t0"][i] for par in pars])
            k = np.sqrt([par["rp_rs_sq"] for par in pars])
            b = np.array([par["b"] for par in pars], float)
            u1, u2 = np.array([par["u1"] for par in pars]), np.array([par["u2"] for par in pars])
            tr = night.model.flux_batch(t0, k, orbits[:, 0], b, u1, u2, post.orbit(pars[0])[3])
            h = np.array([par["gp"][i][0] for par in pars])
            tau = np.array([par["gp"][i][1] for par in pars])
            _, c, finv, s2 = post._night_gp(night).loglike(tr, h, tau)
            chol = np.linalg.cholesky(s2[:, None, None] * finv)
            draws = c + (chol @ rng.standard_normal(c.shape + (1,)))[..., 0]
            scale = np.sqrt(s2)
            gp_sigma = scale * h * night.info["gp"]["err_ref"]
        else:
            for par in pars:
                _, _, c, cov = post.best_baseline(par, i)
                draws.append(rng.multivariate_normal(c, cov))
        draws = np.array(draws)
        baseline.append({name: summarize(draws[:, m], "relative flux per unit regressor")
                         for m, name in enumerate(night.lin_names)})
        if post.noise == "gp":
            col = post.n_shape + 2 * i
            gp_summaries.append({"kernel": post.kernel,
                                 "h": summarize(10 ** samples[:, col], "red-noise sigma / (white scale x median error)"),
                                 "tau_min": summarize(10 ** samples[:, col + 1], "min"),
                                 "sigma": summarize(gp_sigma, "relative flux"),
                                 "white_scale": summarize(scale, "")})
    # Median-parameter model for plots and residual statistics.
    med = samples[np.argmax(log_prob)] if len(samples) else x_best
    par_med = post.unpack(np.median(samples, axis=0) if len(samples) else x_best)
    best = []
    for i, night in enumerate(nights):
        tr, base, _, cov = post.best_baseline(par_med, i)
        row = {"t": night.t, "flux": night.flux, "err": night.err * night.noise_factor, "err_in": night.err,
               "transit": tr, "baseline": base, "model": tr * base}
        if post.noise == "gp":
            from .gp import predict

            h, tau = par_med["gp"][i]
            g = night.info["gp"]
            s2 = post.gp_solve(night, tr, h, tau)[3]
            row["err"] = night.err * math.sqrt(s2)
            row["red_noise"] = predict(post.kernel, g["t"], g["err2"] * s2, night.flux - tr * base,
                                       s2 * (h * g["err_ref"]) ** 2, tau)
        best.append(row)
    noise = []
    for i, n in enumerate(nights):
        row = {"model": post.noise, "white_scale": n.info["white_scale"], "beta": n.info["beta"],
               "rms": n.info["rms"], "n_points": int(len(n.t)), "supersample": n.info.get("supersample", 1),
               "exptime_s": n.info.get("exptime_s")}
        if post.noise == "gp":
            row["white_scale"] = gp_summaries[i]["white_scale"]["median"]
            row["gp"] = gp_summaries[i]
        noise.append(row)
    chain["max_log_prob_vector"] = [float(v) for v in med]
    return {"parameters": params, "t0": t0_summ, "contacts": contacts, "samples": {**values, "t0": t0s}, "chain": chain,
            "noise": noise, "baseline": baseline, "best": best, "names": post.names, "density_prior": density,
            "b_prior": b_prior, "ld": ld, "period": s.get("period"), "gp_prior": gp_prior(post)}


def gp_prior(post):
    """The GP's priors as the fit used them: ``h`` (range), ``h_prior`` (its shape: half_cauchy of
    scale 1 or uniform) and, per night, ``tau_min`` (log-uniform, minutes); None without the GP."""
    if post.noise != "gp":
        return None
    return {"h": list(post.gp_h_range), "h_prior": post.gp_h_prior,
            "tau_min": [list(n.info["gp"]["tau_range_min"]) for n in post.nights]}


def fit_night(t, flux, err, settings=None, regressors=None, exptime_s=None, ld=None, name="night"):
    """Fit one night's transit (see :func:`fit_transits`); ``result['t0']`` is that night's summary."""
    from .limbdark import limb_darkening_prior

    s = {**DEFAULTS, **(settings or {})}
    night, start = prepare_night(name, t, flux, err, s, regressors, exptime_s)
    res = fit_transits([night], [start], s, ld or limb_darkening_prior(s))
    res["t0"] = res["t0"][0]
    res["contacts"] = res["contacts"][0]
    res["samples"]["t0"] = res["samples"]["t0"][0]
    res["noise"] = res["noise"][0]
    res["baseline"] = res["baseline"][0]
    res["best"] = res["best"][0]
    res["window"] = list(night.window)
    return res
