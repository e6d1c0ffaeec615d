"""Posterior of a transit model given one or several nights' light curves.

Parameters sampled (days for times):

* ``t0`` per night (mid-transit, BJD_TDB; stored as an offset from the night's reference time),
* shared by all nights: ``rp_rs_sq`` = (Rp/R*)^2, ``b`` (unless fixed), the total duration
  ``t14`` (d) and ``u1``, ``u2`` (unless their prior width is 0). With a period, ``t14`` and b fix
  a/R* of the circular orbit (Seager & Mallen-Ornelas 2003) and so the mean stellar density
  (Kepler's law); without a period the transit is a straight chord.

Priors: t0 uniform in the night's window; rp_rs_sq uniform in (0, 0.25]; b uniform in [0, b_max)
with b_max = 1 + Rp/R* by default (the natural bound: any b with a transit), or, when a published
value is given (``b_prior``), a Gaussian truncated to that range; with a period, the
stellar density rho_star Gaussian when the config gives ``stellar_density`` (and its error), else
uniform in ln rho_star over 0.01-100 g/cm^3; t14 (no period) uniform in [5 min, 0.5 d]; u1, u2
Gaussian (:mod:`.limbdark`) inside the physical region (u1 >= 0, u1 + u2 <= 1, u1 + 2 u2 >= 0;
Kipping 2013). With a period the prior is the density's, not T14's: a uniform prior on T14 under
a density constraint is not uniform in b, and pulled b (and so T0 of a partial transit) low in
the coverage benchmark. The sampler still moves in T14, with the Jacobian |d rho / d T14| in the
prior (:func:`density_jacobian`): at fixed T14 the density changes with b along a curved ridge
(rho ~ ((1 + k)^2 - b^2)^(3/2)), which in (b, rho) the ensemble crossed slowly; in (b, T14) the
posterior is nearly a rectangle (T14 is what the light curve measures).

Baseline and detrending: each night's flux is ``transit(t) * (X c)``, X the columns 1, dt, dt^2 ...
(``baseline_order``) and the detrending regressors (airmass, sky, position, width, scaled to
[-1, 1] as in the juliet export). The coefficients c enter linearly, so they are marginalised
analytically under a flat prior (the Gaussian integral: best c for the given transit, plus
-1/2 ln det of its Fisher matrix); their posterior is drawn afterwards, for each kept sample, from
the conditional Gaussian. This leaves only the transit parameters to the sampler.

Noise (``noise``): ``white`` and ``beta`` multiply the frame errors by a factor fixed at the best
fit (the white scale, and for ``beta`` the red-noise factor of :mod:`.noise`); ``gp`` adds per
night a Gaussian process (:mod:`.gp`: Matern-3/2 or exponential kernel, celerite2) whose
red-to-white ratio h (half-Cauchy of scale 1, the white level, in [0.01, 5] or the user's
``gp_h_range``; ``gp_h_prior="uniform"`` for flat; sampled as ``gp_log10_h`` with the Jacobian: a
posterior piled against h = 0 is a smooth bump in log h, which the ensemble moves mix 2x faster) and
time scale ``gp_log10_tau_min`` (log10 of minutes, uniform between two frame intervals and the
night's span, or ``gp_tau_range_min``) are sampled with the transit, the white scale being
integrated out analytically.
"""

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

from .model import NO_PERIOD_D as NO_PERIOD, TransitModel, orbit_from_duration, stellar_density

T14_MIN_D = 5.0 / 1440.0
T14_MAX_D = 0.5
RP_RS_SQ_MAX = 0.25
RHO_RANGE = (0.01, 100.0)     # g/cm^3: from giants to late M dwarfs
NOISE_MODELS = ("gp", "beta", "white")
# Red noise up to 5 times the white level: beyond any night worth fitting, and a bound far from
# the ratios light curves show (0-1), so the prior does not push the ratio down.
GP_H_MAX = 5.0
GP_LOG10_H = (-2.0, math.log10(GP_H_MAX))   # h below 0.01: no red noise worth the name
# The ratio's prior: half-Cauchy of scale 1 (Gelman 2006's weakly informative prior for a scale:
# flat near 0, half its mass above the white level), or uniform in the range. Uniform in 0.01-5
# puts 80 % of its mass above the white level, and a night that cannot measure its red noise well
# then widens its depth's 95 % interval (BENCHMARKS.md, issue 19).
GP_H_PRIORS = ("half_cauchy", "uniform")


