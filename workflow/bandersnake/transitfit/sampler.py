"""Best fit and MCMC (emcee) of a :class:`~.posterior.Posterior`, with chains sized by autocorrelation.

The chain runs in blocks of ``block`` steps until it is longer than ``n_tau`` integrated
autocorrelation times of every parameter and the estimate of tau changed by less than
``tau_rtol`` over the last block (emcee's own criterion, Foreman-Mackey et al. 2013; the emcee
documentation suggests 50 tau; 40 is the default here). The first ``3 tau`` steps are discarded and the rest thinned by
tau / 2: the kept samples are nearly independent, ``n_walkers * (steps - 3 tau) / tau`` of them.
The criterion watches the transit's parameters (mid-times, depth, b, size, limb darkening), not the
GP's ratio and time scale: those are nuisance parameters whose slow mixing along the long-time-scale
ridge (where the GP and the baseline are interchangeable) would double the chains without moving
the transit's percentiles (their autocorrelation times are still reported).
"""

import logging
import math

import numpy as np
from scipy.optimize import minimize

from .noise import red_noise_beta, white_scale

log = logging.getLogger("bandersnake.transitfit")

PERCENTILES = (2.5, 16.0, 50.0, 84.0, 97.5)


def best_fit(post, starts):
    """Maximum of the posterior from several starting vectors (Nelder-Mead; the best one polished).

    Returns
    -------
    (ndarray, float)
        Best vector and its log-posterior.
    """
    def neg(x):
        v = post(x)
        return -v if np.isfinite(v) else 1e300

    found = []
    for x0 in starts:
        if not np.isfinite(post(x0)):
            continue
        res = minimize(neg, x0, method="Nelder-Mead",
                       options=dict(maxiter=600 * len(x0), xatol=1e-7, fatol=1e-3, adaptive=True))
        found.append((res.fun, res.x))
    if not found:
        raise ValueError("no starting point has a finite posterior (check the window, duration and priors)")
    _, x = min(found, key=lambda f: f[0])
    res = minimize(neg, x, method="Nelder-Mead",
                   options=dict(maxiter=2000 * len(x), xatol=1e-10, fatol=1e-7, adaptive=True))
    return res.x, -res.fun


def set_noise(post, x, beta=True):
    """Per-night white scale and red-noise beta from the residuals at ``x``; stored as noise_factor
    (the white scale, times beta unless ``beta`` is False; beta is measured and recorded either way)."""
    par = post.unpack(x)
    n_free = len(post.names) / max(1, post.n_nights)
    use_beta = beta
    out = []
    for i, night in enumerate(post.nights):
        night.noise_factor = 1.0
        tr, base, c, _ = post.best_baseline(par, i)
        resid = night.flux - tr * base
        scale = white_scale(resid, night.err, n_free + len(c))
        beta = red_noise_beta(night.t, resid)
        night.noise_factor = scale * beta if use_beta else scale
        night.info.update(white_scale=scale, beta=beta, rms=float(np.std(resid, ddof=1)))
        out.append((scale, beta))
    return out


def _ball(post, x, rng, n_walkers, widths):
    """Walkers around ``x`` inside the prior."""
    p0 = []
    tries = 0
    while len(p0) < n_walkers:
        tries += 1
        if tries > 100000:
            raise ValueError("cannot start walkers inside the prior around the best fit")
        cand = x + widths * rng.standard_normal(len(x))
        if np.isfinite(post(cand)):
            p0.append(cand)
    return np.array(p0)


def initial_widths(post, x):
    """Rough per-parameter scales for the starting ball (days for times)."""
    w = []
    for name, v in zip(post.names, x):
        if name.startswith("t0"):
            w.append(2e-4)
        elif name == "rp_rs_sq":
            w.append(max(1e-4, 0.02 * abs(v)))
        elif name == "t14":
            w.append(5e-4)
        elif name.startswith("gp_log10_h"):
            w.append(0.1)
        elif name.startswith("gp_log10_tau"):
            w.append(0.1)
        else:
            w.append(0.01)
    return np.array(w)


