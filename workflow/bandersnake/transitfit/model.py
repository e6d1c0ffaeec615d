"""Transit light curve from ``batman`` (Kreidberg 2015), with exposure-time integration.

The fit is parametrised by what a light curve constrains: mid-time T0, depth ``rp_rs_sq`` =
(Rp/R*)^2, impact parameter b and total duration T14 (first to fourth contact) on a circular orbit
of period P. batman wants a/R* and the inclination; :func:`orbit_from_duration` gives them
(Seager & Mallen-Ornelas 2003), :func:`stellar_density` turns a/R* and P into the mean stellar
density that a prior from the config constrains.

Exposure time: a flux measured over an exposure ``delta`` is the model averaged over the exposure.
The average differs from the instantaneous model only where the light curve bends: at a contact
point, where the slope changes by depth/tau (tau = ingress duration), by at most
depth * delta / (8 tau). batman integrates by supersampling; :func:`supersample_factor` splits
each exposure into sub-exposures of at most tau/15, which keeps that error below 1 % of the depth
(0.1 ppt for a 1 % transit), and does nothing when the exposure is already that short (a 60-s
exposure on the 20-min ingress of a hot Jupiter). The setting ``supersample_s`` overrides the step.
"""

import math

import numpy as np

G_CGS = 6.67430e-8          # cm^3 g^-1 s^-2 (CODATA 2018)
DAY_S = 86400.0
NO_PERIOD_D = 1000.0        # "no period given": a 1000-d circular orbit is a straight chord to < 1e-6


def ingress_duration(t14, rp_rs, b=0.0):
    """Ingress (= egress) duration (d) of a transit of total duration ``t14``: (T14 - T23) / 2, with
    T23 / T14 the ratio of the chords the planet's centre crosses fully inside and touching the
    star, sqrt((1 - k)^2 - b^2) / sqrt((1 + k)^2 - b^2) (exact for a straight chord; within 4 % of a
    circular orbit's ingress for a/R* >= 3, 0.5 % for a/R* >= 8). At b = 0 it is the shortest,
    T14 k / (1 + k). Works on arrays."""
    outer = np.sqrt(np.clip((1.0 + rp_rs) ** 2 - b * b, 1e-12, None))
    inner = np.sqrt(np.clip((1.0 - rp_rs) ** 2 - b * b, 0.0, None))
    return 0.5 * t14 * (1.0 - inner / outer)


def supersample_factor(exptime_s, max_step_s):
    """Sub-exposures per exposure so that each lasts at most ``max_step_s`` (s); 1 means no integration."""
    if exptime_s is None or not np.isfinite(exptime_s) or max_step_s is None or exptime_s <= max_step_s:
        return 1
    return int(math.ceil(exptime_s / max_step_s))


def orbit_from_duration(period, rp_rs, b, t14):
    """a/R* and inclination (deg) of the circular orbit with total duration ``t14`` (d).

    Inverts T14 = P/pi asin(sqrt((1 + k)^2 - b^2) / (a sin i)) with b = a cos i. Returns NaNs when no
    orbit gives this duration (b >= 1 + k or T14 >= P/2).
    """
    chord2 = (1.0 + rp_rs) ** 2 - b * b
    s = math.sin(math.pi * t14 / period)
    if chord2 <= 0 or s <= 0 or t14 >= period / 2:
        return math.nan, math.nan
    a_rs = math.sqrt(chord2 / s**2 + b * b)
    return a_rs, math.degrees(math.acos(min(b / a_rs, 1.0)))


def duration_from_orbit(period, rp_rs, b, a_rs):
    """Total duration T14 (d) of a circular orbit (Seager & Mallen-Ornelas 2003, eq. 3)."""
    inc = math.acos(min(b / a_rs, 1.0))
    arg = math.sqrt(max((1 + rp_rs) ** 2 - b * b, 0.0)) / (a_rs * math.sin(inc))
    return period / math.pi * math.asin(min(arg, 1.0))


def stellar_density(a_rs, period):
    """Mean stellar density (g/cm^3) from Kepler's third law, planet mass neglected."""
    return 3 * math.pi * a_rs**3 / (G_CGS * (period * DAY_S) ** 2)


def a_rs_from_density(rho_cgs, period):
    """a/R* of a circular orbit of ``period`` (d) around a star of mean density ``rho_cgs`` (g/cm^3)."""
    return (G_CGS * rho_cgs * (period * DAY_S) ** 2 / (3 * math.pi)) ** (1 / 3)


