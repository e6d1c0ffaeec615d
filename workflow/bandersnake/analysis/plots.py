"""Diagnostic plots of the light-curve analysis (PNG, Agg canvas, one function per plot).

Each function takes product paths (or a fit dict), writes one PNG atomically and returns its
path. Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, so no global
pyplot state or display is touched (safe in parallel Snakemake jobs). Captions for Snakemake's
report are in ``workflow/report/<name>.rst``.
"""

import logging
import textwrap
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..fitsio import atomic_path
from .differential import aperture_radii, read_differential
from .io import read_centroids, read_photometry
from .precision import read_precision_metrics
from .status import STATUS_FAILED, failure_text

log = logging.getLogger("bandersnake.analysis")

NOISE_STYLE = {
    "sigma_photon": ("photon", "tab:orange"),
    "sigma_sky": ("sky", "tab:red"),
    "sigma_read": ("read", "tab:brown"),
    "sigma_dark": ("dark", "tab:purple"),
    "sigma_scintillation": ("scintillation", "tab:green"),
    "sigma_theory_diff": ("total (star + ensemble)", "tab:blue"),
}


def _figure(nrows=1, ncols=1, size=(9, 5), **kw):
    """Figure with fixed margins (inches): matplotlib's constrained layout measured every tick
    label of every panel and took half of the plots job's time (issue 22)."""
    # matplotlib only where a figure is drawn: the Snakefile imports this module (PLOTS) at every start.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    w, h = size
    fig.subplots_adjust(left=0.85 / w, right=1 - 0.2 / w, bottom=0.55 / h, top=1 - (0.7 if ncols > 1 else 0.45) / h,
                        hspace=0.45 if ncols > 1 else 0.12 * nrows ** 0.5, wspace=0.3)
    return fig, axes


def _save(fig, path):
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def bin_series(t, y, bin_min=10.0):
    """Means of ``y`` in ``bin_min``-minute bins of ``t`` (d) and their standard errors.

    Returns
    -------
    tb, yb, eb : ndarray
        Bin mean time (d), mean value and standard error (NaN for single-point bins).
    """
    t, y = np.asarray(t, float), np.asarray(y, float)
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    if len(t) == 0:
        return np.array([]), np.array([]), np.array([])
    idx = np.floor((t - t.min()) / (bin_min / 1440.0)).astype(int)
    n = np.bincount(idx)
    use = n > 0
    tb = np.bincount(idx, t)[use] / n[use]
    yb = np.bincount(idx, y)[use] / n[use]
    y2 = np.bincount(idx, y**2)[use] / n[use]
    with np.errstate(invalid="ignore", divide="ignore"):
        eb = np.sqrt(np.clip(y2 - yb**2, 0, None) * n[use] / np.maximum(n[use] - 1, 1) / n[use])
    eb[n[use] < 2] = np.nan
    return tb, yb, eb


def _t0(t):
    return np.floor(np.nanmin(t) - 0.5) + 0.5 if np.isfinite(t).any() else 0.0


def plot_differential_flux(differential_path, out_png, bin_min=10.0):
    """Differential flux of every aperture, one panel each, with ``bin_min`` bins; best marked."""
    radii = aperture_radii(differential_path)
    fig, axes = _figure(len(radii), 1, size=(9, 1.9 * len(radii) + 1), sharex=True)
    for ax, r in zip(axes[:, 0], radii):
        d = read_differential(differential_path, r)
        ok = d["frame_ok"].astype(bool)
        t = d["BJD_TDB"]
        t0 = _t0(t)
        ax.plot(t[ok] - t0, d["diff_flux"][ok], ".", ms=2, color="0.6", label="frames")
        ax.plot(t[~ok] - t0, d["diff_flux"][~ok], "x", ms=4, color="tab:red", label="removed")
        tb, yb, eb = bin_series(t[ok], d["diff_flux"][ok], bin_min)
        ax.errorbar(tb - t0, yb, eb, fmt="o", ms=3, color="k", label=f"{bin_min:g}-min bins")
        best = r == d["_best"]
        ax.set_ylabel(f"r={r:g} px" + (" (best)" if best else ""), color="tab:blue" if best else "k")
        lo, hi = np.nanpercentile(d["diff_flux"][ok], [0.5, 99.5]) if ok.any() else (0.9, 1.1)
        pad = 0.3 * (hi - lo) + 1e-4
        ax.set_ylim(lo - pad, hi + pad)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[0, 0].set_title("Differential flux (target / comparison ensemble)")
    axes[-1, 0].set_xlabel(f"BJD_TDB - {_t0(t):.1f} (d)")
    return _save(fig, out_png)