@dataclass
class NightData:
    """One night's light curve prepared for the fit.

    Attributes
    ----------
    name : str
        Night id.
    t, flux, err : ndarray
        BJD_TDB (d), relative flux, 1-sigma error.
    design : ndarray
        (N, n_lin) linear baseline columns.
    lin_names : list of str
        Names of the design columns.
    model : TransitModel
    window : (float, float)
        Allowed mid-times (BJD_TDB, d).
    tref : float
        Reference time of the night (d): t0 is sampled as t0 - tref.
    noise_factor : float
        err multiplier (white scale * beta), set after the best fit.
    """

    name: str
    t: np.ndarray
    flux: np.ndarray
    err: np.ndarray
    design: np.ndarray
    lin_names: list
    model: TransitModel
    window: tuple
    tref: float
    noise_factor: float = 1.0
    info: dict = field(default_factory=dict)

    def gp_setup(self, tau_range_min=None):
        """Arrays of the GP likelihood: times from the first frame, squared errors, reference error,
        and the bounds (log10 min) of the time scale: ``tau_range_min`` (min), by default two median
        frame intervals to the span."""
        t_gp = np.ascontiguousarray(self.t - self.t[0])
        if tau_range_min is not None:
            tau_range_min = prior_range(tau_range_min, "gp_tau_range_min")
            lo, hi = (math.log10(v) for v in tau_range_min)
        else:
            cadence = float(np.median(np.diff(self.t))) if len(self.t) > 1 else 1 / 1440
            lo = math.log10(max(2 * cadence * 1440, 0.5))
            hi = max(math.log10(max(np.ptp(self.t), 1e-6) * 1440), lo + 0.5)
            tau_range_min = (10**lo, 10**hi)
        self.info["gp"] = dict(t=t_gp, err2=np.ascontiguousarray(self.err**2), err_ref=float(np.median(self.err)),
                               log_tau_range=(lo, hi), tau_range_min=tau_range_min)
        return self.info["gp"]


def prior_range(values, name):
    """``(lo, hi)`` of a user's prior range: two positive numbers in any order, not equal."""
    lo, hi = sorted(float(v) for v in values)
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"{name}: {list(values)} is not a range of two different positive numbers")
    return lo, hi


def density_jacobian(rho, a_rs, k, b, t14, period):
    """ln |d rho / d T14| at fixed k and b for a circular orbit of ``period`` (d).

    a^2 = ((1 + k)^2 - b^2) / sin^2(x) + b^2 with x = pi T14 / P and rho ~ a^3 give
    d ln rho / d T14 = -3 pi ((1 + k)^2 - b^2) cos x / (P a^2 sin^3 x).
    """
    x = np.pi * np.asarray(t14, float) / period
    chord2 = (1.0 + k) ** 2 - b * b
    return np.log(rho) + np.log(3 * np.pi * chord2 * np.cos(x) / (period * a_rs**2 * np.sin(x) ** 3))


def design_matrix(t, order=1, regressors=None):
    """Baseline columns: 1, dt, ..., dt^order (dt in d from the mean time) then the regressors.

    Returns
    -------
    (ndarray, list of str)
    """
    t = np.asarray(t, float)
    dt = t - t.mean()
    span = max(np.ptp(dt), 1e-6)
    cols, names = [np.ones_like(t)], ["c0"]
    for i in range(1, order + 1):
        cols.append((dt / span) ** i)       # scaled to order unity: a well-conditioned Fisher matrix
        names.append(f"c{i}")
    for name, values in (regressors or {}).items():
        cols.append(np.asarray(values, float))
        names.append(f"k_{name}")
    return np.column_stack(cols), names


def log_b_prior(b, b_hi, gaussian=None):
    """Log prior density of the impact parameter inside its range [0, ``b_hi``) (checked by the caller).

    Parameters
    ----------
    b, b_hi : float or ndarray
        Impact parameter and its upper bound (R*): min(b_max, 1 + Rp/R*).
    gaussian : (float, float) or None
        Mean and 1-sigma of a published b: a Gaussian truncated to the range. None: uniform.

    Returns
    -------
    float or ndarray

    Notes
    -----
    The density is normalised over the range: the bound 1 + Rp/R* depends on the radius ratio, and
    without the normalisation the prior would favour large ratios by giving them more room in b.
    """
    if gaussian is None:
        return -np.log(b_hi) + np.zeros_like(b)
    mean, sigma = gaussian
    mass = 0.5 * (erf((b_hi - mean) / (sigma * math.sqrt(2))) - erf(-mean / (sigma * math.sqrt(2))))
    return -0.5 * ((b - mean) / sigma) ** 2 - np.log(mass * sigma * math.sqrt(2 * math.pi))


