"""Figures of the transit fits: detrended light curve with the model, corner plot, joint fit."""

import numpy as np

from ..analysis.plots import _figure, _save, bin_series

CORNER_LABELS = {"t0": "T0 - median (min)", "rp_rs_sq": "(Rp/R*)^2 (ppt)", "b": "b", "t14": "T14 (h)",
                 "stellar_density": "rho* (g/cm^3)", "u1": "u1", "u2": "u2"}


def _value_text(summary, scale=1.0, fmt=".2f"):
    s = summary
    if s.get("fixed"):
        return f"{scale * s['median']:{fmt}} (fixed)"
    return f"{scale * s['median']:{fmt}} +{scale * s['plus']:{fmt}} -{scale * s['minus']:{fmt}}"


def plot_night_fit(res, out_png, title="Transit fit", bin_min=10.0):
    """Detrended flux with the median-posterior transit, binned points and residuals."""
    best = res["best"]
    t, y, tr, base = best["t"], best["flux"], best["transit"], best["baseline"]
    t0 = np.floor(np.median(t) * 10) / 10
    fig, axes = _figure(2, 1, size=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax, axr = axes[0, 0], axes[1, 0]
    det = y / base
    ax.plot(t - t0, det, ".", ms=2, color="0.6")
    tb, yb, eb = bin_series(t, det, bin_min)
    ax.errorbar(tb - t0, yb, eb, fmt="o", ms=3, color="k", label=f"{bin_min:g}-min bins")
    p = res["parameters"]
    order = np.argsort(t)
    ax.plot(t[order] - t0, tr[order], "-", color="tab:red",
            label=(f"rp_rs_sq {_value_text(p['rp_rs_sq'], 1e3)} ppt, max_flux_drop "
                   f"{_value_text(p['max_flux_drop'], 1e3)} ppt\nT0 {res['t0']['median']:.5f} "
                   f"+{res['t0']['plus']:.5f} -{res['t0']['minus']:.5f} BJD_TDB, b {_value_text(p['b'])}, "
                   f"T14 {_value_text(p['t14'], 24)} h"))
    ax.axvline(res["t0"]["median"] - t0, color="tab:red", lw=0.8, ls=":")
    ax.set_ylabel("detrended relative flux")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title)
    resid = y - best["model"]
    axr.plot(t - t0, resid, ".", ms=2, color="0.6")
    tb, rb, eb = bin_series(t, resid, bin_min)
    axr.errorbar(tb - t0, rb, eb, fmt="o", ms=3, color="k")
    axr.axhline(0, color="tab:red", lw=1)
    if best.get("red_noise") is not None:
        axr.plot(t[order] - t0, best["red_noise"][order], "-", color="tab:blue", lw=1,
                 label="red noise (GP mean, posterior median)")
        axr.legend(fontsize=7, loc="lower left")
    axr.set_ylabel("residual")
    axr.set_xlabel(f"BJD_TDB - {t0:.1f} (d)")
    return _save(fig, out_png)


def plot_corner(samples, out_png, names=("t0", "rp_rs_sq", "b", "t14", "stellar_density"), truths=None):
    """Corner plot (histograms and 2-D scatter of the posterior samples), plain matplotlib.

    Parameters
    ----------
    samples : dict of ndarray
        Posterior samples per quantity (``t0`` in d, ``t14`` in d, ``rp_rs_sq`` fraction).
    names : sequence of str
        Quantities to show (missing or constant ones are skipped).
    """
    cols, labels = [], []
    for name in names:
        v = samples.get(name)
        if v is None:
            continue
        v = np.asarray(v, float)
        if not np.all(np.isfinite(v)) or np.ptp(v) == 0:
            continue
        if name == "t0":
            v = (v - np.median(v)) * 1440
        elif name == "rp_rs_sq":
            v = v * 1e3
        elif name == "t14":
            v = v * 24
        cols.append(v)
        labels.append(CORNER_LABELS.get(name, name))
    n = len(cols)
    fig, axes = _figure(n, n, size=(2.0 * n + 1, 2.0 * n + 1))
    for i in range(n):
        for j in range(n):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                ax.hist(cols[i], bins=40, color="0.4", histtype="step")
                for q in np.percentile(cols[i], [16, 50, 84]):
                    ax.axvline(q, color="tab:red", lw=0.8, ls="--" if q != np.median(cols[i]) else "-")
                ax.set_yticks([])
            else:
                ax.plot(cols[j], cols[i], ",", color="k", alpha=0.3)
            if i == n - 1:
                ax.set_xlabel(labels[j], fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i], fontsize=8)
            elif j > 0:
                ax.set_yticklabels([])
            ax.tick_params(labelsize=6)
    fig.suptitle("Transit fit posterior (16/50/84 %)")
    return _save(fig, out_png)


def plot_joint_fit(res, out_png, bin_min=10.0):
    """Each night's detrended light curve against time from its own T0, and the O-C diagram."""
    nights = res["nights"]
    fig, axes = _figure(1, 2, size=(12, 5))
    ax, axo = axes[0, 0], axes[0, 1]
    offset = 0.0
    for i, (name, best) in enumerate(zip(nights, res["best"])):
        t, det = best["t"], best["flux"] / best["baseline"]
        dt = (t - res["t0"][i]["median"]) * 24
        ax.plot(dt, det - offset, ".", ms=2, color="0.6")
        tb, yb, eb = bin_series(t, det, bin_min)
        ax.errorbar((tb - res["t0"][i]["median"]) * 24, yb - offset, eb, fmt="o", ms=3, color=f"C{i % 10}")
        order = np.argsort(dt)
        ax.plot(dt[order], best["transit"][order] - offset, "-", color="tab:red", lw=1)
        ax.text(dt.min(), 1.003 - offset, name, fontsize=7)
        offset += 3 * max(res["parameters"]["rp_rs_sq"]["median"], 3e-3)
    ax.set_xlabel("hours from each night's T0")
    ax.set_ylabel("detrended flux (offset per night)")
    p = res["parameters"]
    ax.set_title(f"shared rp_rs_sq {_value_text(p['rp_rs_sq'], 1e3)} ppt, b {_value_text(p['b'])}", fontsize=9)
    eph = res["ephemeris"]
    if eph.get("period") is not None:
        ep = np.array(eph["epochs"])
        oc = np.array(eph["o_minus_c_min"])
        err = np.array(eph["t0_err_min"])
        axo.errorbar(ep, oc, err, fmt="o", color="k")
        axo.axhline(0, color="tab:red")
        axo.set_title(f"P = {eph['period']:.7f} +- {eph['period_err']:.7f} d, "
                      f"T0 = {eph['t0']:.5f} +- {eph['t0_err']:.5f}", fontsize=9)
    axo.set_xlabel("epoch")
    axo.set_ylabel("O - C (min)")
    return _save(fig, out_png)
