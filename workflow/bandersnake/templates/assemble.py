"""Gather step: tiles -> templates per offset, flux scale, best offset, difference image.

The tile templates are in reference units. The gather step fits the coarse frame as
``frame = scale * template + background`` (least squares on the pixels with full reference
coverage, residuals clipped at ``clip_sigma`` robust sigmas so variable stars, cosmic rays
and saturated stars of the coarse frame do not pull the fit) at every configured offset,
keeps the offset with the smallest residual, and refines it continuously (Gauss-Newton on
templates binned from the tiles' supersampled images at any offset). The difference image is
the coarse frame minus ``scale * template(best offset) + background``.

Every template is written in the coarse frame's units per pixel (``scale`` x reference flux,
``FLXSCALE`` in the header; without the additive background, ``BKG``), on the coarse frame's
WCS, with the COVERAGE and MASK extensions of its tiles.
"""

import logging

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..errors import BandersnakeError
from ..fitsio import write_fits
from . import geometry
from .build import read_frame_data
from .offsets import bin_offset, offset_tag
from .tile import LOW_COVERAGE, NO_REFERENCE, OUTSIDE

log = logging.getLogger(__name__)


class TileSet:
    """The tile files of a template, placed on the coarse frame."""

    def __init__(self, paths, shape):
        self.paths = list(paths)
        self.shape = shape
        if not self.paths:
            raise BandersnakeError("templates: no tile files to assemble")
        with fits.open(self.paths[0]) as hdul:
            self.offsets = [(float(r["dx"]), float(r["dy"])) for r in hdul["OFFSETS"].data]
            self.k = int(hdul[0].header["SUPERK"])

    def grid(self):
        """SCI, COVERAGE and MASK cubes (n_offsets, ny, nx) of the whole frame; NaN/0/OUTSIDE elsewhere."""
        n = len(self.offsets)
        sci = np.full((n,) + self.shape, np.nan, np.float64)
        cov = np.zeros((n,) + self.shape, np.float32)
        mask = np.full((n,) + self.shape, OUTSIDE, np.uint8)
        for path in self.paths:
            with fits.open(path) as hdul:
                h = hdul[0].header
                ys = slice(h["TILEY0"], h["TILEY1"])
                xs = slice(h["TILEX0"], h["TILEX1"])
                sci[:, ys, xs] = hdul["SCI"].data
                cov[:, ys, xs] = hdul["COVERAGE"].data
                mask[:, ys, xs] = hdul["MASK"].data
        return sci, cov, mask

    def at(self, dx, dy):
        """Template (reference units) of the whole frame at any offset, from the SUPER images."""
        out = np.full(self.shape, np.nan)
        for path in self.paths:
            with fits.open(path, memmap=True) as hdul:
                h = hdul[0].header
                shape = (h["TILEY1"] - h["TILEY0"], h["TILEX1"] - h["TILEX0"])
                out[h["TILEY0"]:h["TILEY1"], h["TILEX0"]:h["TILEX1"]] = bin_offset(
                    hdul["SUPER"].data, self.k, int(h["OFFMARG"]), shape, dx, dy
                )
        return out


def _robust_sigma(r):
    return 1.4826 * np.median(np.abs(r - np.median(r)))


def fit_scale(frame, template, use, scale=None, clip_sigma=4.0, iterations=5):
    """Least-squares ``frame = scale * template + background`` on the pixels ``use``, clipped.

    Parameters
    ----------
    frame, template : ndarray
    use : ndarray bool
    scale : float or None
        Fixed scale (only the background is fitted) or None (both fitted).
    clip_sigma : float
        Residuals beyond this many robust sigmas are left out (iterated while at least half of
        ``use`` is kept).

    Returns
    -------
    scale, background, rms : float
    kept : ndarray bool
        Pixels used in the final fit.
    """
    kept = use.copy()
    a = b = np.nan
    for _ in range(iterations):
        f = frame[kept]
        t = template[kept]
        if f.size < 10:
            raise BandersnakeError("templates: fewer than 10 usable pixels to fit the flux scale")
        if scale is None:
            design = np.vstack([t, np.ones_like(t)]).T
            (a, b), *_ = np.linalg.lstsq(design, f, rcond=None)
        else:
            a = scale
            b = float(np.median(f - a * t))
        resid = frame - a * template - b
        sig = _robust_sigma(resid[kept])
        new = use & (np.abs(resid) <= clip_sigma * sig) if sig > 0 else kept
        # clipping is for outliers (variables, cosmic rays, saturated stars): it never removes
        # half of the pixels (a noise-free or badly matched frame would lose every star)
        if np.array_equal(new, kept) or new.sum() < 0.5 * use.sum():
            break
        kept = new
    resid = (frame - a * template - b)[kept]
    return float(a), float(b), float(np.sqrt(np.mean(resid**2))), kept


