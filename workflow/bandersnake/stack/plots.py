"""Plots of a stack product: the ePSF and the zero-point fit (PNG, for ``snakemake --report``)."""

import math

import numpy as np


def _figure(ncols=2, width=9.0, height=4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height))
    return fig, np.atleast_1d(axes), plt


def _save(fig, plt, path):
    from ..fitsio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def epsf_plot(res, path, title=""):
    """``<TARGET>_<FILTER>_epsf.png``: the ePSF image (log stretch) and its radial profile with the Moffat fit."""
    fig, (a, b), plt = _figure()
    epsf, psf = res["epsf"], res["psf"]
    if epsf is None:
        for ax in (a, b):
            ax.text(0.5, 0.5, "no ePSF: " + "; ".join(res["notes"])[:80], ha="center", va="center", wrap=True,
                    transform=ax.transAxes)
            ax.set_axis_off()
    else:
        img = np.asarray(epsf.data, float)
        ov = float(np.atleast_1d(epsf.oversampling)[0])
        half = img.shape[0] / ov / 2
        a.imshow(np.log10(np.maximum(img / img.max(), 1e-4)), origin="lower", cmap="viridis",
                 extent=[-half, half, -half, half])
        a.set_xlabel("x offset (px)")
        a.set_ylabel("y offset (px)")
        a.set_title(f"ePSF (log10, {psf.get('n_stars', 0)} stars, oversampling {int(ov)})")
        ny, nx = img.shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        r = np.hypot((xx - (nx - 1) / 2) / ov, (yy - (ny - 1) / 2) / ov)
        b.semilogy(r.ravel(), np.maximum(img.ravel() / img.max(), 1e-5), ".", ms=2, alpha=0.4, label="ePSF samples")
        rr = np.linspace(0, r.max(), 200)
        g, beta = psf["alpha"], psf["beta"]
        b.semilogy(rr, (1 + (rr / g) ** 2) ** (-beta), "r-", label=f"Moffat FWHM {psf['fwhm']:.2f} px, "
                                                                    f"beta {beta:.2f}")
        b.set_ylim(1e-4, 1.5)
        b.set_xlabel("radius (px)")
        b.set_ylabel("relative intensity")
        b.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, plt, path)


def zeropoint_plot(res, path, title=""):
    """``<TARGET>_<FILTER>_zp.png``: per-star zero points against catalogue magnitude, kept and clipped."""
    fig, (a,), plt = _figure(1, 6.5, 4.5)
    t, zp = res["zpstars"], res["zp"]
    if len(t) == 0:
        a.text(0.5, 0.5, res["zp_note"][:90], ha="center", va="center", transform=a.transAxes, wrap=True)
        a.set_axis_off()
    else:
        used = np.asarray(t["used"], bool)
        err = np.hypot(np.asarray(t["mag_cat_err"], float), np.asarray(t["mag_inst_err"], float))
        a.errorbar(np.asarray(t["mag_cat"])[used], np.asarray(t["zp_star"])[used], yerr=err[used], fmt="o", ms=4,
                   label=f"kept ({used.sum()})")
        if (~used).any():
            a.plot(np.asarray(t["mag_cat"])[~used], np.asarray(t["zp_star"])[~used], "x", color="grey",
                   label=f"clipped ({(~used).sum()})")
        if math.isfinite(zp["zp"]):
            a.axhline(zp["zp"], color="r", label=f"ZP {zp['zp']:.3f} +- {zp['zp_err']:.3f}")
            a.axhspan(zp["zp"] - zp["zp_err"], zp["zp"] + zp["zp_err"], color="r", alpha=0.15)
        a.set_xlabel(f"catalogue magnitude ({res['catalogue_label']})")
        a.set_ylabel("m_cat - m_inst (mag)")
        a.legend(fontsize=8)
    a.set_title(title)
    fig.tight_layout()
    _save(fig, plt, path)


def message_plot(path, message, title=""):
    """A plot that only says why there is nothing to show (a group without a stack)."""
    fig, (a,), plt = _figure(1, 6.5, 3.0)
    a.text(0.5, 0.5, message[:120], ha="center", va="center", wrap=True, transform=a.transAxes)
    a.set_axis_off()
    a.set_title(title)
    _save(fig, plt, path)
