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
from scipy import ndimage
from astropy.io import fits
from astropy.table import Table

from ..errors import BandersnakeError
from ..fitsio import atomic_path, write_fits
from . import geometry
from .build import read_frame_data
from .offsets import bin_offset, offset_tag
from .tile import NO_REFERENCE, OUTSIDE

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


def noise_model(resid, signal, use, floor=0.01):
    """Per-pixel sigma of the residuals: sky noise + photon-like term + a template-error floor.

    ``sigma^2 = s0^2 + alpha * max(signal, 0) + (floor * signal)^2``: ``s0`` is the robust sigma
    of the residuals where the template is faint, ``alpha`` the median excess variance per unit
    of signal where it is bright (0 for a frame whose noise does not grow with the signal), and
    ``floor`` the fraction of the signal a good template may miss (PSF model, colours).
    """
    sky = use & (signal <= np.percentile(signal[use], 50))
    s0 = _robust_sigma(resid[sky]) if sky.sum() > 10 else _robust_sigma(resid[use])
    bright = use & (signal > 10 * max(s0, 1e-30))
    alpha = 0.0
    if bright.sum() > 10:
        # median of a chi-square(1) variable is 0.455 of its mean
        alpha = max(0.0, float(np.median((resid[bright] ** 2 - s0**2) / signal[bright])) / 0.455)
    pos = np.clip(signal, 0, None)
    return np.sqrt(s0**2 + alpha * pos + (floor * pos) ** 2) + 1e-30


def _robust_start(frame, template, scale):
    """Starting scale and background from medians (a bright star missing from one image cannot pull them)."""
    low = template <= np.percentile(template, 50)
    if scale is None:
        high = template >= np.percentile(template, 90)
        b0 = float(np.median(frame[low]))
        t_sky = float(np.median(template[low]))
        ratio = (frame[high] - b0) / np.where(template[high] - t_sky != 0, template[high] - t_sky, np.nan)
        a0 = float(np.nanmedian(ratio))
        return a0, b0 - a0 * t_sky
    return scale, float(np.median(frame - scale * template))


def fit_scale(frame, template, use, scale=None, clip_sigma=4.0, iterations=6, grow=2):
    """Least-squares ``frame = scale * template + background`` on the pixels ``use``, clipped.

    Starts from a median-based estimate (:func:`_robust_start`), then alternates clipping the
    residuals beyond ``clip_sigma`` robust sigmas (and ``grow`` pixels around them: the wings of a
    variable, or of a star masked in the reference, are biased too) with a least-squares fit.

    Parameters
    ----------
    frame, template : ndarray
    use : ndarray bool
    scale : float or None
        Fixed scale (only the background is fitted) or None (both fitted).
    clip_sigma : float
    iterations : int
    grow : int
        Coarse pixels around a clipped pixel also left out.

    Returns
    -------
    scale, background, rms : float
    kept : ndarray bool
        Pixels used in the final fit.
    """
    if use.sum() < 10:
        raise BandersnakeError("templates: fewer than 10 usable pixels to fit the flux scale")
    a, b = _robust_start(frame[use], template[use], scale)
    kept = use.copy()
    for _ in range(iterations):
        resid = frame - a * template - b
        sig = noise_model(resid, a * template, use)
        new = use & (np.abs(resid) <= clip_sigma * sig)
        if grow > 0:
            new &= ~ndimage.binary_dilation(use & ~new, iterations=grow)
        if new.sum() < max(10, 0.1 * use.sum()):
            break  # nothing sensible left to clip against (noise-free or mismatched frame)
        converged = np.array_equal(new, kept)
        kept = new
        f = frame[kept]
        t = template[kept]
        if scale is None:
            design = np.vstack([t, np.ones_like(t)]).T
            (a, b), *_ = np.linalg.lstsq(design, f, rcond=None)
        else:
            b = float(np.mean(f - a * t))
        if converged:
            break
    resid = (frame - a * template - b)[kept]
    return float(a), float(b), float(np.sqrt(np.mean(resid**2))), kept