def refine_offset(frame, tiles, start, use, scale=None, h=0.05, max_iter=6, tol=1e-3):
    """Continuous best offset by Gauss-Newton, starting at the best configured offset.

    Returns
    -------
    (dx, dy), n_iterations
    """
    dx, dy = start
    for it in range(1, max_iter + 1):
        t0 = tiles.at(dx, dy)
        gx = (tiles.at(dx + h, dy) - tiles.at(dx - h, dy)) / (2 * h)
        gy = (tiles.at(dx, dy + h) - tiles.at(dx, dy - h)) / (2 * h)
        ok = use & np.isfinite(t0) & np.isfinite(gx) & np.isfinite(gy)
        f = frame[ok]
        if scale is None:
            design = np.vstack([t0[ok], gx[ok], gy[ok], np.ones(ok.sum())]).T
            (a, ax, ay, _), *_ = np.linalg.lstsq(design, f, rcond=None)
        else:
            design = np.vstack([gx[ok], gy[ok], np.ones(ok.sum())]).T
            (ax, ay, _), *_ = np.linalg.lstsq(design, f - scale * t0[ok], rcond=None)
            a = scale
        step_x = float(np.clip(ax / a, -0.5, 0.5))
        step_y = float(np.clip(ay / a, -0.5, 0.5))
        dx += step_x
        dy += step_y
        if max(abs(step_x), abs(step_y)) < tol:
            break
    return (dx, dy), it


def _wcs_header(frame, carry):
    header = frame.wcs.to_header(relax=True)
    for key, value in carry.items():
        header[key] = value
    return header