def run_mcmc(post, x_best, seed=0, n_walkers=None, n_tau=40, tau_rtol=0.05, block=250, max_steps=20000):
    """Sample the posterior with emcee until the chain is ``n_tau`` autocorrelation times long
    (of the first ``post.n_shape`` parameters: the transit's).

    Returns
    -------
    dict
        ``samples`` (n, ndim, thinned), ``log_prob`` (n), ``tau`` (per parameter, steps),
        ``n_steps``, ``n_walkers``, ``converged``, ``acceptance``.
    """
    import emcee

    ndim = len(x_best)
    n_walkers = n_walkers or max(16, 3 * ndim)
    rng = np.random.default_rng(seed)
    p0 = _ball(post, x_best, rng, n_walkers, initial_widths(post, x_best))
    # Differential-evolution proposals (ter Braak 2006; 80 % DE, 20 % snooker): on the curved
    # T0-b-density posteriors of partial transits they gave 2.5-3 times shorter autocorrelation
    # times than emcee's default stretch move (measured on three coverage-benchmark cases).
    moves = [(emcee.moves.DEMove(), 0.8), (emcee.moves.DESnookerMove(), 0.2)]
    sampler = emcee.EnsembleSampler(n_walkers, ndim, post.batch, moves=moves, vectorize=True)
    sampler._random = np.random.mtrand.RandomState(seed)
    old_tau, converged, state = np.inf, False, p0
    watch = getattr(post, "n_shape", ndim)
    tau = np.full(watch, np.nan)
    tau_all = np.full(ndim, np.nan)
    steps = block
    while sampler.iteration < max_steps:
        state = sampler.run_mcmc(state, min(steps, max_steps - sampler.iteration), progress=False)
        tau_all = sampler.get_autocorr_time(tol=0)
        tau = tau_all[:watch]
        if np.all(np.isfinite(tau)) and np.all(sampler.iteration > n_tau * tau) \
                and np.all(np.abs(old_tau - tau) / tau < tau_rtol):
            converged = True
            break
        old_tau = tau
        # next check: where the current estimate says the chain will be long enough (at least a
        # block on): each check costs an FFT of the whole chain, so checking every block cost
        # ~15 % of a fit
        need = n_tau * float(np.nanmax(tau)) if np.any(np.isfinite(tau)) else 0.0
        steps = int(max(block, min(need * 1.05 - sampler.iteration, 4 * block)))
    tau_max = float(np.nanmax(tau)) if np.any(np.isfinite(tau)) else sampler.iteration / n_tau
    if not converged:
        log.warning("MCMC: %d steps are fewer than %g autocorrelation times (tau = %.0f steps); "
                    "the intervals are less certain", sampler.iteration, n_tau, tau_max)
    discard = int(min(3 * tau_max, sampler.iteration // 2))
    thin = max(1, int(tau_max / 2))
    samples = sampler.get_chain(discard=discard, thin=thin, flat=True)
    logp = sampler.get_log_prob(discard=discard, thin=thin, flat=True)
    return {"samples": samples, "log_prob": logp, "tau": [float(v) for v in tau_all], "n_steps": int(sampler.iteration),
            "n_walkers": int(n_walkers), "converged": bool(converged), "discard": discard, "thin": thin,
            "acceptance": float(np.mean(sampler.acceptance_fraction))}


def summarize(values, unit=""):
    """Median, 16th/84th and 2.5th/97.5th percentiles of samples.

    Returns
    -------
    dict
        ``median``, ``minus`` (median - p16), ``plus`` (p84 - median), ``p2.5``, ``p16``, ``p84``,
        ``p97.5``, ``unit``.
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"median": None, "unit": unit}
    p = np.percentile(v, PERCENTILES)
    return {"median": float(p[2]), "minus": float(p[2] - p[1]), "plus": float(p[3] - p[2]),
            "p2.5": float(p[0]), "p16": float(p[1]), "p84": float(p[3]), "p97.5": float(p[4]), "unit": unit}


def symmetric_error(s):
    """Half the 16-84 % interval of a :func:`summarize` dict."""
    return 0.5 * (s["p84"] - s["p16"]) if s.get("median") is not None else math.nan