def box_scale(frame, template, kept, scale=None, box=5):
    """Scale and background from ``box`` x ``box`` sums of the kept pixels (aperture-like fluxes).

    A pixel-by-pixel fit weighs the stars' cores most, so a template whose PSF core is a little
    wider or narrower than the frame's pulls the scale by a few 0.1 %; sums over a few PSF widths
    do not care about the core's shape. Only boxes whose every pixel was kept by the clipped
    pixel fit are used.
    """
    inside = ndimage.binary_erosion(kept, structure=np.ones((box, box)), border_value=0)
    if inside.sum() < 10:
        return fit_scale(frame, template, kept, scale, iterations=1, grow=0)[:2]
    f = ndimage.uniform_filter(np.where(kept, frame, 0.0), box, mode="constant")[inside] * box**2
    t = ndimage.uniform_filter(np.where(kept, template, 0.0), box, mode="constant")[inside] * box**2
    if scale is None:
        (a, b), *_ = np.linalg.lstsq(np.vstack([t, np.full_like(t, box**2)]).T, f, rcond=None)
        return float(a), float(b)
    return float(scale), float(np.mean(f - scale * t) / box**2)


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


def preview(image, path, title, mask=None, zscale=True):
    """PNG preview of an image: asinh stretch between zscale limits (a difference image) or the
    0.5-99.8 percentiles (a template, whose sky is ~0); masked pixels tinted red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import AsinhStretch, AsymmetricPercentileInterval, ImageNormalize, ZScaleInterval

    data = np.array(image, dtype=float)
    if mask is not None:
        data[mask != 0] = np.nan
    finite = data[np.isfinite(data)]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    if finite.size:
        interval = ZScaleInterval() if zscale else AsymmetricPercentileInterval(0.5, 99.8)
        norm = ImageNormalize(finite, interval=interval, stretch=AsinhStretch(0.1 if zscale else 0.02))
        cmap = plt.get_cmap("gray").with_extremes(bad=(1.0, 0.0, 0.0, 0.25))
        im = ax.imshow(data, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (coarse px)")
    ax.set_ylabel("y (coarse px)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def fit_offsets(frame_path, tile_paths, out, *, name, flux_scale="fit", refine=True, clip_sigma=4.0, box=5,
                background_box=None):
    """Fit the frame at every configured offset, pick and refine the best; write ``offsets.ecsv``.

    Parameters
    ----------
    frame_path : str
        Coarse frame.
    tile_paths : list of str
        Every tile file of the template.
    out : str
        ``offsets.ecsv``: one row per configured offset (``dx``, ``dy`` coarse px, ``scale``,
        ``background``, ``rms`` (frame units), ``n_pix``), the best (refined) offset, its scale and
        background in the table's metadata (``best_dx``, ``best_dy``, ``scale``, ``background``).
    flux_scale : "fit" or float
        Reference units -> frame units; fitted on the frame (default) or fixed.
    refine : bool
        Refine the best offset continuously (else: the best configured offset).
    box : int
        The final scale and background are fitted on box x box sums (:func:`box_scale`).
    background_box : int or None
        None: one constant background. Else the frame's background varies: a mesh background
        of this box size (coarse px, :func:`mesh_background`) is taken off before the fits (the
        fitted ``background`` is then what remains, ~0).

    Returns
    -------
    astropy.table.Table
    """
    frame = geometry.read_frame(frame_path)
    data = read_frame_data(frame)
    tiles = TileSet(tile_paths, frame.shape)
    sci, _, mask = tiles.grid()
    fixed = None if flux_scale in (None, "fit") else float(flux_scale)
    finite = np.isfinite(data)
    if background_box:
        # a background varying over the frame (scattered light): first a constant fit at the
        # configured offsets, then the mesh background of the residual is taken off the frame
        # (iterated: the scale of the first fit is pulled by the background it ignores)
        raw = data
        for _ in range(3):
            first = []
            for i in range(len(tiles.offsets)):
                use = finite & (mask[i] == 0) & np.isfinite(sci[i])
                first.append(fit_scale(data, sci[i], use, fixed, clip_sigma))
            i0 = int(np.argmin([f[2] for f in first]))
            a0, _, _, kept0 = first[i0]
            bmap = mesh_background(raw - a0 * sci[i0], ~kept0, background_box)
            if bmap is None:
                break
            data = raw - bmap
    rows = []
    for i, (dx, dy) in enumerate(tiles.offsets):
        use = finite & (mask[i] == 0) & np.isfinite(sci[i])
        a, b, rms, kept = fit_scale(data, sci[i], use, fixed, clip_sigma)
        rows.append(dict(dx=dx, dy=dy, scale=a, background=b, rms=rms, n_pix=int(kept.sum()), kept=kept))
    # compare the offsets on one set of pixels: those kept at the first pass's best offset
    common = rows[int(np.argmin([r["rms"] for r in rows]))]["kept"]
    for i, r in enumerate(rows):
        use = common & (mask[i] == 0) & np.isfinite(sci[i])
        a, b, rms, _ = fit_scale(data, sci[i], use, fixed, clip_sigma, iterations=1)
        r.update(scale=a, background=b, rms=rms, n_pix=int(use.sum()))
    best = tiles.offsets[int(np.argmin([r["rms"] for r in rows]))]
    n_iter = 0
    if refine:
        best, n_iter = refine_offset(data, tiles, best, common, fixed)
    best_t = tiles.at(*best)
    nearest = _nearest(tiles.offsets, best)
    use = finite & (mask[nearest] == 0) & np.isfinite(best_t)
    scale, bkg, rms, kept = fit_scale(data, best_t, use, fixed, clip_sigma)
    scale, bkg = box_scale(data, best_t, kept, fixed, box)
    rms = float(np.sqrt(np.mean((data - scale * best_t - bkg)[kept] ** 2)))
    log.info("%s: best offset (%+.4f, %+.4f) px after %d refinement steps; scale %.6g, background %.6g, "
             "rms %.4g over %d px", name, best[0], best[1], n_iter, scale, bkg, rms, kept.sum())
    table = Table([{k: v for k, v in r.items() if k != "kept"} for r in rows])
    table["dx"].unit = table["dy"].unit = "pix"
    table.meta.update(template=name, frame=str(frame_path), best_dx=float(best[0]), best_dy=float(best[1]),
                      scale=scale, background=bkg, rms=rms, n_pix=int(kept.sum()), refine_steps=n_iter,
                      scale_fitted=fixed is None, background_box=background_box or 0)
    with atomic_path(out) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    return table


def mesh_background(resid, bad, box):
    """Smooth background of ``resid`` (frame - scaled template): sigma-clipped medians in boxes of
    ``box`` coarse pixels (photutils ``Background2D``; the mesh median-filtered 3 x 3 when the frame
    is at least 8 boxes wide), interpolated.

    Returns the map, or None when the frame has too few usable boxes.
    """
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, MedianBackground

    # the 3 x 3 median filter of the mesh (against boxes dominated by a bright star) needs enough
    # boxes: on a small frame it flattens the edges
    filter_size = 3 if min(resid.shape) >= 8 * box else 1
    try:
        bkg = Background2D(np.where(bad, 0.0, resid), box, mask=bad, filter_size=filter_size,
                           sigma_clip=SigmaClip(sigma=3.0), bkg_estimator=MedianBackground(),
                           exclude_percentile=50)
    except ValueError as err:
        log.warning("mesh background not possible (%s): constant background kept", err)
        return None
    return np.asarray(bkg.background, float)


def _nearest(offsets, best):
    return int(np.argmin([(dx - best[0]) ** 2 + (dy - best[1]) ** 2 for dx, dy in offsets]))


def _product_header(frame, fit, name):
    header = _wcs_header(frame, frame.carry)
    header["TEMPLATE"] = (name, "template name (config templates.<name>)")
    header["FRAME"] = str(frame.path)[-68:]
    header["FLXSCALE"] = (fit.meta["scale"], "frame units per reference unit")
    header["BKG"] = (fit.meta["background"], "fitted frame background (frame units/px)")
    header["BESTDX"] = (fit.meta["best_dx"], "best offset x (coarse px)")
    header["BESTDY"] = (fit.meta["best_dy"], "best offset y (coarse px)")
    with fits.open(frame.path) as hdul:
        header["BUNIT"] = hdul[frame.hdu].header.get("BUNIT", "")
    return header


def write_template(frame_path, tile_paths, fit_path, dx, dy, out, png, *, name):
    """Write one offset's template (frame units per pixel, COVERAGE, MASK) and its preview."""
    frame = geometry.read_frame(frame_path)
    fit = Table.read(fit_path, format="ascii.ecsv")
    tiles = TileSet(tile_paths, frame.shape)
    matches = [i for i, o in enumerate(tiles.offsets) if abs(o[0] - dx) < 5e-3 and abs(o[1] - dy) < 5e-3]
    if not matches:
        raise BandersnakeError(f"templates {name}: offset ({dx}, {dy}) is not among {tiles.offsets}")
    i = matches[0]
    sci, cov, mask = tiles.grid()
    header = _product_header(frame, fit, name)
    header["TPLDX"] = (dx, "offset of this template x (coarse px)")
    header["TPLDY"] = (dy, "offset of this template y (coarse px)")
    header["FITRMS"] = (float(fit["rms"][i]), "rms of the fit at this offset (frame units)")
    wcs_h = frame.wcs.to_header(relax=True)
    hdus = fits.HDUList([
        fits.PrimaryHDU(header=header),
        fits.ImageHDU((fit.meta["scale"] * sci[i]).astype(np.float32), header=header, name="SCI"),
        fits.ImageHDU(cov[i], header=wcs_h, name="COVERAGE"),
        fits.ImageHDU(mask[i], header=wcs_h, name="MASK"),
    ])
    write_fits(hdus, out)
    preview(fit.meta["scale"] * sci[i], png, f"{name}: template {offset_tag(dx, dy)} ({header['BUNIT']})",
            mask=mask[i] & OUTSIDE, zscale=False)
    return out