def plot_raw_flux(phot_path, out_png):
    """Raw aperture flux (e-) of every star against time, log scale."""
    p = read_photometry(phot_path)
    t0 = _t0(p.bjd)
    fig, axes = _figure(size=(9, 5))
    ax = axes[0, 0]
    for s in range(p.n_stars):
        ax.plot(p.bjd - t0, p.flux[:, s], ".", ms=2, label="target" if s == 0 else f"star {s}",
                color="k" if s == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel(f"BJD_TDB - {t0:.1f} (d)")
    ax.set_ylabel("flux (e-)")
    ax.set_title(f"Raw flux, aperture {p.radius:g} px")
    ax.legend(fontsize=7, ncol=4, markerscale=4)
    return _save(fig, out_png)


def plot_normalised_flux(differential_path, out_png, aperture=None, max_stars=30):
    """Each star's flux / its median, one small panel per star; ensemble members in blue."""
    d = read_differential(differential_path, aperture)
    fn = d["flux_norm"]
    t = d["BJD_TDB"]
    t0 = _t0(t)
    ok = d["frame_ok"].astype(bool)
    m = min(fn.shape[1], max_stars)
    ncols = 3
    nrows = int(np.ceil(m / ncols))
    fig, axes = _figure(nrows, ncols, size=(10, 1.6 * nrows + 1), sharex=True)
    good = d["good_star_mask"][0].astype(bool)
    for s in range(nrows * ncols):
        ax = axes.flat[s]
        if s >= m:
            ax.set_visible(False)
            continue
        color = "k" if s == 0 else ("tab:blue" if good[s] else "tab:gray")
        ax.plot(t[ok] - t0, fn[ok, s], ".", ms=1.5, color=color)
        out = d["outlier_flag"][:, s].astype(bool) & ok
        ax.plot(t[out] - t0, fn[out, s], "x", ms=4, color="tab:red")
        role = "target" if s == 0 else ("comparison" if good[s] else "not used")
        ax.set_title(f"star {s} ({role})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Normalised flux per star, aperture {d['_header']['APERRAD']:g} px "
                 "(red x: interpolated outliers)")
    return _save(fig, out_png)


def plot_sky(phot_path, out_png):
    """Sky level (e-/px) around each star against time."""
    p = read_photometry(phot_path)
    t0 = _t0(p.bjd)
    fig, axes = _figure(size=(9, 4))
    ax = axes[0, 0]
    for s in range(p.n_stars):
        ax.plot(p.bjd - t0, p.sky[:, s], "-", lw=0.8, color="k" if s == 0 else None,
                label="target" if s == 0 else (f"star {s}" if s < 10 else None))
    ax.set_xlabel(f"BJD_TDB - {t0:.1f} (d)")
    ax.set_ylabel("sky (e-/px)")
    ax.set_title("Sky background")
    ax.legend(fontsize=7, ncol=5)
    return _save(fig, out_png)


def plot_centroids(centroid_path, out_png, star=0):
    """Centroid offsets (xc, yc minus their medians) and widths of ``star`` against time."""
    c = read_centroids(centroid_path)
    t = c["BJD_TDB"]
    t0 = _t0(t)
    fig, axes = _figure(3, 1, size=(9, 6), sharex=True)
    for ax, names, label in ((axes[0, 0], ["xc"], "x offset (px)"), (axes[1, 0], ["yc"], "y offset (px)"),
                             (axes[2, 0], ["x_width", "y_width"], "RMS width (px)")):
        for name in names:
            if name not in c:
                continue
            v = np.asarray(c[name])
            v = v[:, star] if v.ndim == 2 else v
            if "width" not in name:
                v = v - np.nanmedian(v)
            ax.plot(t - t0, v, ".", ms=2, label=name)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0, 0].set_title(f"Centroids of star {star}" + (" (target)" if star == 0 else ""))
    axes[-1, 0].set_xlabel(f"BJD_TDB - {t0:.1f} (d)")
    return _save(fig, out_png)