class Posterior:
    """Log-posterior of shared transit parameters and per-night mid-times (callable for emcee).

    Parameters
    ----------
    nights : list of NightData
    period : float or None
        Period (d) of the circular orbit (None: straight chord; no density prior possible).
    b_fixed : float or None
    b_max : float or None
        Upper bound of b; None: 1 + Rp/R*.
    b_prior : (float, float) or None
        Mean and 1-sigma of a Gaussian prior on b (a published value), truncated to [0, b_max);
        None: uniform.
    ld : dict
        ``u1``, ``u2``, ``sigma`` (0: fixed).
    density : (float, float) or None
        Mean stellar density and its 1-sigma (g/cm^3).
    gp_h_range, gp_tau_range_min : (float, float) or None
        The GP's prior ranges (``noise="gp"``): the red-to-white ratio h (default 0.01-5) and the
        time scale in minutes (log-uniform; default two frame intervals to the night's span).
    gp_h_prior : {"half_cauchy", "uniform"}
        The ratio's prior inside its range: half-Cauchy of scale 1 (the white level) or uniform.
    """

    def __init__(self, nights, period=None, b_fixed=None, b_max=None, ld=None, density=None, noise="beta",
                 kernel="matern32", b_prior=None, gp_h_range=None, gp_tau_range_min=None, gp_h_prior="half_cauchy"):
        if noise not in NOISE_MODELS:
            raise ValueError(f"unknown noise model {noise!r}; choose from {list(NOISE_MODELS)}")
        self.noise = noise
        self.kernel = kernel
        self.nights = list(nights)
        self.period = period
        self.b_fixed = b_fixed
        self.b_max = b_max
        self.b_prior = None if b_fixed is not None else b_prior
        self.ld = dict(ld or {"u1": 0.4, "u2": 0.25, "sigma": 0.1})
        self.fit_ld = self.ld["sigma"] > 0
        self.density = density if (density and period) else None
        t0_names = ["t0"] if len(self.nights) == 1 else [f"t0_{n.name}" for n in self.nights]
        self.size = "t14"
        self.names = t0_names + ["rp_rs_sq"] + ([] if b_fixed is not None else ["b"]) + [self.size]
        self.names += ["u1", "u2"] if self.fit_ld else []
        self.n_nights = len(self.nights)
        self.n_shape = len(self.names)
        # the ratio's range as given (reported) and in log10 (sampled)
        self.gp_h_range = ((10 ** GP_LOG10_H[0], GP_H_MAX) if gp_h_range is None
                           else prior_range(gp_h_range, "gp_h_range"))
        self.gp_log10_h = tuple(math.log10(v) for v in self.gp_h_range)
        if gp_h_prior not in GP_H_PRIORS:
            raise ValueError(f"unknown gp_h_prior {gp_h_prior!r}; choose from {list(GP_H_PRIORS)}")
        self.gp_h_prior = gp_h_prior
        if noise == "gp":
            for night in self.nights:
                night.gp_setup(gp_tau_range_min)
                night.noise_factor = 1.0
                sfx = "" if self.n_nights == 1 else f"_{night.name}"
                self.names += [f"gp_log10_h{sfx}", f"gp_log10_tau_min{sfx}"]

    # ------------------------------------------------------------------ vector <-> parameters
    def unpack(self, theta):
        """Dict of physical parameters; ``t0`` is a list of absolute mid-times (BJD_TDB, d)."""
        n = self.n_nights
        par = dict(zip(self.names[n:self.n_shape], theta[n:self.n_shape]))
        par["t0"] = [night.tref + dt for night, dt in zip(self.nights, theta[:n])]
        if self.noise == "gp":
            g = np.asarray(theta[self.n_shape:], float).reshape(n, 2)
            par["gp"] = [(10.0 ** float(lh), 10.0 ** float(lt) / 1440.0) for lh, lt in g]
        par.setdefault("b", self.b_fixed)
        par.setdefault("u1", self.ld["u1"])
        par.setdefault("u2", self.ld["u2"])
        return par

    def pack(self, t0, rp_rs_sq, b, t14, u1=None, u2=None, gp=None):
        """Vector from physical values (t0: list, one per night, absolute BJD_TDB; t14 in d; gp: list of
        (h, tau in d) per night, default (0.3, 10 min))."""
        vec = [t - n.tref for t, n in zip(t0, self.nights)] + [rp_rs_sq]
        vec += [] if self.b_fixed is not None else [b]
        vec += [t14]
        vec += [self.ld["u1"] if u1 is None else u1, self.ld["u2"] if u2 is None else u2] if self.fit_ld else []
        if self.noise == "gp":
            for h, tau in (gp or [(0.3, 10 / 1440)] * self.n_nights):
                vec += [math.log10(h), math.log10(tau * 1440)]
        return np.array(vec, float)

    def orbit(self, par):
        """(a/R*, inclination in deg, T14 in d, period) of ``par``; NaNs when no transit is possible."""
        k, b = math.sqrt(max(par["rp_rs_sq"], 0.0)), par["b"]
        if self.period:
            if not par["t14"] > 0:
                return math.nan, math.nan, math.nan, self.period
            a_rs, inc = orbit_from_duration(self.period, k, b, par["t14"])
            if not a_rs > 1.0 or b >= a_rs:
                return math.nan, math.nan, math.nan, self.period
            return a_rs, inc, par["t14"], self.period
        a_rs, inc = orbit_from_duration(NO_PERIOD, k, b, par["t14"])
        return a_rs, inc, par["t14"], NO_PERIOD

    # ------------------------------------------------------------------ prior
    def log_prior(self, theta):
        par = self.unpack(theta)
        k2, b, u1, u2 = par["rp_rs_sq"], par["b"], par["u1"], par["u2"]
        if not 0.0 < k2 <= RP_RS_SQ_MAX:
            return -np.inf
        for t0, night in zip(par["t0"], self.nights):
            if not night.window[0] <= t0 <= night.window[1]:
                return -np.inf
        k = math.sqrt(k2)
        b_hi = (1.0 + k) if self.b_max is None else min(self.b_max, 1.0 + k)
        if self.b_fixed is None and not 0.0 <= b < b_hi:
            return -np.inf
        lp = 0.0
        if self.b_fixed is None:
            lp += float(log_b_prior(b, b_hi, self.b_prior))
        if self.period:
            a_rs, _, t14, _ = self.orbit(par)
            if not math.isfinite(a_rs):
                return -np.inf
            rho = stellar_density(a_rs, self.period)
            if self.density is not None:
                lp -= 0.5 * ((rho - self.density[0]) / self.density[1]) ** 2
            elif not RHO_RANGE[0] <= rho <= RHO_RANGE[1]:
                return -np.inf
            else:
                lp -= math.log(rho)
            x = math.pi * t14 / self.period     # density_jacobian, in scalars (the optimiser's calls)
            lp += math.log(rho * 3 * math.pi * ((1.0 + k) ** 2 - b * b) * math.cos(x)
                           / (self.period * a_rs**2 * math.sin(x) ** 3))
        elif not T14_MIN_D <= par["t14"] <= T14_MAX_D:
            return -np.inf
        if self.fit_ld:
            if u1 < 0 or u1 + u2 > 1 or u1 + 2 * u2 < 0:
                return -np.inf
            s = self.ld["sigma"]
            lp -= 0.5 * (((u1 - self.ld["u1"]) / s) ** 2 + ((u2 - self.ld["u2"]) / s) ** 2)
        if self.noise == "gp":
            for (h, tau), night in zip(par["gp"], self.nights):
                lo, hi = night.info["gp"]["log_tau_range"]
                lh = math.log10(h)
                if not (self.gp_log10_h[0] <= lh <= self.gp_log10_h[1] and lo <= math.log10(tau * 1440) <= hi):
                    return -np.inf
                lp += float(self.log_gp_h_prior(lh))
        return lp

    def log_gp_h_prior(self, log10_h):
        """Log prior density (unnormalised) of the GP's ratio in the sampled coordinate log10 h:
        the density in h (half-Cauchy of scale 1, or uniform) times the Jacobian h ln 10."""
        lh = np.asarray(log10_h, float)
        lp = lh * math.log(10.0)
        if self.gp_h_prior == "half_cauchy":
            lp = lp - np.log1p(10.0 ** (2 * lh))
        return lp

    # ------------------------------------------------------------------ likelihood
    def transit(self, par, i):
        """Transit-only flux of night ``i``."""
        a_rs, inc, _, per = self.orbit(par)
        if not math.isfinite(a_rs):
            return np.full(self.nights[i].t.shape, np.nan)
        return self.nights[i].model.flux_orbit(par["t0"][i], math.sqrt(par["rp_rs_sq"]), a_rs, inc,
                                               par["u1"], par["u2"], per)

    @staticmethod
    def _products(night):
        """Per-night sums that make the linear solve two matrix-vector products per call.

        With weights w = 1/(err * noise_factor) and the transit tr, the Fisher matrix of the
        coefficients is F_ij = sum tr^2 w^2 X_i X_j and the normal vector g_i = sum tr w^2 X_i y:
        both are fixed matrices times tr^2 and tr.
        """
        key = night.noise_factor
        cache = night.info.get("_products")
        if cache is None or cache[0] != key:
            w2 = 1.0 / (night.err * night.noise_factor) ** 2
            x = night.design
            n = x.shape[1]
            quad = (x[:, :, None] * x[:, None, :]).reshape(len(x), n * n).T * w2
            lin = (x * (w2 * night.flux)[:, None]).T
            cache = (key, quad, lin, float(np.sum(w2 * night.flux**2)), n)
            night.info["_products"] = cache
        return cache[1:]

    def linear_solve(self, night, tr):
        """Best linear coefficients, their Fisher matrix, chi^2 and ln det of the Fisher matrix."""
        quad, lin, yy, n = self._products(night)
        fisher = (quad @ (tr * tr)).reshape(n, n)
        g = lin @ tr
        sign, logdet = np.linalg.slogdet(fisher)
        if sign <= 0:
            return None
        c = np.linalg.solve(fisher, g)
        return c, fisher, max(yy - float(g @ c), 0.0), float(logdet)

    def _night_gp(self, night):
        """The night's :class:`.gp.NightGP` (built on first use)."""
        key = ("_gp", self.kernel)
        if key not in night.info:
            from .gp import NightGP

            g = night.info["gp"]
            night.info[key] = NightGP(self.kernel, g["t"], g["err2"], g["err_ref"], night.flux, night.design)
        return night.info[key]

    def gp_solve(self, night, tr, h, tau):
        """GP marginal likelihood of ``night`` for transit ``tr``: (ln L, c, F0^-1, s^2) or None
        (:func:`.gp.marginal_loglike`)."""
        ll, c, finv, s2 = self._night_gp(night).loglike(tr[None, :], [h], [tau])
        if not np.isfinite(ll[0]):
            return None
        return float(ll[0]), c[0], finv[0], float(s2[0])

    def log_like(self, par):
        total = 0.0
        for i, night in enumerate(self.nights):
            tr = self.transit(par, i)
            if not np.all(np.isfinite(tr)):
                return -np.inf
            if self.noise == "gp":
                sol = self.gp_solve(night, tr, *par["gp"][i])
                if sol is None:
                    return -np.inf
                total += sol[0]
                continue
            sol = self.linear_solve(night, tr)
            if sol is None:
                return -np.inf
            _, _, chi2, logdet = sol
            total += -0.5 * chi2 - 0.5 * logdet - len(night.t) * math.log(night.noise_factor)
        return total

    def __call__(self, theta):
        lp = self.log_prior(theta)
        if not np.isfinite(lp):
            return -np.inf
        ll = self.log_like(self.unpack(theta))
        return lp + ll if np.isfinite(ll) else -np.inf

    # ------------------------------------------------------------------ after the fit
    def best_baseline(self, par, i):
        """(transit, baseline, coefficients, covariance) of night ``i`` at ``par``."""
        night = self.nights[i]
        tr = self.transit(par, i)
        if self.noise == "gp":
            _, c, finv, s2 = self.gp_solve(night, tr, *par["gp"][i])
            return tr, night.design @ c, c, s2 * finv
        c, fisher, _, _ = self.linear_solve(night, tr)
        return tr, night.design @ c, c, np.linalg.inv(fisher)

    # ------------------------------------------------------------------ vectorised, for emcee
    def batch(self, thetas):
        """Log-posterior of many vectors at once (emcee's ``vectorize=True``).

        The prior, the orbit and the linear solve run as array operations over the walkers; only
        batman is called once per walker and night. Equal to :meth:`__call__` row by row (tested).
        """
        x = np.atleast_2d(np.asarray(thetas, float))
        w = len(x)
        col = {name: x[:, i] for i, name in enumerate(self.names)}
        n = self.n_nights
        k2 = col["rp_rs_sq"]
        ok = (k2 > 0) & (k2 <= RP_RS_SQ_MAX)
        for i, night in enumerate(self.nights):
            t0 = night.tref + x[:, i]
            ok &= (t0 >= night.window[0]) & (t0 <= night.window[1])
        k = np.sqrt(np.clip(k2, 0, None))
        b = col["b"] if "b" in col else np.full(w, float(self.b_fixed))
        lp = np.zeros(w)
        if self.b_fixed is None:
            b_hi = 1.0 + k if self.b_max is None else np.minimum(self.b_max, 1.0 + k)
            ok &= (b >= 0) & (b < b_hi)
            lp += log_b_prior(b, b_hi, self.b_prior)
        u1 = col.get("u1", np.full(w, self.ld["u1"]))
        u2 = col.get("u2", np.full(w, self.ld["u2"]))
        if self.fit_ld:
            ok &= (u1 >= 0) & (u1 + u2 <= 1) & (u1 + 2 * u2 >= 0)
            s = self.ld["sigma"]
            lp -= 0.5 * (((u1 - self.ld["u1"]) / s) ** 2 + ((u2 - self.ld["u2"]) / s) ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.period:
                t14 = col["t14"]
                chord2 = (1.0 + k) ** 2 - b * b
                xp = np.pi * t14 / self.period
                ok &= (t14 > 0) & (xp < np.pi / 2) & (chord2 > 0)
                sn = np.sin(np.where(ok, xp, 0.5))
                a_rs = np.sqrt(np.where(ok, chord2, 1.0) / sn**2 + b * b)
                ok &= a_rs > 1.0
                rho = stellar_density(a_rs, self.period)
                if self.density is not None:
                    lp -= 0.5 * ((rho - self.density[0]) / self.density[1]) ** 2
                else:
                    ok &= (rho >= RHO_RANGE[0]) & (rho <= RHO_RANGE[1])
                    lp -= np.log(rho)
                lp += np.where(ok, density_jacobian(rho, a_rs, k, b, np.where(ok, t14, 0.0), self.period), 0.0)
                per = self.period
            else:
                t14 = col["t14"]
                ok &= (t14 >= T14_MIN_D) & (t14 <= T14_MAX_D)
                chord2 = (1.0 + k) ** 2 - b * b
                sn = np.sin(np.pi * t14 / NO_PERIOD)
                a_rs = np.sqrt(np.where(chord2 > 0, chord2, np.nan) / sn**2 + b * b)
                per = NO_PERIOD
            ok &= np.isfinite(a_rs) & (a_rs > 1.0) & (b < a_rs)
            inc = np.degrees(np.arccos(np.clip(b / a_rs, -1, 1)))
        if self.noise == "gp":
            g = x[:, self.n_shape:].reshape(w, n, 2)
            for i, night in enumerate(self.nights):
                lo, hi = night.info["gp"]["log_tau_range"]
                ok &= (g[:, i, 0] >= self.gp_log10_h[0]) & (g[:, i, 0] <= self.gp_log10_h[1]) & (g[:, i, 1] >= lo) \
                    & (g[:, i, 1] <= hi)
                lp += self.log_gp_h_prior(g[:, i, 0])
        out = np.full(w, -np.inf)
        idx = np.flatnonzero(ok)
        if not len(idx):
            return out
        ll = np.zeros(len(idx))
        for i, night in enumerate(self.nights):
            tr = night.model.flux_batch(night.tref + x[idx, i], k[idx], a_rs[idx], b[idx], u1[idx], u2[idx], per)
            if self.noise == "gp":
                ll += self._night_gp(night).loglike(tr, 10.0 ** g[idx, i, 0], 10.0 ** g[idx, i, 1] / 1440.0)[0]
                continue
            quad, lin, yy, nl = self._products(night)
            fisher = (tr * tr @ quad.T).reshape(len(idx), nl, nl)
            g = tr @ lin.T
            sign, logdet = np.linalg.slogdet(fisher)
            good = (sign > 0) & np.all(np.isfinite(tr), axis=1)
            c = np.zeros_like(g)
            if good.any():
                c[good] = np.linalg.solve(fisher[good], g[good][..., None])[..., 0]
            chi2 = np.maximum(yy - np.sum(g * c, axis=1), 0.0)
            ll += np.where(good, -0.5 * chi2 - 0.5 * np.where(good, logdet, 0.0)
                           - len(night.t) * math.log(night.noise_factor), -np.inf)
        out[idx] = lp[idx] + ll
        return out