def preview(image, path, title, mask=None):
    """PNG preview of an image (asinh stretch between robust limits, masked pixels grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

    from ..fitsio import atomic_path

    data = np.array(image, dtype=float)
    if mask is not None:
        data[mask != 0] = np.nan
    finite = data[np.isfinite(data)]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    if finite.size:
        norm = ImageNormalize(finite, interval=ZScaleInterval(), stretch=AsinhStretch(0.1))
        cmap = plt.get_cmap("gray").copy()
        cmap.set_bad("tab:red", alpha=0.25)
        im = ax.imshow(data, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (coarse px)")
    ax.set_ylabel("y (coarse px)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def assemble(frame_path, tile_paths, out_dir, *, name, flux_scale="fit", difference=True,
             refine=True, clip_sigma=4.0):
    """Write the templates (one per offset), ``difference.fits`` and their PNG previews.

    Parameters
    ----------
    frame_path : str
        Coarse frame.
    tile_paths : list of str
        Every tile file of the template.
    out_dir : str
        ``results/templates/<name>``.
    flux_scale : "fit" or float
        Reference units -> frame units; fitted on the frame (default) or fixed.
    difference : bool
        Also write ``difference.fits``.
    refine : bool
        Refine the best offset continuously (else: the best configured offset).

    Returns
    -------
    dict
        ``scale``, ``background``, ``best`` (dx, dy), ``table`` (per-offset fit results).
    """
    from pathlib import Path

    out_dir = Path(out_dir)
    frame = geometry.read_frame(frame_path)
    data = read_frame_data(frame)
    tiles = TileSet(tile_paths, frame.shape)
    sci, cov, mask = tiles.grid()
    fixed = None if flux_scale in (None, "fit") else float(flux_scale)
    finite = np.isfinite(data)
    rows = []
    for i, (dx, dy) in enumerate(tiles.offsets):
        use = finite & (mask[i] == 0) & np.isfinite(sci[i])
        a, b, rms, kept = fit_scale(data, sci[i], use, fixed, clip_sigma)
        rows.append(dict(dx=dx, dy=dy, scale=a, background=b, rms=rms, n_pix=int(kept.sum()), kept=kept))
    first = int(np.argmin([r["rms"] for r in rows]))
    common = rows[first]["kept"]
    for i, r in enumerate(rows):
        use = common & (mask[i] == 0) & np.isfinite(sci[i])
        a, b, rms, _ = fit_scale(data, sci[i], use, fixed, clip_sigma, iterations=1)
        r.update(scale=a, background=b, rms=rms, n_pix=int(use.sum()))
    best_i = int(np.argmin([r["rms"] for r in rows]))
    best = tiles.offsets[best_i]
    n_iter = 0
    if refine:
        best, n_iter = refine_offset(data, tiles, best, common, fixed)
    best_t = tiles.at(*best)
    nearest = int(np.argmin([(dx - best[0]) ** 2 + (dy - best[1]) ** 2 for dx, dy in tiles.offsets]))
    use = finite & (mask[nearest] == 0) & np.isfinite(best_t)
    scale, bkg, rms, kept = fit_scale(data, best_t, use, fixed, clip_sigma)
    log.info("%s: best offset (%+.4f, %+.4f) px after %d refinement steps; scale %.6g, background %.6g, "
             "rms %.4g over %d px", name, best[0], best[1], n_iter, scale, bkg, rms, kept.sum())
    table = Table([{k: v for k, v in r.items() if k != "kept"} for r in rows])
    table.meta.update(best_dx=best[0], best_dy=best[1], scale=scale, background=bkg)

    base = _wcs_header(frame, frame.carry)
    base["TEMPLATE"] = (name, "template name (config templates.<name>)")
    base["FRAME"] = str(frame_path)[-68:]
    base["FLXSCALE"] = (scale, "frame units per reference unit (fitted)" if fixed is None else "configured")
    base["BKG"] = (bkg, "additive background of the frame (frame units/px)")
    base["BESTDX"] = (best[0], "best offset x (coarse px)")
    base["BESTDY"] = (best[1], "best offset y (coarse px)")
    with fits.open(frame_path) as hdul:
        bunit = hdul[frame.hdu].header.get("BUNIT", "")
    for i, (dx, dy) in enumerate(tiles.offsets):
        header = base.copy()
        header["TPLDX"] = (dx, "offset of this template x (coarse px)")
        header["TPLDY"] = (dy, "offset of this template y (coarse px)")
        header["FITRMS"] = (rows[i]["rms"], "rms of frame - (scale*template + bkg) at this offset")
        sci_h = base.copy()
        sci_h["BUNIT"] = bunit
        hdus = fits.HDUList([
            fits.PrimaryHDU(header=header),
            fits.ImageHDU((scale * sci[i]).astype(np.float32), header=sci_h, name="SCI"),
            fits.ImageHDU(cov[i], header=frame.wcs.to_header(relax=True), name="COVERAGE"),
            fits.ImageHDU(mask[i], header=frame.wcs.to_header(relax=True), name="MASK"),
        ])
        tag = offset_tag(dx, dy)
        write_fits(hdus, out_dir / f"template_{tag}.fits")
        preview(scale * sci[i], out_dir / f"template_{tag}.png",
                f"{name}: template {tag} (frame units)", mask=mask[i] & OUTSIDE)
    if difference:
        diff = data - (scale * best_t + bkg)
        dmask = mask[nearest].copy()
        dmask[~finite] |= NO_REFERENCE
        header = base.copy()
        header["FITRMS"] = (rms, "rms of the difference over the fitted pixels")
        hdus = fits.HDUList([
            fits.PrimaryHDU(header=header),
            fits.ImageHDU(diff.astype(np.float32), header=base.copy(), name="SCI"),
            fits.ImageHDU(dmask, header=frame.wcs.to_header(relax=True), name="MASK"),
            fits.BinTableHDU(table, name="OFFSETS"),
        ])
        write_fits(hdus, out_dir / "difference.fits")
        preview(diff, out_dir / "difference.png",
                f"{name}: frame - template (best offset {best[0]:+.3f}, {best[1]:+.3f})",
                mask=dmask & (OUTSIDE | NO_REFERENCE))
    return dict(scale=scale, background=bkg, best=best, table=table, low_coverage_bit=LOW_COVERAGE)
