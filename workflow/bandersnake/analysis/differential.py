"""Differential photometry of one (night, target): outliers, comparison ensemble, best aperture.

Method, per aperture (star 0 is the target):

1. *Usable measurements*: finite positive flux and no photometry flag among lost, off chip,
   saturated, NaN, corrupt (:data:`~bandersnake.analysis.io.UNUSABLE_BITS`).
2. *Outliers* (robust rolling 4-sigma): each star's normalised flux is divided by the median of
   the comparisons (which removes clouds and extinction common to all stars), then a point is an
   outlier when it departs from the rolling median by more than ``outlier_sigma`` robust sigma
   (MAD of the residuals over a window three times wider). A frame is removed when the target is
   an outlier or unusable, or when *every* comparison is an outlier in its raw normalised flux
   (a bad frame). Isolated comparison outliers are replaced by the rolling median of that star's
   ratio to the common mode, times the common mode, so the interpolation follows clouds.
3. *Ensemble*: comparisons are weighted iteratively as Broeg et al. (2005): the weight of a
   comparison is 1/sigma^2 of its own light curve against the weighted ensemble of the *other*
   comparisons, iterated to convergence. A comparison whose scatter exceeds ``variable_ratio``
   times what its photon/sky/read/scintillation noise predicts (relative to the median of that
   ratio over the ensemble) is rejected as variable, worst first, re-weighting after each. The
   selection is judged only on the comparisons' own consistency: the target never enters it,
   so it cannot trade a transit for a lower scatter (bandersnatch's subset search minimised the
   target's scatter, which can fit a transit away).
4. *Light curve*: target / weighted ensemble, normalised to its median over kept frames, with
   1-sigma errors from the photometric errors *and* scintillation of the target and ensemble. A
   final rolling 4-sigma pass on the differential flux removes remaining single-frame outliers.
5. *Best aperture*: smallest observed 10-minute precision of the target's differential light
   curve (:func:`~bandersnake.analysis.precision.rolling_precision`: the median scatter within
   10-minute windows, which a transit's slow change does not inflate, so the choice is robust to
   the transit; comparison-only criteria would favour apertures suited to the comparisons'
   brightness rather than the target's).

Fewer than two usable comparisons: a clear warning and a *target-only* light curve (the target's
normalised flux, ``COMPMODE = 'target-only'``). An aperture whose target flux is all NaN is
skipped with a note. When no aperture gives a light curve of at least :data:`MIN_KEPT_FRAMES`
kept frames (the target unusable in every frame, too few frames left after rejection, an empty
photometry table), :func:`run_differential` raises :class:`~bandersnake.errors.AnalysisNotPossible`
naming the target and why; the workflow stage then publishes failed products (:mod:`.status`).

Product: ``photometry/differential.fits`` (one file so the rule's outputs do not depend on the
aperture range): primary header ``BESTAPER`` (px) and ``BESTCRIT``, and one BinTable ``APER<N>``
per aperture, one row per photometry row (removed frames stay, with ``frame_ok`` False):

``BJD_TDB`` (d), ``JD_UTC`` (d), ``File``, ``airmass``, ``exptime`` (s), ``diff_flux``,
``diff_flux_err`` (relative), ``ref_flux`` (relative ensemble flux), ``flux_norm``,
``flux_norm_err`` (n_stars; each star's flux / its median), ``star_lc`` (n_stars; each star
against the ensemble, the comparisons against the ensemble of the others), ``outlier_flag``
(bool, n_stars), ``frame_flag`` (int, :data:`FRAME_BITS`), ``frame_ok`` (bool),
``good_star_mask`` (bool, n_stars: target and ensemble members), ``comp_weight`` (n_stars,
normalised ensemble weights).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from numpy.lib.stride_tricks import sliding_window_view

from .. import __version__
from ..errors import AnalysisNotPossible
from ..fitsio import write_fits
from .io import (FLAG_NAMES, UNUSABLE_BITS, EmptyTableError, ProductError, fill_frame_columns, read_centroids,
                 read_photometry)
from . import precision as prec
from .status import STATUS_OK, raise_if_failed, status_cards

log = logging.getLogger("bandersnake.analysis")

FRAME_TARGET_OUTLIER = 1
FRAME_ALL_COMPS_OUTLIERS = 2
FRAME_TARGET_UNUSABLE = 4
FRAME_DIFF_OUTLIER = 8
FRAME_NO_REFERENCE = 16
FRAME_BITS = {
    FRAME_TARGET_OUTLIER: "target outlier",
    FRAME_ALL_COMPS_OUTLIERS: "all comparisons outliers",
    FRAME_TARGET_UNUSABLE: "target unusable (flag/NaN)",
    FRAME_DIFF_OUTLIER: "differential-flux outlier",
    FRAME_NO_REFERENCE: "no usable comparison in frame",
}

# A light curve needs this many kept frames: the rolling outlier test (rolling_outliers) cannot
# judge fewer than 5 points, so a shorter light curve would be published unvetted.
MIN_KEPT_FRAMES = 5

# Per-star (vector) columns of differential.fits; a one-star table stores them as scalars.
STAR_COLUMNS = ("flux_norm", "flux_norm_err", "star_lc", "star_lc_err", "outlier_flag", "good_star_mask",
                "comp_weight")

DEFAULT_SETTINGS = {
    "outlier_sigma": 4.0,          # rolling outlier threshold (robust sigma)
    "outlier_window": 21,          # frames in the rolling median
    "max_outlier_fraction": 0.2,   # a comparison with more bad frames is dropped, not interpolated
    "variable_ratio": 1.5,         # observed/expected scatter (relative to the ensemble's median ratio)
    "min_comparisons": 2,
    "comparisons": None,           # optional list of star indices allowed as comparisons
    "precision_window_min": 10.0,  # observed-precision window (minutes)
    "best_aperture": None,         # force the best aperture (px)
    "dark_e_per_s": None,          # dark current (e-/s/px); None: 0 (or DARKCUR of the master dark)
    "read_noise_e": None,          # None: the instrument's read_noise_e (or RDNOISE of the master bias)
}


def merged_settings(settings):
    """DEFAULT_SETTINGS updated with ``settings`` (unknown keys are kept for other stages)."""
    out = dict(DEFAULT_SETTINGS)
    out.update(settings or {})
    return out


# ----------------------------------------------------------------------------- robust tools

def rolling_median(y, window):
    """Centred running median of ``y`` over ``window`` points, ignoring NaNs (edges shrink)."""
    y = np.asarray(y, dtype=float)
    window = int(max(1, min(window, len(y))))
    half = window // 2
    padded = np.concatenate([np.full(half, np.nan), y, np.full(window - 1 - half, np.nan)])
    windows = sliding_window_view(padded, window)
    with np.errstate(all="ignore"), _quiet():
        return np.nanmedian(windows, axis=1)


class _quiet:
    """Silence 'All-NaN slice' warnings: all-NaN windows legitimately give NaN."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def robust_std(x):
    """1.4826 x median absolute deviation of the finite values (NaN when fewer than 3)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 3:
        return np.nan
    return 1.4826 * float(np.median(np.abs(x - np.median(x))))


def clipped_std(x, nsigma=5.0):
    """Standard deviation (ddof=1) after clipping points beyond ``nsigma`` robust sigma."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 3:
        return np.nan
    s = robust_std(x)
    if s > 0:
        x = x[np.abs(x - np.median(x)) <= nsigma * s]
    return float(np.std(x, ddof=1)) if len(x) > 1 else np.nan


