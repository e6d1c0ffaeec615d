"""Simulated transit light curves with white and red noise, for the transit-fit tests and benchmarks.

The transit is the project's own quadratic limb-darkened model (:mod:`.transit`, independent of
batman, which the fit uses), averaged over each exposure on 15 sub-exposures. Red noise is an
Ornstein-Uhlenbeck (exponentially correlated) process sampled exactly at the frame times, the
simplest correlated noise with a time scale; white noise is Gaussian with the per-frame error.
"""

import math

import numpy as np

from .transit import transit_model


def ou_noise(t, sigma, tau_d, rng):
    """Exponentially correlated noise of standard deviation ``sigma`` and time scale ``tau_d`` (d)."""
    out = np.zeros(len(t))
    if sigma <= 0 or len(t) == 0:
        return out
    out[0] = sigma * rng.standard_normal()
    for i in range(1, len(t)):
        r = math.exp(-(t[i] - t[i - 1]) / tau_d)
        out[i] = r * out[i - 1] + sigma * math.sqrt(1 - r * r) * rng.standard_normal()
    return out


def simulate_transit_lc(t, t0, period, rp_rs, a_rs, b, u1, u2, exptime_s=0.0, sigma_white=1e-3,
                        sigma_red=0.0, tau_red_d=0.01, slope=0.0, rng=None, n_sub=15):
    """Relative flux of a transit observed at ``t`` with a linear baseline and noise.

    Parameters
    ----------
    t : ndarray
        Mid-exposure times (d).
    t0, period : float
        Mid-transit time and period (d).
    rp_rs, a_rs, b : float
        Radius ratio, scaled semi-major axis, impact parameter (R*).
    u1, u2 : float
        Quadratic limb darkening.
    exptime_s : float
        Exposure time (s): the model is averaged over it.
    sigma_white, sigma_red : float
        Standard deviations of the white and of the red noise (relative flux).
    tau_red_d : float
        Correlation time of the red noise (d).
    slope : float
        Baseline slope (relative flux per day, about the mean time).

    Returns
    -------
    (ndarray, ndarray)
        Observed flux and the noise-free transit.
    """
    rng = rng or np.random.default_rng()
    t = np.asarray(t, float)
    inc = math.degrees(math.acos(b / a_rs))
    if exptime_s > 0:
        off = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * exptime_s / 86400
        tr = transit_model((t[:, None] + off[None, :]).ravel(), t0, period, rp_rs, a_rs, inc, u1, u2)
        tr = tr.reshape(len(t), n_sub).mean(axis=1)
    else:
        tr = transit_model(t, t0, period, rp_rs, a_rs, inc, u1, u2)
    base = 1.0 + slope * (t - t.mean())
    noise = sigma_white * rng.standard_normal(len(t)) + ou_noise(t, sigma_red, tau_red_d, rng)
    return tr * base + noise, tr
