"""Sources of a stack: background, detection, aperture photometry, ePSF, PSF photometry, depth.

All on the stack's SCI (e-/s) with its ERR and MASK (:mod:`bandersnake.stack.build`):

1. background: ``photutils.background.Background2D`` (sigma-clipped median in boxes, sources
   masked), subtracted;
2. detection: segmentation of the image convolved with the PSF-sized Gaussian at
   ``detect_nsigma`` times the background RMS (:func:`detect`);
3. aperture photometry (APPHOT) in a circle of ``aper_radius_fwhm`` x FWHM on the
   background-subtracted image, errors from ERR;
4. PSF stars (PSFSTARS): unflagged, isolated (no other detection within the stamp), S/N >=
   ``psf_min_snr``, up to ``psf_max_stars`` brightest;
5. effective PSF: ``photutils.psf.EPSFBuilder`` on stamps of ~8 FWHM, oversampled
   ``psf_oversampling`` times; a 2-D Moffat fitted to it gives the FWHM and beta in the header.
   ``extract_stars`` normalises each star within its stamp, where neighbours and sky residuals
   add light to the outer stamp (3-5 % on simulated fields), so the ePSF's own normalisation
   is not a total flux: APCORR, the median ratio of the PSF stars' aperture fluxes within
   4 FWHM to their PSF-fit fluxes, divided by the Moffat's encircled fraction at that radius,
   turns PSF-fit fluxes into total fluxes;
6. PSF photometry (PSFPHOT) of every detected source with ``photutils.psf.PSFPhotometry`` and the
   ePSF (neighbours within 2 FWHM fitted together), and the RESIDUAL image (data - models);
7. limiting magnitudes: the standard deviation of fluxes in ``n_random_apertures`` random
   apertures of radius ``aper_radius_fwhm`` x FWHM placed on empty sky (so the noise the
   resampling correlates between pixels is counted), divided by the fraction of a point source's
   light in that aperture (median over the PSF stars): the total flux of a point source measured
   at N sigma in that aperture. ``M{N}SIGMA = ZPTMAG - 2.5 log10(N sigma_ap / EE(r))``.
"""

import logging
import math
import warnings

import numpy as np
from astropy.modeling import fitting, models
from astropy.nddata import NDData
from astropy.stats import SigmaClip
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from ..calibration.mef import MASK_BAD, MASK_SATURATED
from . import stars as S

log = logging.getLogger(__name__)

DEFAULTS = dict(detect_nsigma=1.0, aper_radius_fwhm=1.0, psf_min_snr=50.0, psf_max_stars=40,
                psf_oversampling=2, psf_maxiters=10, psf_stamp_fwhm=8.0, psf_max_stamp_px=41,
                background_box_px=64, n_random_apertures=400, seed=0)


def _col(table, axis):
    """photutils 3 renamed ``xcentroid`` to ``x_centroid``: the name this table has."""
    return f"{axis}_centroid" if f"{axis}_centroid" in table.colnames else f"{axis}centroid"


def odd(n):
    n = int(math.ceil(n))
    return n if n % 2 else n + 1


