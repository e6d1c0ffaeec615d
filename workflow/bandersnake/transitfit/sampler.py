"""Best fit and MCMC (emcee) of a :class:`~.posterior.Posterior`, with chains sized by autocorrelation.

The walkers start from the Gaussian (Laplace) approximation at the best fit. The chain runs in
blocks of ``block`` steps until it is longer than ``n_tau`` integrated autocorrelation times of
every watched parameter and the estimate of tau changed by less than ``tau_rtol`` over the last
block (emcee's criterion, Foreman-Mackey et al. 2013). The first ``3 tau`` steps are discarded
and the rest thinned by tau / 2: the kept samples are nearly independent,
``n_walkers * (steps - 3 tau) / tau`` of them, ~530 for 24 walkers and the default n_tau = 25.
That is enough for the intervals: the Monte-Carlo error of a percentile p from N independent
samples is sqrt(p (1 - p) / N) / f(x_p), for a Gaussian posterior 0.07 sigma at the 16th and 0.12
sigma at the 2.5th percentile with N = 530, which lowers the coverage of the 68 % and 95 %
intervals by less than 0.2 percentage points (the edges' jitter enters to second order); the
issue's targets allow +-5 and +-3 points. (The estimate of tau from a chain this short is itself
low, by up to ~1.5x: on the bench night 35-40 steps at 1000 steps against 55-60 from 16000, so the
kept samples are nearer 350; still 0.09 / 0.15 sigma.)

With ``threads`` > 1, two independent ensembles run side by side (the second in a forked
process), each to ``(n_tau + 3) / 2`` tau -- together the same number of kept samples -- and must
also agree (Gelman-Rubin R-hat < ``rhat_max``, reported).

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


def best_fit(post, starts, threads=1):
    """Maximum of the posterior from several starting vectors (Nelder-Mead; the best one polished).
    With ``threads`` > 1 the searches from all starts but the first run in a forked process,
    beside the first (same results).

    Returns
    -------
    (ndarray, float)
        Best vector and its log-posterior.
    """
    def neg(x):
        v = post(x)
        return -v if np.isfinite(v) else 1e300

    def search(x0s):
        out = []
        for x0 in x0s:
            if not np.isfinite(post(x0)):
                continue
            res = minimize(neg, x0, method="Nelder-Mead",
                           options=dict(maxiter=600 * len(x0), xatol=1e-5, fatol=1e-2, adaptive=True))
            out.append((float(res.fun), res.x))
        return out

    starts = list(starts)
    found = None
    if threads > 1 and len(starts) > 1:
        found = _search_forked(search, starts)
    if found is None:
        found = search(starts)
    if not found:
        raise ValueError("no starting point has a finite posterior (check the window, duration and priors)")
    _, x = min(found, key=lambda f: f[0])
    res = minimize(neg, x, method="Nelder-Mead",
                   options=dict(maxiter=2000 * len(x), xatol=1e-7, fatol=1e-5, adaptive=True))
    return res.x, -res.fun


def _search_forked(search, starts):
    """``search(starts[1:])`` in a forked process while this one runs ``search(starts[:1])``; None
    if no process can be forked."""
    import os
    from multiprocessing import Pipe

    if not hasattr(os, "fork"):
        return None
    conn, child = Pipe()

    def serve():
        child.send(search(starts[1:]))
        child.close()

    try:
        pid = fork_call(serve)
    except OSError:
        return None
    child.close()
    found = search(starts[:1])
    try:
        found += conn.recv()
    except EOFError:
        found = None         # the child failed (its traceback is on stderr): search here
    conn.close()
    wait_child(pid)
    return found


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


def _ball(post, x, rng, n_walkers, cov):
    """Walkers drawn from the Gaussian N(``x``, ``cov``) inside the prior (``cov``: a covariance
    matrix, or a vector of widths)."""
    cov = np.asarray(cov, float)
    chol = np.linalg.cholesky(cov) if cov.ndim == 2 else np.diag(cov)
    p0 = []
    tries = 0
    while len(p0) < n_walkers:
        tries += 1
        if tries > 100000:
            raise ValueError("cannot start walkers inside the prior around the best fit")
        cand = x + chol @ rng.standard_normal(len(x))
        if np.isfinite(post(cand)):
            p0.append(cand)
    return np.array(p0)


def laplace_cov(post, x, h):
    """Start covariance: the Gaussian (Laplace) approximation of the posterior at ``x``, the
    inverse of minus the Hessian of its log (central differences with steps ``h``, the 2 n^2 + 1
    points in one vectorised call, ~10 ms).

    Walkers drawn from it start spread like the posterior, not in a tiny ball that the ensemble
    must first inflate (that transient made most of the autocorrelation time measured on a chain
    started from widths of 0.01 in b and the density). Parameters whose stencil leaves the prior
    (b at its bound 0) or whose curvature is not negative get their curvature one-sidedly, from
    points moved inside the prior, capped at 20 steps; if the matrix of the others is not positive
    definite, the diagonal alone is used.

    Returns
    -------
    ndarray
        (n, n) covariance.
    """
    x = np.asarray(x, float)
    n = len(x)
    e = np.diag(h)
    pts = [x] + [x + e[i] for i in range(n)] + [x - e[i] for i in range(n)]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for i, j in pairs:
        pts += [x + e[i] + e[j], x + e[i] - e[j], x - e[i] + e[j], x - e[i] - e[j]]
    f = post.batch(np.array(pts))
    f0, fp, fm = f[0], f[1:n + 1], f[n + 1:2 * n + 1]
    hess = np.zeros((n, n))
    hess[np.diag_indices(n)] = (fp - 2 * f0 + fm) / h**2
    ok = np.isfinite(fp) & np.isfinite(fm) & (np.diag(hess) < 0)
    for m, (i, j) in enumerate(pairs):
        q = f[2 * n + 1 + 4 * m: 2 * n + 5 + 4 * m]
        if np.all(np.isfinite(q)):
            hess[i, j] = hess[j, i] = (q[0] - q[1] - q[2] + q[3]) / (4 * h[i] * h[j])
        else:
            ok[i] = ok[j] = False
    var = np.zeros(n)
    for i in np.flatnonzero(~ok):    # one-sided: the stencil moved inside the prior
        curv = np.nan
        for sign in (1.0, -1.0):
            c = x + sign * 2 * e[i]
            q = post.batch(np.array([c - e[i], c, c + e[i]]))
            if np.all(np.isfinite(q)):
                curv = (q[0] - 2 * q[1] + q[2]) / h[i] ** 2
                break
        var[i] = min(-1.0 / curv if curv < 0 else np.inf, (20 * h[i]) ** 2)
    cov = np.diag(np.where(ok, 0.0, var))
    idx = np.flatnonzero(ok)
    if len(idx):
        sub = -hess[np.ix_(idx, idx)]
        try:
            np.linalg.cholesky(sub)
            cov[np.ix_(idx, idx)] = np.linalg.inv(sub)
        except np.linalg.LinAlgError:
            cov[idx, idx] = 1.0 / np.diag(sub)
    return cov


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


def watch_n(post, ndim):
    """Number of leading parameters whose autocorrelation times size the chain (the transit's)."""
    return getattr(post, "n_shape", ndim)


def _sampler(post, x_best, cov, seed, n_walkers):
    """An emcee ensemble (DE moves, seeded) and its walkers' start, drawn from N(``x_best``, ``cov``)."""
    import emcee

    ndim = len(x_best)
    rng = np.random.default_rng(seed)
    p0 = _ball(post, x_best, rng, n_walkers, cov)
    # Differential-evolution proposals (ter Braak 2006): on the curved T0-b-density posteriors of
    # partial transits they gave 2.5-3 times shorter autocorrelation times than emcee's default
    # stretch move (measured on three coverage-benchmark cases). No snooker move: emcee's (<= 3.1.6;
    # fixed upstream in pull request 531, unreleased) samples a narrower distribution than the
    # posterior (intervals 6-9 % short; BENCHMARKS.md, "The sampler, corrected").
    moves = [emcee.moves.DEMove()]
    sampler = emcee.EnsembleSampler(n_walkers, ndim, post.batch, moves=moves, vectorize=True)
    sampler._random = np.random.mtrand.RandomState(seed)
    return sampler, p0


class _Local:
    """An ensemble run by this process."""

    def __init__(self, post, x_best, cov, seed, n_walkers):
        self.sampler, self.state = _sampler(post, x_best, cov, seed, n_walkers)

    def start(self, steps):
        self.state = self.sampler.run_mcmc(self.state, steps, progress=False)

    def wait(self):
        pass

    def chain(self):
        return self.sampler.get_chain(), self.sampler.get_log_prob(), self.sampler.acceptance_fraction

    def close(self):
        pass


def fork_call(fn, *args):
    """Run ``fn(*args)`` in a forked child process; its process id (for :func:`wait_child`).

    A bare ``os.fork`` rather than ``multiprocessing.Process``: it also works from daemonic
    processes (a multiprocessing pool's workers, a job server's), which may not start
    multiprocessing children. The child ends with ``os._exit`` (exit code 1 and the traceback on
    stderr if ``fn`` raised): the parent's buffers and exit handlers are not run twice.
    """
    import os

    pid = os.fork()
    if pid == 0:   # pragma: no cover -- the child (coverage does not follow forks)
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:   # noqa: BLE001 -- reported by the exit code and on stderr
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait_child(pid):
    """Exit code of the forked child ``pid`` (waits for it)."""
    import os

    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class _Forked:
    """An ensemble run by a forked process, in blocks the parent asks for (the posterior, its light
    curves and buffers are inherited by the fork, not pickled); its chain comes back per block."""

    def __init__(self, post, x_best, cov, seed, n_walkers):
        from multiprocessing import Pipe

        self.conn, child = Pipe()
        self.pid = fork_call(self._serve, child, post, x_best, cov, seed, n_walkers)
        child.close()
        self.parts, self.logp, self.acc = [], [], None

    @staticmethod
    def _serve(conn, post, x_best, cov, seed, n_walkers):
        try:
            sampler, state = _sampler(post, x_best, cov, seed, n_walkers)
            while (steps := conn.recv()) is not None:
                n0 = sampler.iteration
                state = sampler.run_mcmc(state, steps, progress=False)
                conn.send((sampler.get_chain()[n0:], sampler.get_log_prob()[n0:], sampler.acceptance_fraction))
        except Exception as err:   # noqa: BLE001 -- reported by the parent, which raises
            conn.send(f"{type(err).__name__}: {err}")
        conn.close()

    def start(self, steps):
        self.conn.send(steps)

    def wait(self):
        try:
            out = self.conn.recv()
        except EOFError:
            out = "its process ended without a result (killed?)"
        if isinstance(out, str):
            raise RuntimeError(f"MCMC: the second ensemble failed: {out}")
        self.parts.append(out[0])
        self.logp.append(out[1])
        self.acc = out[2]

    def chain(self):
        return np.concatenate(self.parts), np.concatenate(self.logp), self.acc

    def close(self):
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        wait_child(self.pid)


def _ensembles(post, x_best, cov, seed, n_walkers, threads):
    """One ensemble, or two (the second in a forked process) when ``threads`` > 1."""
    import os

    ens = [_Local(post, x_best, cov, seed, n_walkers)]
    if threads > 1 and hasattr(os, "fork"):
        try:
            ens.insert(0, _Forked(post, x_best, cov, seed + 1, n_walkers))
        except OSError as err:     # cannot fork (limits): one ensemble
            log.warning("MCMC on one process: cannot start a second (%s)", err)
    return ens


def gelman_rubin(chains):
    """Potential scale reduction R-hat (Gelman & Rubin 1992) per parameter of m chains (m, n, ndim)
    of nearly independent samples; 1 when the chains agree."""
    c = np.asarray(chains, float)
    n = c.shape[1]
    within = c.var(axis=1, ddof=1).mean(axis=0)
    between = c.mean(axis=1).var(axis=0, ddof=1)
    return np.sqrt(((n - 1) / n * within + between) / within)


def run_mcmc(post, x_best, seed=0, n_walkers=None, n_tau=25, tau_rtol=0.3, block=250, max_steps=20000,
             threads=1, rhat_max=1.02):
    """Sample the posterior with emcee until the chain is ``n_tau`` autocorrelation times long
    (of the first ``post.n_shape`` parameters: the transit's).

    With ``threads`` > 1, two independent ensembles (seeds ``seed`` and ``seed + 1``) run side by
    side, the second in a forked process, each to ``(n_tau + 3) / 2`` autocorrelation times: after
    the burn-in of 3 tau each, the same number of kept samples as one ensemble of ``n_tau`` tau, in
    about half the wall time. The autocorrelation time is estimated from both ensembles' walkers
    together; the Gelman-Rubin R-hat between the two is reported.

    Returns
    -------
    dict
        ``samples`` (n, ndim, thinned), ``log_prob`` (n), ``tau`` (per parameter, steps),
        ``n_steps`` (per ensemble), ``n_walkers`` (per ensemble), ``n_ensembles``, ``converged``,
        ``acceptance``, ``rhat`` (two ensembles only).
    """
    from emcee.autocorr import integrated_time

    ndim = len(x_best)
    n_walkers = n_walkers or max(16, 3 * ndim)
    watch = watch_n(post, ndim)
    cov = laplace_cov(post, x_best, initial_widths(post, x_best))
    ens = _ensembles(post, x_best, cov, seed, n_walkers, threads)
    length = n_tau if len(ens) == 1 else (n_tau + 3.0) / 2.0
    old_tau, converged, steps, done = np.inf, False, block, 0
    tau = np.full(watch, np.nan)
    tau_all = np.full(ndim, np.nan)
    try:
        while done < max_steps:
            k = min(steps, max_steps - done)
            for e in ens:
                e.start(k)
            for e in ens:
                e.wait()
            done += k
            chains = [e.chain() for e in ens]
            # a walker that has not moved yet makes tau NaN (0/0 in emcee's ACF): checked below
            with np.errstate(invalid="ignore"):
                tau_all = integrated_time(np.concatenate([c[0] for c in chains], axis=1), tol=0)
            tau = tau_all[:watch]
            if np.all(np.isfinite(tau)) and np.all(done > length * tau):
                # the estimate of tau no longer grows (a short chain underestimates it: on the bench
                # night 28 steps at 500, 35 at 750, 40 at 1000, 55-60 from 16000 steps)
                stable = bool(np.all(np.abs(old_tau - tau) / tau < tau_rtol))
                if len(ens) > 1:   # and the two ensembles agree (R-hat of the kept samples)
                    burn, th = int(3 * np.max(tau)), max(1, int(np.max(tau) / 2))
                    rhat = gelman_rubin([c[0][burn::th, :, :watch].reshape(-1, watch) for c in chains])
                    stable &= bool(np.all(rhat < rhat_max))
                log.debug("MCMC: %d steps, tau %s, %s", done, np.round(tau, 1),
                          f"R-hat {np.round(rhat, 3)}" if len(ens) > 1 else "")
                if stable:
                    converged = True
                    break
            old_tau = tau
            # next check: where the current estimate says the chain will be long enough (at least a
            # block on): each check costs an FFT of the whole chain, so checking every block cost
            # ~15 % of a fit
            need = length * float(np.nanmax(tau)) if np.any(np.isfinite(tau)) else 0.0
            steps = int(max(block, min(need * 1.05 - done, 4 * block)))
    finally:
        for e in ens:
            e.close()
    tau_max = float(np.nanmax(tau)) if np.any(np.isfinite(tau)) else done / n_tau
    if not converged:
        log.warning("MCMC: %d steps are fewer than %g autocorrelation times (tau = %.0f steps); "
                    "the intervals are less certain", done, length, tau_max)
    discard = int(min(3 * tau_max, done // 2))
    thin = max(1, int(tau_max / 2))
    kept = [(c[0][discard::thin], c[1][discard::thin]) for c in chains]
    samples = np.concatenate([x.reshape(-1, ndim) for x, _ in kept])
    logp = np.concatenate([lp.reshape(-1) for _, lp in kept])
    out = {"samples": samples, "log_prob": logp, "tau": [float(v) for v in tau_all], "n_steps": int(done),
           "n_walkers": int(n_walkers), "n_ensembles": len(ens), "converged": bool(converged),
           "discard": discard, "thin": thin, "acceptance": float(np.mean([np.mean(c[2]) for c in chains]))}
    if len(ens) > 1:
        out["rhat"] = [float(v) for v in gelman_rubin([x.reshape(-1, ndim) for x, _ in kept])]
    return out


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