def plot_precision_vs_aperture(metrics_path, out_png):
    """Observed 10-min precision and theoretical noise of the target against aperture radius."""
    m = read_precision_metrics(metrics_path)
    tgt = m[m["star_number"] == 0]
    tgt.sort("aperture_radius")
    fig, axes = _figure(size=(7, 4.5))
    ax = axes[0, 0]
    ax.plot(tgt["aperture_radius"], 1e3 * tgt["sigma_obs_10min"], "o-", color="k", label="observed (10-min rolling)")
    ax.plot(tgt["aperture_radius"], 1e3 * tgt["sigma_theory_diff"], "s--", color="tab:blue",
            label="theory (target + ensemble)")
    ax.plot(tgt["aperture_radius"], 1e3 * tgt["sigma_precision"], "^:", color="tab:green", label="theory (target alone)")
    best = tgt[tgt["is_best_aperture"]]
    if len(best):
        ax.axvline(best["aperture_radius"][0], color="tab:red", lw=1, label=f"best {best['aperture_radius'][0]:g} px")
    ax.set_xlabel("aperture radius (px)")
    ax.set_ylabel("per-frame precision (ppt)")
    ax.set_title("Target precision versus aperture")
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def plot_noise_budget(metrics_path, out_png, aperture=None):
    """Noise terms of every star at one aperture (default best) against flux, with observed scatter."""
    m = read_precision_metrics(metrics_path)
    radius = aperture if aperture is not None else (
        m["aperture_radius"][m["is_best_aperture"]][0] if m["is_best_aperture"].any() else m["aperture_radius"][0])
    a = m[m["aperture_radius"] == radius]
    a.sort("median_flux")
    fig, axes = _figure(size=(8, 5.5))
    ax = axes[0, 0]
    for name, (label, color) in NOISE_STYLE.items():
        v = np.asarray(a[name], float)
        if np.all(~np.isfinite(v) | (v <= 0)):
            continue
        ax.plot(a["median_flux"], 1e3 * v, "-", color=color, lw=2 if "theory" in name else 1.2, label=label)
    comp = a["is_comparison"].astype(bool)
    tgt = a["star_number"] == 0
    ax.plot(a["median_flux"][comp], 1e3 * a["sigma_obs_10min"][comp], "o", color="k", label="observed: comparisons")
    ax.plot(a["median_flux"][~comp & ~tgt], 1e3 * a["sigma_obs_10min"][~comp & ~tgt], "o", mfc="none", color="k",
            label="observed: other stars")
    ax.plot(a["median_flux"][tgt], 1e3 * a["sigma_obs_10min"][tgt], "*", ms=14, color="tab:red", label="observed: target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("median flux in aperture (e-)")
    ax.set_ylabel("per-frame noise (ppt)")
    ax.set_title(f"Noise budget, aperture {radius:g} px")
    ax.legend(fontsize=7)
    return _save(fig, out_png)


def plot_precision_vs_brightness(metrics_paths, out_png, labels=None):
    """Observed precision against flux rate for several nights (best aperture of each).

    Parameters
    ----------
    metrics_paths : list of path
        ``precision_metrics.fits`` of several nights/targets.
    labels : list of str, optional
        Legend labels (default: NIGHT/TARGET header values, else the file's parent folders).
        Files of an analysis that was not possible (``ANASTAT = 'FAILED'``) are skipped with a
        warning; when none is left the figure says so.
    """
    fig, axes = _figure(size=(8, 5.5))
    ax = axes[0, 0]
    shown = 0
    for i, path in enumerate(metrics_paths):
        m = read_precision_metrics(path)
        if str(m.meta.get("ANASTAT", "")).upper() == STATUS_FAILED or len(m) == 0:
            # A night whose analysis was not possible has no precision to show.
            log.warning("%s: skipped (%s)", path, failure_text(m.meta.get("ANAWHY", "no rows")))
            continue
        shown += 1
        best = m[m["is_best_aperture"]] if m["is_best_aperture"].any() else m
        if labels is not None:
            label = labels[i]
        else:
            label = " ".join(str(m.meta.get(k, "")) for k in ("NIGHT", "TARGET")).strip() or \
                "/".join(Path(path).parts[-4:-2])
        line = ax.plot(best["flux_rate"], 1e3 * best["sigma_obs_10min"], "o", ms=4, label=label)[0]
        tgt = best[best["star_number"] == 0]
        ax.plot(tgt["flux_rate"], 1e3 * tgt["sigma_obs_10min"], "*", ms=13, color=line.get_color(), mec="k")
        srt = best[np.argsort(best["flux_rate"])]
        ax.plot(srt["flux_rate"], 1e3 * srt["sigma_theory_diff"], "-", lw=0.8, color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("flux rate (e-/s)")
    ax.set_ylabel("per-frame precision (ppt)")
    if not shown:
        return plot_not_possible(out_png, f"none of the {len(metrics_paths)} (night, target) analyses succeeded",
                                 "Precision versus brightness")
    ax.set_title("Precision versus brightness (points: observed, lines: theory, stars: targets)")
    ax.legend(fontsize=7)
    return _save(fig, out_png)


def plot_transit_note(t, flux, out_png, note, bin_min=10.0):
    """Light curve with binned points and a note, for a transit fit that could not run."""
    t, flux = np.asarray(t, float), np.asarray(flux, float)
    fig, axes = _figure(size=(9, 4.5))
    ax = axes[0, 0]
    t0 = _t0(t)
    ax.plot(t - t0, flux, ".", ms=2, color="0.6")
    tb, yb, eb = bin_series(t, flux, bin_min)
    ax.errorbar(tb - t0, yb, eb, fmt="o", ms=3, color="k")
    ax.text(0.02, 0.04, note, transform=ax.transAxes, fontsize=9, color="tab:red", wrap=True)
    ax.set_title("Transit fit: not possible")
    ax.set_xlabel(f"BJD_TDB - {t0:.1f} (d)")
    ax.set_ylabel("differential flux")
    return _save(fig, out_png)


def plot_not_possible(out_png, reason, title=""):
    """A figure that states ``analysis not possible: <reason>``, in place of a plot that cannot be made.

    Parameters
    ----------
    out_png : path
    reason : str
    title : str, optional
        What the figure would have shown (e.g. the plot's name and the target).
    """
    fig, axes = _figure(size=(9, 4))
    ax = axes[0, 0]
    ax.set_axis_off()
    ax.set_title(title or "Light-curve analysis")
    body = "\n".join(textwrap.wrap(failure_text(reason), 80))
    ax.text(0.5, 0.5, body, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="tab:red",
            bbox={"boxstyle": "round", "facecolor": "mistyrose", "edgecolor": "tab:red"})
    return _save(fig, out_png)


PLOTS = ("differential_flux", "raw_flux", "normalised_flux", "sky", "centroid_series",
         "precision_vs_aperture", "noise_budget")


def make_not_possible_plots(out_dir, reason, target=""):
    """Every plot of :data:`PLOTS` as a figure stating why the analysis was not possible.

    Returns
    -------
    dict
        Plot name -> PNG path.
    """
    out_dir = Path(out_dir)
    label = f" of {target}" if target else ""
    return {name: plot_not_possible(out_dir / f"{name}.png", reason, f"{name.replace('_', ' ')}{label}")
            for name in PLOTS}


def make_plots(differential_path, centroid_path, metrics_path, out_dir, phot_path=None, bin_min=10.0):
    """All per-(night, target) plots into ``out_dir`` as ``<name>.png`` (names in :data:`PLOTS`).

    Parameters
    ----------
    differential_path, centroid_path, metrics_path : path
    out_dir : path
    phot_path : path, optional
        Photometry of the aperture shown in the raw-flux and sky plots; default
        ``photometry_aper<best>.fits`` beside ``differential.fits``.

    Returns
    -------
    dict
        Plot name -> PNG path.
    """
    out_dir = Path(out_dir)
    if phot_path is None:
        with fits.open(differential_path) as hdul:
            best = float(hdul[0].header["BESTAPER"])
        phot_path = Path(differential_path).parent / f"photometry_aper{int(round(best))}.fits"
    return {
        "differential_flux": plot_differential_flux(differential_path, out_dir / "differential_flux.png", bin_min),
        "raw_flux": plot_raw_flux(phot_path, out_dir / "raw_flux.png"),
        "normalised_flux": plot_normalised_flux(differential_path, out_dir / "normalised_flux.png"),
        "sky": plot_sky(phot_path, out_dir / "sky.png"),
        "centroid_series": plot_centroids(centroid_path, out_dir / "centroid_series.png"),
        "precision_vs_aperture": plot_precision_vs_aperture(metrics_path, out_dir / "precision_vs_aperture.png"),
        "noise_budget": plot_noise_budget(metrics_path, out_dir / "noise_budget.png"),
    }