def background(sci, mask, box_px=64):
    """Background (e-/s/px) and its RMS as 2-D arrays, sources masked (photutils Background2D).

    Returns
    -------
    bkg, rms : ndarray
    """
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import detect_sources, make_2dgaussian_kernel
    from astropy.convolution import convolve

    bad = ~np.isfinite(sci) | ((mask & MASK_BAD) > 0)
    ny, nx = sci.shape
    box = int(max(16, min(box_px, ny // 2, nx // 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        first = Background2D(np.where(bad, 0, sci), box, mask=bad, filter_size=3, sigma_clip=SigmaClip(3.0),
                             bkg_estimator=MedianBackground(), exclude_percentile=70)
        data = np.where(bad, 0, sci - first.background)
        kernel = make_2dgaussian_kernel(2.0, size=5)
        seg = detect_sources(convolve(data, kernel), 2.0 * first.background_rms, 5, mask=bad)  # npixels (photutils 2) = n_pixels (3)
        src = seg.make_source_mask(footprint=np.ones((5, 5), bool)) if seg is not None else np.zeros_like(bad)
        final = Background2D(np.where(bad, 0, sci), box, mask=bad | src, filter_size=3, sigma_clip=SigmaClip(3.0),
                             bkg_estimator=MedianBackground(), exclude_percentile=70)
    return final.background, final.background_rms, src


def detect(data, rms, mask, fwhm_px, nsigma=1.0):
    """Sources of a background-subtracted image: segmentation of the image convolved with a
    Gaussian of the PSF's FWHM, at ``nsigma`` times the (unconvolved) background RMS, 5 connected
    pixels, deblended (``photutils.segmentation.SourceFinder``).

    Measured on tests/test_stack_truth.py's field: the magnitude where half the injected stars are
    found with S/N >= 5 is 0.03 mag from the forced-photometry limit at ``nsigma`` 1 (the
    convolved image's noise is ~5 times lower, so this is a ~5-sigma detection); DAOStarFinder at
    3 sigma lost 0.3 mag there to its peak threshold and shape filters.

    Returns
    -------
    astropy.table.Table
        ``x``, ``y`` (px, 0-based; image moments in the segment), ``peak`` (e-/s),
        ``ellipticity``, ``area`` (px).
    """
    from astropy.convolution import convolve
    from photutils.segmentation import SourceCatalog, SourceFinder, make_2dgaussian_kernel

    bad = ~np.isfinite(data) | ((mask & MASK_BAD) > 0)
    clean = np.where(bad, 0.0, data)
    kernel = make_2dgaussian_kernel(max(fwhm_px, 1.0), size=odd(2 * fwhm_px + 1) if fwhm_px > 1.5 else 5)
    conv = convolve(clean, kernel, normalize_kernel=True)
    empty = Table(names=("x", "y", "peak", "ellipticity", "area"), dtype=("f8",) * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = SourceFinder(npixels=5, progress_bar=False)(conv, nsigma * np.where(np.isfinite(rms), rms, np.inf),
                                                          mask=bad)
        if seg is None:
            return empty
        cat = SourceCatalog(clean, seg, convolved_data=conv, mask=bad)
        x, y = np.asarray(cat.xcentroid, float), np.asarray(cat.ycentroid, float)
        ok = np.isfinite(x) & np.isfinite(y)
        t = Table({"x": x[ok], "y": y[ok], "peak": np.asarray(cat.max_value, float)[ok],
                   "ellipticity": np.asarray(cat.ellipticity, float)[ok], "area": np.asarray(cat.area, float)[ok]})
    return t


def aperture_photometry(data, err, mask, x, y, radius_px):
    """Circular-aperture sums (e-/s) with errors from ERR and the MASK bits inside each aperture.

    Returns
    -------
    flux, flux_err : ndarray
    flags : ndarray of uint8
        OR of the MASK bits in the aperture.
    """
    from photutils.aperture import ApertureStats, CircularAperture, aperture_photometry as ap

    if len(x) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.uint8)
    aper = CircularAperture(np.column_stack([x, y]), r=radius_px)
    bad = ~np.isfinite(data) | ((mask & MASK_BAD) > 0)
    t = ap(np.where(bad, 0, data), aper, error=np.where(bad, 0, np.nan_to_num(err)), mask=bad)
    flags = np.zeros(len(x), np.uint8)
    masks = aper.to_mask(method="center")
    for k, m in enumerate(masks):
        cut = m.cutout(mask, fill_value=MASK_BAD)
        if cut is not None:
            flags[k] = np.bitwise_or.reduce((cut * (m.data > 0)).astype(np.uint8), axis=None)
    return np.asarray(t["aperture_sum"], float), np.asarray(t["aperture_sum_err"], float), flags


def select_psf_stars(cat, shape, stamp_px, min_snr=50.0, max_stars=40):
    """Rows of ``cat`` (x, y, snr, flags) usable as PSF stars, brightest first.

    Unflagged (no bad or saturated pixel in the aperture), S/N >= ``min_snr``, the whole stamp on
    the image, no neighbour brighter than 2 % of the star within half a stamp and none at all
    within a quarter of the stamp (~2 FWHM); EPSFBuilder's sigma clipping handles fainter ones.
    """
    x, y = np.asarray(cat["x"]), np.asarray(cat["y"])
    ny, nx = shape
    half = stamp_px // 2
    ok = (np.asarray(cat["snr"]) >= min_snr) & ((np.asarray(cat["flags"]) & (MASK_BAD | MASK_SATURATED)) == 0)
    ok &= (x > half + 1) & (x < nx - half - 2) & (y > half + 1) & (y < ny - half - 2)
    if len(x) > 1:
        d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
        np.fill_diagonal(d, np.inf)
        f = np.asarray(cat["flux"], float)
        loud = f[None, :] > 0.02 * f[:, None]
        ok &= ~((d < half) & loud).any(axis=1) & (d.min(axis=1) > stamp_px / 4)
    idx = np.nonzero(ok)[0]
    idx = idx[np.argsort(-np.asarray(cat["flux"])[idx])][:max_stars]
    return idx


def build_epsf(data, x, y, stamp_px, oversampling=2, maxiters=10, smoothing="quartic", min_stars_oversampled=60):
    """Effective PSF from stars at (x, y) (photutils EPSFBuilder).

    Returns
    -------
    epsf : photutils.psf.ImagePSF
        Normalised to a sum of 1 over the stamp (in stamp pixels).
    n_used : int
        Stars kept by the builder.
    """
    from photutils.psf import EPSFBuilder, extract_stars

    stars = extract_stars(NDData(np.nan_to_num(data)), Table({"x": x, "y": y}), size=stamp_px)
    # Every oversampled ePSF pixel needs samples from many stars. Measured on simulated stacks
    # (tests/test_stack_truth.py's field, 14 PSF stars): oversampling 1 without smoothing gave
    # FWHM +0.5 % and PSF fluxes to 0.45 % rms; oversampling 2 (quartic smoothing) 4 % rms,
    # 3: 10 % rms and 25x slower (photutils interpolates the empty oversampled pixels). So
    # oversampling > 1 only with at least ``min_stars_oversampled`` stars.
    if len(stars) < min_stars_oversampled:
        oversampling = 1
    smoothing = smoothing if oversampling > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        res = EPSFBuilder(oversampling=oversampling, maxiters=maxiters, progress_bar=False,
                          smoothing_kernel=smoothing)(stars)
    epsf = res.epsf if hasattr(res, "epsf") else res[0]
    n_used = len(stars) - int(getattr(res, "n_excluded_stars", 0) or 0)
    return epsf, n_used


def moffat_fit(epsf):
    """2-D Moffat fitted to an ePSF, in image pixels.

    Returns
    -------
    dict
        ``fwhm`` (px), ``beta``, ``alpha`` (px), ``frac_in_stamp`` (fraction of the Moffat's total
        light inside the stamp), ``stamp`` (px).
    """
    ov = np.atleast_1d(epsf.oversampling).astype(float)
    ovy, ovx = (ov[0], ov[-1])
    img = np.asarray(epsf.data, float)
    ny, nx = img.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    xx = (xx - (nx - 1) / 2) / ovx
    yy = (yy - (ny - 1) / 2) / ovy
    z = img                                   # PSF value per image pixel (sampled, not integrated)
    # Core and inner wings only (r < 3 FWHM-ish), with a constant: the outer stamp holds little
    # signal and any sky residual of the stars, which would drag beta down.
    r = np.hypot(xx, yy)
    half_max = z.max() / 2
    fwhm0 = 2 * math.sqrt(max((z >= half_max).sum() / (ovx * ovy) / math.pi, 0.25))
    use = r <= min(nx / ovx / 2, max(3.0 * fwhm0, 4.0))
    m0 = models.Moffat2D(amplitude=z.max(), x_0=0, y_0=0, gamma=fwhm0 / 1.0, alpha=3.0) + models.Const2D(0.0)
    m0.alpha_0.bounds = (1.05, 30)
    m0.gamma_0.bounds = (0.05, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fitting.LevMarLSQFitter()(m0, xx[use], yy[use], z[use], maxiter=1000)
    m = fit[0]
    gamma, beta = abs(float(m.gamma.value)), float(m.alpha.value)
    fwhm = 2 * gamma * math.sqrt(2 ** (1 / beta) - 1)
    stamp = nx / ovx
    half = stamp / 2
    # Fraction of the Moffat's light inside the square stamp (numerically, fine grid).
    g = np.linspace(-half, half, 801)
    gx, gy = np.meshgrid(g, g)
    prof = (1 + (gx ** 2 + gy ** 2) / gamma ** 2) ** (-beta)
    inside = prof.sum() * (g[1] - g[0]) ** 2
    total = math.pi * gamma ** 2 / (beta - 1) if beta > 1 else math.inf
    # Total light of the fitted Moffat in ePSF units: a PSF-fit flux times this is a total flux.
    # (The ePSF is normalised inside its stamp, where neighbours and sky residuals of the stars
    # add light to the outer stamp; the core's Moffat is not affected by them.)
    total_model = float(m.amplitude.value) * total
    return dict(fwhm=fwhm, beta=beta, alpha=gamma, frac_in_stamp=float(inside / total), stamp=stamp,
                total=total_model, const=float(fit[1].amplitude.value), x0=float(m.x_0.value),
                y0=float(m.y_0.value))


def encircled_fraction(epsf, radius_px, total=1.0):
    """Fraction of a point source's total light inside a circle of ``radius_px`` (px).

    ``total``: the ePSF's total light (:func:`moffat_fit`'s ``total``; the ePSF itself sums to 1).
    """
    ov = np.atleast_1d(epsf.oversampling).astype(float)
    img = np.asarray(epsf.data, float)
    ny, nx = img.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = np.hypot((xx - (nx - 1) / 2) / ov[-1], (yy - (ny - 1) / 2) / ov[0])
    return float(img[r <= radius_px].sum() / img.sum() / total)


def psf_photometry(data, err, mask, epsf, x, y, fwhm_px, flux_guess=None):
    """PSF fluxes (in ePSF units, e-/s inside the stamp) of sources at (x, y) and the residual image.

    Returns
    -------
    table : astropy.table.Table
        ``x_fit``, ``y_fit`` (px), ``flux_fit``, ``flux_err``, ``qfit``, ``cfit``, ``flags``,
        ``group_id`` (photutils' columns).
    residual : ndarray
        ``data`` minus every fitted model.
    """
    from photutils.psf import PSFPhotometry, SourceGrouper

    fit_shape = max(5, odd(2 * round(fwhm_px) + 1))
    bad = ~np.isfinite(data) | ((mask & MASK_BAD) > 0)
    init = Table({"x": x, "y": y})
    if flux_guess is not None:
        init["flux"] = np.where(np.isfinite(flux_guess) & (flux_guess > 0), flux_guess, 1.0)
    phot = PSFPhotometry(epsf, (fit_shape, fit_shape), grouper=SourceGrouper(min_separation=2.0 * fwhm_px),
                         aperture_radius=1.5 * fwhm_px, progress_bar=False)
    e = np.where(bad | ~np.isfinite(err) | (err <= 0), np.nanmax(err[np.isfinite(err)]) if np.isfinite(err).any()
                 else 1.0, err)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        res = phot(np.where(bad, 0.0, data), mask=bad, error=e, init_params=init)
    stamp = np.asarray(epsf.data).shape[0] // int(np.atleast_1d(epsf.oversampling)[0])
    resid = subtract_models(np.where(bad, 0.0, data), epsf, res["x_fit"], res["y_fit"], res["flux_fit"], stamp)
    resid = np.where(bad, np.nan, resid)
    return res, np.asarray(resid, np.float32)


def subtract_models(data, epsf, x, y, flux, stamp_px):
    """``data`` minus the ePSF scaled to ``flux`` at every (x, y) (px), each over a ``stamp_px`` box."""
    out = np.array(data, dtype=np.float64)
    ny, nx = out.shape
    half = stamp_px // 2
    for xi, yi, fi in zip(np.asarray(x, float), np.asarray(y, float), np.asarray(flux, float)):
        if not (np.isfinite(xi) and np.isfinite(yi) and np.isfinite(fi)):
            continue
        x0, y0 = int(round(xi)), int(round(yi))
        xa, xb, ya, yb = max(0, x0 - half), min(nx, x0 + half + 1), max(0, y0 - half), min(ny, y0 + half + 1)
        if xa >= xb or ya >= yb:
            continue
        yy, xx = np.mgrid[ya:yb, xa:xb]
        out[ya:yb, xa:xb] -= epsf.evaluate(xx.astype(float), yy.astype(float), fi, xi, yi)
    return out


def random_aperture_sigma(data, mask, source_mask, radius_px, n=400, seed=0):
    """Standard deviation (e-/s) of sums in ``n`` random apertures of ``radius_px`` on empty sky.

    Returns
    -------
    sigma : float
    n_used : int
    """
    from photutils.aperture import CircularAperture, aperture_photometry as ap

    rng = np.random.default_rng(seed)
    ny, nx = data.shape
    r = int(math.ceil(radius_px)) + 1
    blocked = ~np.isfinite(data) | ((mask & MASK_BAD) > 0) | source_mask
    from scipy import ndimage

    blocked = ndimage.binary_dilation(blocked, iterations=r)
    cand_y, cand_x = np.nonzero(~blocked[r:ny - r, r:nx - r])
    if len(cand_x) < 10:
        return math.nan, 0
    pick = rng.choice(len(cand_x), size=min(n, len(cand_x)), replace=False)
    xy = np.column_stack([cand_x[pick] + r + rng.uniform(-0.5, 0.5, len(pick)),
                          cand_y[pick] + r + rng.uniform(-0.5, 0.5, len(pick))])
    sums = np.asarray(ap(np.nan_to_num(data), CircularAperture(xy, r=radius_px))["aperture_sum"], float)
    from astropy.stats import sigma_clipped_stats

    _, _, std = sigma_clipped_stats(sums, sigma=3.0, maxiters=5)
    return float(std), len(sums)


def aperture_correction(data, err, mask, x, y, flux_fit, psf, radius_px):
    """Total flux per unit PSF-fit flux, from the PSF stars.

    ``median(aperture flux within radius_px / PSF-fit flux) / EE(radius_px)``, with EE the
    Moffat fit's encircled fraction (the light beyond ``radius_px``: <= 0.5 % for 4 FWHM).

    Returns
    -------
    apcorr : float
    scatter : float
        Robust relative scatter of the per-star ratios.
    """
    from ..sim.render import moffat_enclosed

    ap, _, fl = aperture_photometry(data, err, mask, x, y, radius_px)
    ratio = ap / np.asarray(flux_fit, float)
    ratio = ratio[np.isfinite(ratio) & (fl & MASK_BAD == 0)]
    if ratio.size == 0:
        return math.nan, math.nan
    ee = float(moffat_enclosed(radius_px, psf["fwhm"], max(psf["beta"], 1.05)))
    med = float(np.median(ratio))
    mad = float(np.median(np.abs(ratio - med))) * 1.4826
    return med / ee, mad / med


def measure_sources(sci, err, mask, wcs, settings=None, fwhm_guess_px=3.0):
    """Everything :mod:`bandersnake.stack.sources` measures on a stack image.

    Parameters
    ----------
    sci, err : ndarray
        Stack rate and error (e-/s).
    mask : ndarray of uint8
    wcs : astropy.wcs.WCS
    settings : dict, optional
        :data:`DEFAULTS` keys.
    fwhm_guess_px : float

    Returns
    -------
    dict
        ``apphot``, ``psfstars``, ``psfphot`` (Tables; psfphot None without an ePSF), ``epsf``
        (ImagePSF or None), ``psf`` (Moffat fit, ``apcorr``...), ``residual``, ``background``,
        ``sky_rms`` (e-/s/px), ``ap_sigma`` (e-/s), ``aper_radius`` (px), ``ee_aper``, ``fwhm``
        (px), ``notes`` (list of str).
    """
    s = dict(DEFAULTS, **(settings or {}))
    notes = []
    bkg, rms, src_mask = background(sci, mask, s["background_box_px"])
    data = (sci - bkg).astype(np.float32)
    sky_rms = float(np.median(rms))
    # FWHM guess from the brightest isolated stars (Gaussian fits: ~10 % above a Moffat's FWHM;
    # the ePSF's Moffat fit replaces it below), then detection.
    bright = S.find_bright_stars(data, mask, fwhm_px=fwhm_guess_px, nsigma=20.0, max_stars=40)
    fwhm = S.measure_fwhm(data, np.asarray(bright["x"]), np.asarray(bright["y"]), fwhm_guess_px) if len(bright) \
        else math.nan
    if not math.isfinite(fwhm):
        fwhm = fwhm_guess_px
        notes.append("no bright star to measure the FWHM: guess used")
    found = detect(data, rms, mask, fwhm, s["detect_nsigma"])
    r_ap = s["aper_radius_fwhm"] * fwhm
    flux, ferr, flags = aperture_photometry(data, err, mask, found["x"], found["y"], r_ap)
    apphot = _catalogue_table(found, flux, ferr, flags, wcs)
    stamp = odd(min(s["psf_max_stamp_px"], max(15, s["psf_stamp_fwhm"] * fwhm)))
    idx = select_psf_stars(apphot, data.shape, stamp, s["psf_min_snr"], s["psf_max_stars"])
    epsf, psf, psfphot, residual, ee = None, {}, None, None, math.nan
    if len(idx) >= 3:
        # Gaussian-fit centroids: the finder's are ~0.05 px noisier, which broadens the ePSF by ~2 %.
        px, py = S.refine_centroids(data, np.asarray(apphot["x"][idx]), np.asarray(apphot["y"][idx]), fwhm)
        good = np.isfinite(px) & np.isfinite(py)
        px = np.where(good, px, apphot["x"][idx])
        py = np.where(good, py, apphot["y"][idx])
        epsf, n_used = build_epsf(data, px, py, stamp, s["psf_oversampling"], s["psf_maxiters"])
        psf = moffat_fit(epsf)
        psf["n_stars"] = n_used
        psf["oversampling"] = int(np.atleast_1d(epsf.oversampling)[0])
        fwhm = psf["fwhm"]
        # Aperture photometry again at the ePSF's FWHM.
        r_ap = s["aper_radius_fwhm"] * fwhm
        flux, ferr, flags = aperture_photometry(data, err, mask, found["x"], found["y"], r_ap)
        apphot = _catalogue_table(found, flux, ferr, flags, wcs)
        res, residual = psf_photometry(data, err, mask, epsf, np.asarray(found["x"]), np.asarray(found["y"]), fwhm,
                                       flux_guess=flux)
        r_corr = min(stamp // 2 - 1, 4.0 * fwhm)
        apcorr, scatter = aperture_correction(data, err, mask, np.asarray(res["x_fit"])[idx],
                                              np.asarray(res["y_fit"])[idx], np.asarray(res["flux_fit"])[idx], psf,
                                              r_corr)
        psf.update(apcorr=apcorr, apcorr_scatter=scatter, apcorr_radius=r_corr)
        psfphot = _psf_table(res, apcorr, wcs)
        psfphot["flags"] = flags
        # Fraction of a point source's total light in the detection aperture, from the PSF stars.
        ap_r = np.asarray(apphot["flux"])[idx] / np.asarray(psfphot["flux"])[idx]
        ap_r = ap_r[np.isfinite(ap_r)]
        ee = float(np.median(ap_r)) if ap_r.size else math.nan
    else:
        notes.append(f"only {len(idx)} PSF stars (S/N >= {s['psf_min_snr']}, isolated, unflagged): no ePSF, "
                     "no PSF photometry")
    psfstars = apphot[idx]
    ap_sigma, n_ap = random_aperture_sigma(data, mask, src_mask, r_ap, s["n_random_apertures"], s["seed"])
    return dict(apphot=apphot, psfstars=psfstars, psfphot=psfphot, epsf=epsf, psf=psf, residual=residual,
                background=bkg, sky_rms=sky_rms, ap_sigma=ap_sigma, n_random=n_ap, aper_radius=r_ap, ee_aper=ee,
                fwhm=fwhm, stamp=stamp, notes=notes)


def _radec(wcs, x, y):
    if len(x) == 0:
        return np.zeros(0), np.zeros(0)
    ra, dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return ra, dec


def _catalogue_table(found, flux, ferr, flags, wcs):
    ra, dec = _radec(wcs, found["x"], found["y"])
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / ferr
        mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        merr = np.where(flux > 0, 1.0857 * ferr / np.abs(flux), np.nan)
    t = Table({"id": np.arange(1, len(found) + 1), "x": np.asarray(found["x"], float),
               "y": np.asarray(found["y"], float), "ra": ra, "dec": dec, "flux": flux, "flux_err": ferr,
               "snr": snr, "mag_inst": mag, "mag_inst_err": merr, "flags": flags,
               "peak": np.asarray(found["peak"], float), "ellipticity": np.asarray(found["ellipticity"], float),
               "area": np.asarray(found["area"], float)})
    for col, unit in (("x", "pix"), ("y", "pix"), ("ra", "deg"), ("dec", "deg"), ("flux", "electron/s"),
                      ("flux_err", "electron/s"), ("mag_inst", "mag"), ("mag_inst_err", "mag")):
        t[col].unit = unit
    return t


def _psf_table(res, apcorr, wcs):
    corr = apcorr
    x, y = np.asarray(res["x_fit"], float), np.asarray(res["y_fit"], float)
    ra, dec = _radec(wcs, x, y)
    flux = np.asarray(res["flux_fit"], float) * corr
    ferr = np.asarray(res["flux_err"], float) * corr if "flux_err" in res.colnames else np.full(len(x), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        merr = np.where(flux > 0, 1.0857 * ferr / np.abs(flux), np.nan)
    t = Table({"id": np.asarray(res["id"], int), "x": x, "y": y, "ra": ra, "dec": dec, "flux": flux,
               "flux_err": ferr, "snr": flux / ferr, "mag_inst": mag, "mag_inst_err": merr,
               "qfit": np.asarray(res["qfit"], float), "cfit": np.asarray(res["cfit"], float),
               "psf_flags": np.asarray(res["flags"], int), "group_id": np.asarray(res["group_id"], int)})
    for col, unit in (("x", "pix"), ("y", "pix"), ("ra", "deg"), ("dec", "deg"), ("flux", "electron/s"),
                      ("flux_err", "electron/s"), ("mag_inst", "mag"), ("mag_inst_err", "mag")):
        t[col].unit = unit
    t.meta["APCORR"] = corr
    return t