def write_difference(frame_path, tile_paths, fit_path, out, png, *, name):
    """Write ``difference.fits``: frame - (scale x template at the best offset + background)."""
    frame = geometry.read_frame(frame_path)
    data = read_frame_data(frame)
    fit = Table.read(fit_path, format="ascii.ecsv")
    tiles = TileSet(tile_paths, frame.shape)
    best = (fit.meta["best_dx"], fit.meta["best_dy"])
    model = fit.meta["scale"] * tiles.at(*best) + fit.meta["background"]
    _, _, mask = tiles.grid()
    dmask = mask[_nearest(tiles.offsets, best)].copy()
    dmask[~np.isfinite(data)] |= NO_REFERENCE
    diff = data - model
    box = int(fit.meta.get("background_box", 0) or 0)
    if box:
        bad = (dmask != 0) | ~np.isfinite(diff)
        bmap = mesh_background(diff, bad, box)
        if bmap is not None:
            diff = diff - bmap
    header = _product_header(frame, fit, name)
    header["FITRMS"] = (fit.meta["rms"], "rms of the difference over the fitted pixels")
    header["BKGBOX"] = (box, "mesh background box (coarse px); 0: constant BKG only")
    wcs_h = frame.wcs.to_header(relax=True)
    hdus = fits.HDUList([
        fits.PrimaryHDU(header=header),
        fits.ImageHDU(diff.astype(np.float32), header=header, name="SCI"),
        fits.ImageHDU(dmask, header=wcs_h, name="MASK"),
        fits.BinTableHDU(Table(fit, meta={}), name="OFFSETS"),
    ])
    write_fits(hdus, out)
    preview(diff, png, f"{name}: frame - template (offset {best[0]:+.3f}, {best[1]:+.3f})",
            mask=dmask & (OUTSIDE | NO_REFERENCE))
    return out