class TransitModel:
    """batman light curve at fixed times, re-evaluated for new parameters.

    Parameters
    ----------
    t : ndarray
        Mid-exposure times (d, BJD_TDB).
    period : float or None
        Orbital period (d); None: a straight chord (``NO_PERIOD_D``).
    exptime_s : float, optional
        Exposure time (s); supersampled when longer than ``max_step_s``.
    max_step_s : float or None
        Longest sub-exposure of the integration (s); None: no integration.
    """

    def __init__(self, t, period=None, exptime_s=None, max_step_s=None):
        import batman

        self.t = np.asarray(t, float)
        self.period = float(period) if period else NO_PERIOD_D
        self.factor = supersample_factor(exptime_s, max_step_s)
        self.exptime_d = (exptime_s or 0.0) / DAY_S
        self._p = batman.TransitParams()
        p = self._p
        p.t0, p.per, p.rp, p.a, p.inc, p.ecc, p.w = 0.0, self.period, 0.1, 10.0, 90.0, 0.0, 90.0
        p.u, p.limb_dark = [0.4, 0.25], "quadratic"
        # batman measures times relative to t0 in double precision: keep them small
        self.tref = float(np.median(self.t)) if len(self.t) else 0.0
        kw = dict(supersample_factor=self.factor, exp_time=self.exptime_d) if self.factor > 1 else {}
        self._m = batman.TransitModel(p, self.t - self.tref, **kw)
        # batman's own sub-exposure times (relative to tref), for the vectorised model
        self._t_super = np.ascontiguousarray(self._m.t_supersample, float)
        self._phase_period = None
        self._sorted = bool(np.all(np.diff(self._t_super) >= 0))

    def flux(self, t0, rp_rs_sq, b, t14, u1, u2, period=None):
        """Relative flux (1 out of transit) at the model's times; NaNs for an impossible geometry."""
        k = math.sqrt(max(rp_rs_sq, 0.0))
        per = self.period if period is None else float(period)
        a_rs, inc = orbit_from_duration(per, k, b, t14)
        if not math.isfinite(a_rs) or a_rs <= 1.0:
            return np.full(self.t.shape, np.nan)
        return self.flux_orbit(t0, k, a_rs, inc, u1, u2, per)

    def flux_orbit(self, t0, rp_rs, a_rs, inc_deg, u1, u2, period=None):
        """Relative flux for batman's own parameters (a/R*, inclination in deg)."""
        p = self._p
        p.t0 = float(t0) - self.tref
        p.per = self.period if period is None else float(period)
        p.rp, p.a, p.inc, p.u = float(rp_rs), float(a_rs), float(inc_deg), [float(u1), float(u2)]
        return self._m.light_curve(p)

    def flux_batch(self, t0, rp_rs, a_rs, b, u1, u2, period=None):
        """Relative flux of many parameter sets at once (emcee's walkers): (W, N).

        The sky-projected separation of a circular orbit, d^2 = a^2 sin^2 phi + b^2 cos^2 phi
        (phi = 2 pi (t - t0) / P; batman's ``_rsky`` for e = 0, with b = a cos i), is computed for
        all walkers and sub-exposures in one array operation (cos phi by angle addition from
        cos, sin of 2 pi t / P, computed once); batman's Mandel-Agol kernel
        (``_quadratic_ld``, C) then runs once per walker on the points in transit only (d < 1 + k;
        the others are 1). Same numbers as :meth:`flux_orbit` to rounding (tested), a third of its
        time: batman's Python wrapper and its ``_rsky`` call were 2/3 of a walker's model.

        Parameters
        ----------
        t0, rp_rs, a_rs, b, u1, u2 : ndarray
            (W) mid-times (BJD_TDB, d), Rp/R*, a/R*, impact parameters, quadratic limb darkening.
        """
        from batman import _quadratic_ld

        per = self.period if period is None else float(period)
        t0, rp_rs, a_rs, b, u1, u2 = (np.asarray(v, float) for v in (t0, rp_rs, a_rs, b, u1, u2))
        omega = 2.0 * math.pi / per
        if self._phase_period != per:     # cos, sin of omega t, once: cos(phi) by angle addition
            self._cs = np.cos(omega * self._t_super), np.sin(omega * self._t_super)
            self._phase_period = per
        ts = self._t_super
        i0, i1 = 0, len(ts)
        if self._sorted and np.ptp(ts) < per / 2:
            # only the sub-exposures some walker can have in transit: d < 1 + k needs
            # |sin phi| < (1 + k) / a with cos phi > 0, i.e. |t - t0| < P / (2 pi) asin((1 + k) / a)
            with np.errstate(invalid="ignore"):
                half = np.arcsin(np.minimum(1.0, (1.0 + rp_rs) / a_rs)) / omega
                lo, hi = np.min(t0 - self.tref - half), np.max(t0 - self.tref + half)
            if np.isfinite(lo) and np.isfinite(hi):
                i0, i1 = np.searchsorted(ts, lo), min(int(np.searchsorted(ts, hi)) + 1, len(ts))
        lc = np.ones((len(t0), len(ts)))
        if i1 > i0:
            w0 = omega * (t0 - self.tref)
            c = np.cos(w0)[:, None] * self._cs[0][i0:i1] + np.sin(w0)[:, None] * self._cs[1][i0:i1]
            c2 = c * c
            d2 = (a_rs * a_rs)[:, None] * (1.0 - c2) + (b * b)[:, None] * c2
            inside = (c > 0.0) & (d2 < ((1.0 + rp_rs) ** 2)[:, None])   # c <= 0: behind the star
            part = lc[:, i0:i1]
            for j in np.flatnonzero(inside.any(axis=1)):
                m = inside[j]
                part[j, m] = _quadratic_ld._quadratic_ld(np.sqrt(d2[j, m]), float(rp_rs[j]), float(u1[j]),
                                                         float(u2[j]), 1)
        if self.factor > 1:
            lc = lc.reshape(len(lc), len(self.t), self.factor).mean(axis=2)
        return lc
