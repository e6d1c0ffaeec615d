"""Noise of a light curve beyond its per-frame errors: a white scale factor and red noise (beta).

The fit's likelihood uses ``err * scale * beta``: ``scale`` makes the best fit's reduced chi^2 one
(the pipeline's errors may be off by a constant factor), and ``beta`` >= 1 is the time-averaging
red-noise factor of Winn et al. (2008, ApJ 683, 1076; Pont et al. 2006): residuals binned on the
time scales of ingress and egress scatter ``beta`` times more than white noise would. Inflating
every error by beta widens the posterior as correlated noise of those time scales does; the
coverage benchmark (benchmarks/bench_transit_coverage.py) measures how well this holds.
"""

import math

import numpy as np

BIN_MINUTES = (5.0, 10.0, 15.0, 20.0, 30.0)


def white_scale(resid, err, n_free):
    """Factor on ``err`` giving a reduced chi^2 of one: sqrt(chi^2 / (N - n_free))."""
    dof = max(1, len(resid) - n_free)
    return float(math.sqrt(np.sum((resid / err) ** 2) / dof))


def red_noise_beta(t, resid, bins_min=BIN_MINUTES, min_bins=4):
    """Red-noise factor beta >= 1: the largest over bin widths of the binned scatter over its white expectation.

    The largest, not the median (Winn et al. 2008 averaged): on the coverage benchmark's nights
    (red noise of 0-0.4 times the white level, 5-30 min) the median over 10-30 min was 1.00 for most
    nights and the 68 % intervals of T0 held the truth in 50 % of 16 cases; taking the largest
    value over 5-30 min, as e.g. Gillon et al. (2010) do, is the conservative choice.

    Parameters
    ----------
    t : ndarray
        Times (d).
    resid : ndarray
        Residuals of the best fit (relative flux).
    bins_min : sequence of float
        Bin widths (min); ingress/egress of a hot Jupiter last 10-30 min.
    min_bins : int
        Bin widths leaving fewer non-empty bins are skipped.

    Returns
    -------
    float
        beta (1 when no bin width is usable).
    """
    t = np.asarray(t, float)
    resid = np.asarray(resid, float)
    sigma1 = np.std(resid, ddof=1)
    betas = []
    for width in bins_min:
        idx = np.floor((t - t.min()) / (width / 1440.0)).astype(int)
        counts = np.bincount(idx)
        good = counts > 0
        m = int(good.sum())
        if m < min_bins or np.mean(counts[good]) < 2:
            continue
        means = np.bincount(idx, resid)[good] / counts[good]
        expected = sigma1 / math.sqrt(np.mean(counts[good])) * math.sqrt(m / (m - 1))
        betas.append(np.std(means, ddof=1) / expected)
    return max(1.0, float(np.max(betas))) if betas else 1.0