def assemble(frame_path, tile_paths, out_dir, *, name, flux_scale="fit", difference=True,
             refine=True, clip_sigma=4.0, background_box=None):
    """Every gather product in one call: offsets.ecsv, each template, the difference (+ PNGs).

    Returns
    -------
    dict
        ``scale``, ``background``, ``best`` (dx, dy), ``table`` (offsets.ecsv).
    """
    from pathlib import Path

    out_dir = Path(out_dir)
    fit = fit_offsets(frame_path, tile_paths, out_dir / "offsets.ecsv", name=name, flux_scale=flux_scale,
                      refine=refine, clip_sigma=clip_sigma, background_box=background_box)
    for dx, dy in zip(fit["dx"], fit["dy"]):
        tag = offset_tag(dx, dy)
        write_template(frame_path, tile_paths, out_dir / "offsets.ecsv", dx, dy,
                       out_dir / f"template_{tag}.fits", out_dir / f"template_{tag}.png", name=name)
    if difference:
        write_difference(frame_path, tile_paths, out_dir / "offsets.ecsv", out_dir / "difference.fits",
                         out_dir / "difference.png", name=name)
    return dict(scale=fit.meta["scale"], background=fit.meta["background"],
                best=(fit.meta["best_dx"], fit.meta["best_dy"]), table=fit)