def rolling_outliers(y, window=21, nsigma=4.0):
    """Points departing from the running median by more than ``nsigma`` robust sigma.

    The residual scale is the MAD of residuals over a window three times wider than the median
    window, which follows slow changes of the noise (airmass) without being as noisy as a
    21-point MAD. Series shorter than the window use global statistics.

    Parameters
    ----------
    y : ndarray
        Series (NaNs are ignored and never flagged here).
    window : int
        Running-median length (points).
    nsigma : float

    Returns
    -------
    ndarray of bool
    """
    y = np.asarray(y, dtype=float)
    finite = np.isfinite(y)
    if finite.sum() < 5:
        return np.zeros(len(y), dtype=bool)
    trend = rolling_median(y, window)
    resid = np.abs(y - trend)
    scale = 1.4826 * rolling_median(resid, 3 * window)
    fallback = robust_std(y - trend)
    if not np.isfinite(fallback) or fallback == 0:
        fallback = np.nanstd(y - trend)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, fallback)
    with np.errstate(invalid="ignore"):
        return finite & (resid > nsigma * scale) & (scale > 0)


# ----------------------------------------------------------------------------- the ensemble

def weighted_reference(norm, weights, exclude=None):
    """Weighted mean of normalised comparison fluxes per frame, ignoring NaNs.

    Parameters
    ----------
    norm : ndarray (n_frames, n_comps)
        Comparison fluxes each divided by its median.
    weights : ndarray (n_comps,)
    exclude : int, optional
        Column left out (leave-one-out reference of that comparison).
    """
    w = np.array(weights, dtype=float)
    if exclude is not None:
        w[exclude] = 0.0
    w2 = np.where(np.isfinite(norm), w[None, :], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(np.nan_to_num(norm) * w2, axis=1) / w2.sum(axis=1)


def reference_variance(rel_err, weights, exclude=None):
    """Relative variance of the weighted reference from the members' relative errors."""
    w = np.array(weights, dtype=float)
    if exclude is not None:
        w[exclude] = 0.0
    w2 = np.where(np.isfinite(rel_err), w[None, :], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(w2**2 * np.nan_to_num(rel_err) ** 2, axis=1) / w2.sum(axis=1) ** 2


def broeg_weights(norm, rel_err, max_iter=30, tol=1e-3):
    """Iterative ensemble weights after Broeg, Fernandez & Neuhaeuser (2005).

    Each comparison's light curve against the weighted ensemble of the others has variance
    s_j^2 = sigma_j^2 + var(ref_-j). Broeg et al. weight by 1/s_j^2, which over-weights faint stars
    when the reference noise is comparable to a bright star's own noise; here the reference part
    is removed (using the current own-variance estimates of the others) and the weight is
    1/sigma_j^2, iterated to convergence.

    Parameters
    ----------
    norm : ndarray (n_frames, n_comps)
        Normalised comparison fluxes (kept frames only; NaN = missing).
    rel_err : ndarray (n_frames, n_comps)
        Relative 1-sigma errors (starting weights, and the floor of the own variance).

    Returns
    -------
    weights : ndarray (n_comps,)
        Normalised to sum 1.
    scatter : ndarray (n_comps,)
        Clipped standard deviation of each comparison against the ensemble of the others.
    """
    k = norm.shape[1]
    with np.errstate(invalid="ignore"), _quiet():
        floor = 0.25 * np.nanmedian(rel_err**2, axis=0)  # own variance cannot fall below a quarter of photon noise
        own = np.nanmedian(rel_err**2, axis=0)
    own = np.where(np.isfinite(own) & (own > 0), own, np.inf)
    w = 1.0 / own
    scatter = np.full(k, np.nan)
    for _ in range(max_iter):
        for j in range(k):
            lc = norm[:, j] / weighted_reference(norm, w, exclude=j)
            scatter[j] = clipped_std(lc / np.nanmedian(lc))
        for _ in range(5):  # own_j = s_j^2 - sum_k!=j w_k^2 own_k / (sum_k!=j w_k)^2
            ref_var = np.array([np.sum(np.delete(w, j) ** 2 * np.delete(own, j)) / np.sum(np.delete(w, j)) ** 2
                                for j in range(k)])
            own = np.maximum(scatter**2 - ref_var, floor)
            own = np.where(np.isfinite(own), own, np.inf)
        new = 1.0 / own
        converged = np.all(np.abs(new - w) <= tol * np.maximum(new, w))
        w = new
        if converged:
            break
    total = w.sum()
    return (w / total if total > 0 else w), scatter


def select_ensemble(norm, rel_err, candidates, variable_ratio=1.5, min_comparisons=2):
    """Weights and membership of the comparison ensemble, rejecting variable comparisons.

    Each round computes Broeg weights, then each comparison's observed scatter against the
    ensemble of the others divided by the scatter expected from its own and that ensemble's
    errors. The worst comparison is dropped when that ratio exceeds ``variable_ratio`` times the
    median ratio (at least 1: a noise model that is uniformly optimistic rejects nobody), until
    none is or ``min_comparisons`` remain. The target is not an input.

    Parameters
    ----------
    norm, rel_err : ndarray (n_frames, n_stars)
        Normalised fluxes and relative errors of all stars, kept frames only.
    candidates : list of int
        Star indices allowed as comparisons.

    Returns
    -------
    members : list of int
    weights : ndarray (n_stars,)
        Zero outside the ensemble, summing to 1.
    rejected : dict
        Star index -> reason.
    ratios : dict
        Star index -> final observed/expected scatter ratio.
    """
    members = list(candidates)
    rejected = {}
    ratios = {}
    while True:
        sub, err = norm[:, members], rel_err[:, members]
        w, scatter = broeg_weights(sub, err)
        expected = np.array([
            np.sqrt(np.nanmedian(err[:, j] ** 2) + np.nanmedian(reference_variance(err, w, exclude=j)))
            for j in range(len(members))
        ])
        ratio = scatter / expected
        ratios = {s: float(r) for s, r in zip(members, ratio)}
        if len(members) <= max(min_comparisons, 2):
            break  # with two comparisons their light curves mirror each other: nothing to judge
        level = max(1.0, float(np.nanmedian(ratio)))
        worst = int(np.nanargmax(ratio))
        if not ratio[worst] > variable_ratio * level:
            break
        star = members.pop(worst)
        rejected[star] = (f"variable or noisy: scatter {scatter[worst]:.2e} is {ratio[worst]:.1f}x "
                          f"expected (ensemble median {level:.2f}x)")
        log.info("comparison %d rejected: %s", star, rejected[star])
    weights = np.zeros(norm.shape[1])
    weights[members] = w
    return members, weights, rejected, ratios


# ----------------------------------------------------------------------------- one aperture

@dataclass
class ApertureResult:
    """Differential photometry of one aperture (arrays have n_frames rows, n_stars columns)."""

    radius: float
    mode: str                      # 'ensemble', 'target-only' or 'skipped'
    note: str = ""
    diff_flux: np.ndarray = None
    diff_flux_err: np.ndarray = None
    ref_flux: np.ndarray = None
    flux_norm: np.ndarray = None
    flux_norm_err: np.ndarray = None
    star_lc: np.ndarray = None
    star_lc_err: np.ndarray = None
    outlier_flag: np.ndarray = None
    frame_flag: np.ndarray = None
    good_star_mask: np.ndarray = None
    comp_weight: np.ndarray = None
    rejected: dict = field(default_factory=dict)
    ratios: dict = field(default_factory=dict)

    @property
    def frame_ok(self):
        return self.frame_flag == 0

    @property
    def members(self):
        return [int(s) for s in np.flatnonzero(self.comp_weight > 0)]


def usable_measurements(phot):
    """(n_frames, n_stars) bool: finite positive flux and error, no unusable photometry flag."""
    with np.errstate(invalid="ignore"):
        return (np.isfinite(phot.flux) & (phot.flux > 0) & np.isfinite(phot.flux_err)
                & ((phot.flag & UNUSABLE_BITS) == 0))


def relative_errors(phot, params):
    """Relative 1-sigma error of each measurement: photometric error and scintillation in quadrature."""
    scint = prec.scintillation_variance(_airmass(phot), _exptime(phot), params["diameter_m"],
                                        params["altitude_m"], params["C_Y"], params["H_m"])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((phot.flux_err / phot.flux) ** 2 + scint[:, None])


def _airmass(phot):
    # Frames without an airmass get the night's median (scintillation is a small term).
    x = phot.airmass
    fill = np.nanmedian(x) if np.isfinite(x).any() else 1.0
    return np.where(np.isfinite(x), x, fill)


def _exptime(phot):
    t = phot.exptime
    fill = np.nanmedian(t) if np.isfinite(t).any() else 1.0
    return np.where(np.isfinite(t) & (t > 0), t, fill)


def _normalise(flux, valid, keep=None):
    use = valid if keep is None else valid & keep[:, None]
    with np.errstate(invalid="ignore"), _quiet():
        med = np.nanmedian(np.where(use, flux, np.nan), axis=0)
    return np.where(valid, flux, np.nan) / med, med


def candidate_comparisons(valid, allowed=None, max_bad_fraction=0.2):
    """Star indices (>= 1) usable as comparisons, and reasons for the others."""
    n_frames, n_stars = valid.shape
    allowed = range(1, n_stars) if allowed is None else [int(s) for s in allowed if 0 < int(s) < n_stars]
    good, rejected = [], {}
    for s in allowed:
        bad = 1.0 - valid[:, s].mean()
        if bad > max_bad_fraction:
            rejected[s] = f"unusable in {bad:.0%} of frames (flags/NaN)"
        else:
            good.append(s)
    return good, rejected


def differential_aperture(phot, params, settings=None):
    """Differential light curve of one aperture (steps 1-4 of the module docstring).

    Parameters
    ----------
    phot : Photometry
    params : dict
        Noise parameters from :func:`~bandersnake.analysis.precision.instrument_noise_params`.
    settings : dict, optional
        Keys of :data:`DEFAULT_SETTINGS`.

    Returns
    -------
    ApertureResult
    """
    cfg = merged_settings(settings)
    n, m = phot.flux.shape
    window, nsig = int(cfg["outlier_window"]), float(cfg["outlier_sigma"])
    valid = usable_measurements(phot)
    if not valid[:, 0].any():
        note = f"aperture {phot.radius:g} px skipped: target flux is NaN/unusable in every frame"
        log.warning("%s (%s)", note, phot.path)
        return ApertureResult(radius=phot.radius, mode="skipped", note=note)

    rel_err = relative_errors(phot, params)
    candidates, rejected = candidate_comparisons(valid, cfg["comparisons"], cfg["max_outlier_fraction"])
    norm, _ = _normalise(phot.flux, valid)

    # Common mode (clouds, extinction) = median of the comparisons; outliers are judged against it.
    with _quiet():
        common = np.nanmedian(norm[:, candidates], axis=1) if len(candidates) >= 2 else np.ones(n)
    rel = norm / common[:, None]
    outlier = np.zeros((n, m), dtype=bool)
    raw_outlier = np.zeros((n, m), dtype=bool)
    for s in [0] + candidates:
        outlier[:, s] = rolling_outliers(rel[:, s], window, nsig) | ~valid[:, s]
        raw_outlier[:, s] = rolling_outliers(norm[:, s], window, nsig) | ~valid[:, s]

    frame_flag = np.zeros(n, dtype=np.int32)
    frame_flag[~valid[:, 0]] |= FRAME_TARGET_UNUSABLE
    frame_flag[outlier[:, 0] & valid[:, 0]] |= FRAME_TARGET_OUTLIER
    if len(candidates) >= 2:
        frame_flag[raw_outlier[:, candidates].all(axis=1)] |= FRAME_ALL_COMPS_OUTLIERS
    keep = frame_flag == 0
    if keep.sum() < MIN_KEPT_FRAMES:  # the ensemble statistics below need a few frames
        note = (f"aperture {phot.radius:g} px skipped: only {int(keep.sum())} of {n} frames usable "
                f"(target unusable or an outlier in the others), at least {MIN_KEPT_FRAMES} needed")
        log.warning("%s (%s)", note, phot.path)
        return ApertureResult(radius=phot.radius, mode="skipped", note=note, frame_flag=frame_flag)

    # Comparisons flagged too often are not interpolated but dropped.
    for s in list(candidates):
        frac = outlier[keep, s].mean() if keep.any() else 1.0
        if frac > cfg["max_outlier_fraction"]:
            candidates.remove(s)
            rejected[s] = f"outlier in {frac:.0%} of kept frames"

    if len(candidates) < max(2, int(cfg["min_comparisons"])):
        return _target_only(phot, norm, rel_err, outlier, frame_flag, valid, rejected, cfg,
                            f"only {len(candidates)} usable comparison star(s)")

    # Interpolate isolated comparison outliers in the ratio to the common mode.
    clean = norm.copy()
    for s in candidates:
        bad = outlier[:, s] & keep
        if bad.any():
            ratio = np.where(outlier[:, s], np.nan, rel[:, s])
            clean[bad, s] = rolling_median(ratio, window)[bad] * common[bad]
    clean_err = np.where(outlier & keep[:, None] & np.isfinite(rel_err), np.nanmedian(rel_err, axis=0), rel_err)

    # Renormalise on kept frames so each comparison's median is exactly 1 there.
    with _quiet():
        clean = clean / np.nanmedian(clean[keep], axis=0)
    members, weights, rej, ratios = select_ensemble(
        clean[keep], clean_err[keep], candidates, cfg["variable_ratio"], cfg["min_comparisons"])
    rejected.update(rej)

    comp_norm = np.where(np.isfinite(clean), clean, np.nan)
    ref = weighted_reference(comp_norm[:, members], weights[members])
    var_ref = reference_variance(clean_err[:, members], weights[members])
    frame_flag[~np.isfinite(ref)] |= FRAME_NO_REFERENCE
    keep = frame_flag == 0

    raw = norm[:, 0] / ref
    diff = raw / np.nanmedian(raw[keep])
    diff_err = diff * np.sqrt(rel_err[:, 0] ** 2 + var_ref)
    second = rolling_outliers(np.where(keep, diff, np.nan), window, nsig)
    frame_flag[second] |= FRAME_DIFF_OUTLIER
    keep = frame_flag == 0

    star_lc, star_lc_err = _star_light_curves(norm, rel_err, clean, clean_err, members, weights, ref,
                                              var_ref, keep)
    good = np.zeros(m, dtype=bool)
    good[0] = True
    good[members] = True
    flux_norm, _ = _normalise(phot.flux, valid, keep)
    return ApertureResult(
        radius=phot.radius, mode="ensemble", diff_flux=diff, diff_flux_err=diff_err, ref_flux=ref,
        flux_norm=flux_norm, flux_norm_err=flux_norm * rel_err, star_lc=star_lc, star_lc_err=star_lc_err,
        outlier_flag=outlier, frame_flag=frame_flag, good_star_mask=good, comp_weight=weights,
        rejected=rejected, ratios=ratios,
        note=f"{len(members)} comparisons {members}; rejected {sorted(rejected)}")


def _star_light_curves(norm, rel_err, clean, clean_err, members, weights, ref, var_ref, keep):
    """Each star against the ensemble; an ensemble member against the ensemble of the others."""
    n, m = norm.shape
    lc = np.full((n, m), np.nan)
    err = np.full((n, m), np.nan)
    for s in range(m):
        if s in members:
            others = [k for k in members if k != s]
            r = weighted_reference(clean[:, others], weights[others])
            v = reference_variance(clean_err[:, others], weights[others])
        else:
            r, v = ref, var_ref
        with np.errstate(invalid="ignore", divide="ignore"), _quiet():
            y = norm[:, s] / r
            y = y / np.nanmedian(y[keep])
        lc[:, s] = y
        err[:, s] = np.abs(y) * np.sqrt(rel_err[:, s] ** 2 + v)
    return lc, err


def _target_only(phot, norm, rel_err, outlier, frame_flag, valid, rejected, cfg, why):
    note = (f"aperture {phot.radius:g} px: {why}, fewer than {max(2, int(cfg['min_comparisons']))} "
            f"needed; writing a target-only light curve (normalised target flux, no differential "
            f"correction of transparency or extinction)")
    log.warning("%s (%s)", note, phot.path)
    keep = frame_flag == 0
    second = rolling_outliers(np.where(keep, norm[:, 0], np.nan), int(cfg["outlier_window"]),
                              float(cfg["outlier_sigma"]))
    frame_flag[second] |= FRAME_DIFF_OUTLIER
    keep = frame_flag == 0
    flux_norm, _ = _normalise(phot.flux, valid, keep)
    m = phot.n_stars
    good = np.zeros(m, dtype=bool)
    good[0] = True
    return ApertureResult(
        radius=phot.radius, mode="target-only", note=note, diff_flux=flux_norm[:, 0],
        diff_flux_err=np.abs(flux_norm[:, 0]) * rel_err[:, 0], ref_flux=np.ones(phot.n_frames),
        flux_norm=flux_norm, flux_norm_err=np.abs(flux_norm) * rel_err, star_lc=flux_norm,
        star_lc_err=np.abs(flux_norm) * rel_err, outlier_flag=outlier, frame_flag=frame_flag,
        good_star_mask=good, comp_weight=np.zeros(m), rejected=rejected)


# ----------------------------------------------------------------------------- whole night

def target_precision(phot, result, window_min=10.0):
    """Observed 10-minute precision of the target's differential flux over kept frames."""
    if result.mode == "skipped":
        return np.nan
    ok = result.frame_ok
    return prec.rolling_precision(phot.bjd[ok], result.diff_flux[ok], window_min)


def point_to_point_precision(values):
    """Per-point scatter from successive differences: robust std of ``diff(values)`` / sqrt(2).

    The fallback criterion when no rolling window holds enough points (cadence longer than a
    quarter of the window): differences of neighbours cancel slow trends such as a transit.
    """
    y = np.asarray(values, dtype=float)
    y = y[np.isfinite(y)]
    return robust_std(np.diff(y)) / np.sqrt(2) if len(y) >= 4 else np.nan


def choose_best_aperture(radii, precisions, forced=None):
    """Radius with the smallest finite precision (or ``forced`` when it is one of ``radii``)."""
    radii = list(radii)
    if forced is not None and float(forced) in [float(r) for r in radii]:
        return float(forced)
    finite = [(p, r) for r, p in zip(radii, precisions) if np.isfinite(p)]
    if not finite:
        return None
    return float(min(finite)[1])


def target_flag_breakdown(phot):
    """Why the target's measurements are unusable: ``'off chip in 120/120 frames, ...'`` (star 0)."""
    n = phot.n_frames
    parts = [f"{name} in {int(c)}/{n} frames" for bit, name in FLAG_NAMES.items()
             if (c := ((phot.flag[:, 0] & bit) > 0).sum()) and bit & UNUSABLE_BITS]
    with np.errstate(invalid="ignore"):
        bad_flux = int((~(np.isfinite(phot.flux[:, 0]) & (phot.flux[:, 0] > 0))).sum())
    if bad_flux:
        parts.append(f"flux NaN or <= 0 in {bad_flux}/{n} frames")
    return ", ".join(parts) or "no photometry flag set"


def failure_reason(tables, results):
    """Why no aperture gives a light curve of at least :data:`MIN_KEPT_FRAMES` kept frames.

    Parameters
    ----------
    tables : list of Photometry
    results : list of ApertureResult
        In the same order.

    Returns
    -------
    str
        E.g. ``'target (star 0) unusable in every frame of every aperture (off chip in 40/40 frames)'``.
    """
    if tables[0].n_frames < MIN_KEPT_FRAMES:
        return f"only {tables[0].n_frames} frame(s) measured, at least {MIN_KEPT_FRAMES} needed"
    # Apertures skipped because the target is unusable in every frame have no frame flags.
    judged = [(t, r) for t, r in zip(tables, results) if r.frame_flag is not None]
    if not judged:
        return f"target (star 0) unusable in every frame of every aperture ({target_flag_breakdown(tables[0])})"
    t, r = max(judged, key=lambda tr: int((tr[1].frame_flag == 0).sum()))
    removed = [f"{meaning} {int(((r.frame_flag & bit) > 0).sum())}" for bit, meaning in FRAME_BITS.items()
               if ((r.frame_flag & bit) > 0).any()]
    why = (f"only {int(r.frame_ok.sum())} of {t.n_frames} frames left after rejection in the best aperture "
           f"(at least {MIN_KEPT_FRAMES} needed)")
    if removed:
        why += "; frames removed: " + ", ".join(removed)
    if ((r.frame_flag & FRAME_TARGET_UNUSABLE) > 0).any():
        why += f"; target: {target_flag_breakdown(t)}"
    return why


def load_night(phot_paths, centroid_path=None):
    """Read the photometry tables (sorted by radius) and fill frame columns from the centroids.

    Raises
    ------
    MissingProductError
        For the first missing file (names the rule that makes it).
    ProductError
        When tables disagree on frames or stars.
    """
    if not phot_paths:
        raise ProductError("photometry/", "no photometry_aper<N>.fits given; run the photometry rule first")
    tables = [read_photometry(p) for p in phot_paths]
    centroids = read_centroids(centroid_path) if centroid_path is not None else None
    tables.sort(key=lambda t: t.radius)
    first = tables[0]
    for t in tables[1:]:
        if t.flux.shape != first.flux.shape or not np.allclose(t.bjd, first.bjd, rtol=0, atol=1e-7):
            raise ProductError(t.path, f"frames/stars {t.flux.shape} differ from {first.path} {first.flux.shape}")
    for t in tables:
        fill_frame_columns(t, centroids)
    return tables, centroids


def run_differential(phot_paths, centroid_path, instrument, settings=None, out_dir=None,
                     read_noise_e=None, dark_e_per_s=None, night="", target="", calibration_skipped="none"):
    """Differential photometry and precision analysis of one (night, target).

    Writes ``differential.fits``, ``precision_metrics.fits`` and ``differential_summary.txt`` to
    ``out_dir`` (normally the ``photometry/`` folder of the target).

    Parameters
    ----------
    phot_paths : list of path
        ``photometry_aper<N>.fits`` files.
    centroid_path : path or None
        ``centroiding/centroids.fits`` (airmass, exposure time, JD_UTC when the photometry lacks them).
    instrument : dict
        Instrument file contents (``read_noise_e``, ``telescope_diameter_m``, ``site``,
        ``scintillation``).
    settings : dict, optional
        ``analysis_settings`` of the night (keys of :data:`DEFAULT_SETTINGS`).
    out_dir : path, optional
        Output folder; default: the folder of the first photometry file.
    read_noise_e, dark_e_per_s : float, optional
        Measured read noise (e-, RDNOISE of the master bias) and dark current (e-/s/px, DARKCUR
        of the master dark); override the instrument/settings values.
    night, target : str
        Recorded in headers and the summary.

    Returns
    -------
    dict
        ``best_aperture`` (px), ``criterion``, ``apertures`` ({radius: dict of mode, note,
        sigma_obs_10min, n_frames_used, comparisons, rejected}), ``skipped`` (list of notes),
        ``paths`` ({differential, metrics, summary}).
    """
    cfg = merged_settings(settings)
    try:
        tables, _ = load_night(phot_paths, centroid_path)
    except EmptyTableError as err:
        raise AnalysisNotPossible(f"no frame was measured ({err.path} has no rows)", target, night) from None
    out_dir = Path(out_dir) if out_dir is not None else Path(phot_paths[0]).parent
    params = prec.instrument_noise_params(
        instrument,
        read_noise_e if read_noise_e is not None else cfg["read_noise_e"],
        dark_e_per_s if dark_e_per_s is not None else cfg["dark_e_per_s"])
    # Skipped calibrations (calibration_params.skip): a skipped bias leaves the read noise at the
    # instrument's figure, a skipped dark leaves dark current in the sky level (sky noise term),
    # a skipped flat leaves pixel-response errors out of the model. Said in the products' headers.
    params["calibration_skipped"] = calibration_skipped or "none"
    results = [differential_aperture(t, params, cfg) for t in tables]
    usable = [r.mode != "skipped" and int(r.frame_ok.sum()) >= MIN_KEPT_FRAMES for r in results]
    if not any(usable):
        raise AnalysisNotPossible(failure_reason(tables, results), target, night)
    sig = [target_precision(t, r, cfg["precision_window_min"]) if u else np.nan
           for t, r, u in zip(tables, results, usable)]
    radii = [t.radius for t, u in zip(tables, usable) if u]
    forced = cfg["best_aperture"]
    if forced is not None and float(forced) not in radii:
        log.warning("analysis_settings.best_aperture %g px gives no usable light curve: choosing by precision",
                    float(forced))
    best = choose_best_aperture(radii, [s for s, u in zip(sig, usable) if u], forced)
    criterion = ("forced by analysis_settings.best_aperture" if forced is not None and float(forced) == best else
                 f"smallest observed {cfg['precision_window_min']:g}-min rolling precision of the target's "
                 f"differential flux (transit-robust)")
    if best is None:
        # No window holds 4 points (cadence > window / 4): neighbours' differences still measure
        # the scatter, as robustly against a transit.
        p2p = [point_to_point_precision(r.diff_flux[r.frame_ok]) for r, u in zip(results, usable) if u]
        best = choose_best_aperture(radii, p2p)
        criterion = "smallest point-to-point scatter of the target's differential flux (long cadence)"
    if best is None:
        raise AnalysisNotPossible("no aperture gives a measurable scatter of the target's light curve",
                                  target, night)
    log.info("best aperture %g px (%s)", best, criterion)

    diff_path = out_dir / "differential.fits"
    write_differential(diff_path, tables, results, best, criterion, params, night, target)
    metrics_path, summary_path = prec.write_precision_products(out_dir, tables, results, best, criterion,
                                                               params, cfg, night, target)
    apertures = {}
    for t, r, s in zip(tables, results, sig):
        apertures[t.radius] = {
            "mode": r.mode, "note": r.note, "sigma_obs_10min": s,
            "n_frames_used": int(r.frame_ok.sum()) if r.mode != "skipped" else 0,
            "comparisons": r.members if r.mode != "skipped" else [],
            "rejected": dict(r.rejected),
        }
    return {
        "best_aperture": best, "criterion": criterion, "apertures": apertures,
        "skipped": [r.note for r in results if r.mode == "skipped"],
        "paths": {"differential": diff_path, "metrics": metrics_path, "summary": summary_path},
    }


def write_differential(path, tables, results, best, criterion, params, night="", target=""):
    """Write ``differential.fits`` (layout in the module docstring)."""
    primary = fits.PrimaryHDU()
    h = primary.header
    h["BESTAPER"] = (best, "best aperture radius (px)")
    h["BESTCRIT"] = criterion[:68]  # best-aperture criterion (no room for a comment)
    status_cards(h, STATUS_OK)
    h["NIGHT"] = night
    h["TARGET"] = target
    h["NAPER"] = (len(tables), "apertures analysed")
    h["RDNOISE"] = (params["read_noise_e"], "read noise used (e-)")
    h["DARKCUR"] = (params["dark_e_per_s"], "dark current used (e-/s/px)")
    h["CALSKIP"] = (params.get("calibration_skipped", "none"), "calibrations skipped (noise model)")
    h["SCINT_CY"] = (params["C_Y"], "Osborn et al. 2015 C_Y")
    h["CREATOR"] = f"bandersnake {__version__} analysis.differential"
    for t in tables:
        h.add_history(f"input {t.path}")
    hdus = [primary]
    for t, r in zip(tables, results):
        if r.mode == "skipped":
            h.add_history(r.note[:70])
            hdus.append(_skipped_hdu(t, r))
            continue
        hdus.append(_aperture_hdu(t, r, best))
    write_fits(fits.HDUList(hdus), path)
    return path


def _aperture_hdu(t, r, best):
    n, m = t.flux.shape
    cols = [
        fits.Column("BJD_TDB", "D", unit="d", array=t.bjd),
        fits.Column("JD_UTC", "D", unit="d", array=t.jd_utc),
        fits.Column("File", f"A{max(1, max(len(f) for f in t.files))}", array=np.array(t.files)),
        fits.Column("airmass", "E", array=t.airmass),
        fits.Column("exptime", "E", unit="s", array=t.exptime),
        fits.Column("diff_flux", "D", array=r.diff_flux),
        fits.Column("diff_flux_err", "D", array=r.diff_flux_err),
        fits.Column("ref_flux", "D", array=r.ref_flux),
        fits.Column("flux_norm", f"{m}D", array=r.flux_norm),
        fits.Column("flux_norm_err", f"{m}D", array=r.flux_norm_err),
        fits.Column("star_lc", f"{m}D", array=r.star_lc),
        fits.Column("star_lc_err", f"{m}D", array=r.star_lc_err),
        fits.Column("outlier_flag", f"{m}L", array=r.outlier_flag),
        fits.Column("frame_flag", "J", array=r.frame_flag),
        fits.Column("frame_ok", "L", array=r.frame_ok),
        fits.Column("good_star_mask", f"{m}L", array=np.tile(r.good_star_mask, (n, 1))),
        fits.Column("comp_weight", f"{m}E", array=np.tile(r.comp_weight, (n, 1))),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name=f"APER{int(round(t.radius))}")
    h = hdu.header
    h["APERRAD"] = (t.radius, "aperture radius (px)")
    h["COMPMODE"] = (r.mode, "ensemble or target-only")
    h["NCOMP"] = (len(r.members), "comparison stars in the ensemble")
    h["COMPSTAR"] = (",".join(str(s) for s in r.members), "ensemble star indices")
    h["ISBEST"] = (bool(float(t.radius) == float(best)), "this is the best aperture")
    h["NKEPT"] = (int(r.frame_ok.sum()), "frames kept (frame_ok)")
    h["SOURCE"] = Path(t.path).name
    for s, why in sorted(r.rejected.items()):
        h.add_history(f"star {s} not used: {why}"[:70])
    if r.note:
        h.add_comment(r.note[:70])
    for bit, meaning in FRAME_BITS.items():
        h.add_comment(f"frame_flag {bit}: {meaning}")
    return hdu


def _skipped_hdu(t, r):
    hdu = fits.BinTableHDU.from_columns([fits.Column("BJD_TDB", "D", unit="d", array=np.zeros(0))],
                                        name=f"APER{int(round(t.radius))}")
    hdu.header["APERRAD"] = t.radius
    hdu.header["COMPMODE"] = "skipped"
    hdu.header.add_comment(r.note[:70])
    return hdu


def read_differential(path, radius=None):
    """Read one aperture of ``differential.fits`` (default: the best) as a dict of arrays.

    Returns
    -------
    dict
        The table's columns plus ``_header`` (extension header) and ``_best`` (best radius).

    Raises
    ------
    MissingProductError
        When the file is missing (names the differential rule).
    ProductError
        When the aperture is absent or was skipped.
    AnalysisNotPossible
        When the product records a failed analysis (``ANASTAT = 'FAILED'``), with its reason.
    """
    from .io import MissingProductError

    path = Path(path)
    if not path.exists():
        raise MissingProductError(path, "differential")
    raise_if_failed(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            best = float(hdul[0].header["BESTAPER"])
            r = best if radius is None else float(radius)
            name = f"APER{int(round(r))}"
            if name not in hdul:
                raise ProductError(path, f"no extension {name}")
            hdu = hdul[name]
            if hdu.header.get("COMPMODE") == "skipped":
                raise ProductError(path, f"aperture {r:g} px was skipped: {hdu.header.get('COMMENT', '')}")
            out = {c: np.array(hdu.data[c]) for c in hdu.data.names}
            for c in STAR_COLUMNS:
                if c in out and out[c].ndim == 1:
                    out[c] = out[c][:, None]  # one star: FITS gives scalars, callers index [frame, star]
            out["_header"] = hdu.header.copy()
            out["_best"] = best
            out["_primary"] = hdul[0].header.copy()
    except (ProductError, KeyError) as err:
        if isinstance(err, KeyError):
            raise ProductError(path, "no BESTAPER keyword: not a differential.fits product") from None
        raise
    except Exception as err:
        raise ProductError(path, f"unreadable ({type(err).__name__}: {err})") from None
    return out


def aperture_radii(path):
    """Radii (px) of the non-skipped apertures in ``differential.fits``."""
    with fits.open(path, memmap=False) as hdul:
        return [float(h.header["APERRAD"]) for h in hdul[1:] if h.header.get("COMPMODE") != "skipped"]
