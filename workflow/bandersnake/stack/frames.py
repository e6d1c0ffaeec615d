"""Which calibrated frames go into a stack, and how each is aligned to the others.

A stack group is one object, filter and binning of a night (POTPyRI's TargType). Each frame of the
group is read once for its header and bright stars; it is left out, with the reason recorded in
the group's frame table, when:

* it has no celestial WCS (neither our plate solution, ``ASTROSTA = 'solved'``, nor, when
  ``use_header_wcs`` is on, one the acquisition software wrote, e.g. PinPoint's);
* its plate-solution residual ``WCSRMSPX`` exceeds ``max_wcs_rms_px``;
* its binning or pixel scale differs from the group's (most common binning; scale within 5 %);
* too few stars are found to measure it (cloudy, trailed);
* its seeing (median FWHM of its bright stars) exceeds ``max_fwhm_factor`` times the group's
  median, or ``max_fwhm_arcsec``;
* its alignment to the reference frame is poor (fewer than 3 matched stars, or residual RMS above
  ``max_align_rms_px``).

Alignment refines each frame's WCS relative to a reference frame (the best-seeing accepted one),
as POTPyRI's fine alignment does against Gaia: the reference's bright stars, projected through
the frame's WCS, are matched to the frame's own stars and an affine correction of the frame's
pixel coordinates is fitted (least squares, 3-sigma clipped). Its residuals in RA and Dec give the
frame's RADISP / DEDISP (arcsec).
"""

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning

from ..calibration.mef import read_calibrated
from ..errors import FrameError
from . import stars as S
from .grid import frame_center, pixel_scale_arcsec

log = logging.getLogger(__name__)


@dataclass
class FrameInfo:
    """One calibrated frame of a stack group and what was decided about it."""

    path: str
    object: str = ""
    filter: str = ""
    binning: str = "1x1"
    exptime: float = math.nan           # s
    jd_mid: float = math.nan            # JD (UTC) at mid-exposure
    shape: tuple = (0, 0)
    wcs: WCS | None = None
    wcs_source: str = "none"            # 'solved' (ASTROSTA) / 'header' / 'none'
    wcs_rms_px: float = math.nan
    scale_arcsec: float = math.nan
    fwhm_px: float = math.nan
    n_stars: int = 0
    sky_e: float = math.nan              # sky level (e-/px)
    stars_xy: np.ndarray | None = None   # bright stars (x, y) px, brightest first
    affine: tuple | None = None          # (A 2x2, t 2): true input px = A @ wcs-predicted px + t
    n_align: int = 0
    align_rms_px: float = math.nan
    radisp: float = math.nan             # arcsec
    dedisp: float = math.nan             # arcsec
    status: str = "ok"
    reason: str = ""
    weight: float = 0.0
    extra: dict = field(default_factory=dict)

    def reject(self, reason):
        if self.status == "ok":
            self.status, self.reason = "rejected", reason


def _celestial_wcs(header):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FITSFixedWarning, AstropyUserWarning, VerifyWarning))
        try:
            w = WCS(header, naxis=2)
        except Exception:  # a broken WCS header is "no WCS", recorded by the caller
            return None
    if not w.has_celestial or w.celestial.wcs.ctype[0][:4] != "RA--":
        return None
    return w.celestial


def _binning(header):
    bx = header.get("XBINNING", header.get("CCDXBIN", header.get("BINX", 1)))
    by = header.get("YBINNING", header.get("CCDYBIN", header.get("BINY", bx)))
    try:
        return f"{int(bx)}x{int(by)}"
    except (TypeError, ValueError):
        return str(header.get("CCDSUM", "1 1")).strip().replace(" ", "x")


def read_frame_info(path, instrument=None, use_header_wcs=True, fwhm_guess_px=3.0, nsigma=5.0,
                    max_stars=80):
    """Header facts and bright stars of one calibrated frame.

    Parameters
    ----------
    path : str
    instrument : dict, optional
        Instrument configuration (keywords, ``date_obs_is``); defaults: FITS standard names.
    use_header_wcs : bool
        Accept a WCS written by the acquisition software when the frame was not solved by us.
    fwhm_guess_px : float
    nsigma : float
        Detection threshold (sky sigma) of the bright stars.
    max_stars : int

    Returns
    -------
    FrameInfo
        With status 'rejected' and the reason when it cannot be used (an unreadable file too).
    """
    from ..ingest.timing import jd_mid_utc

    info = FrameInfo(path=str(path))
    instrument = instrument or {}
    kw = instrument.get("keywords") or {}
    try:
        cal = read_calibrated(path)
    except FrameError as err:
        info.reject(err.reason)
        return info
    hdr = cal.primary.copy()
    for card in cal.sci_header.cards:
        if card.keyword not in hdr and card.keyword not in ("XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2",
                                                           "PCOUNT", "GCOUNT", "EXTNAME"):
            hdr.append(card)
    info.object = str(hdr.get(kw.get("object") or "OBJECT", ""))
    info.filter = str(hdr.get(kw.get("filter") or "FILTER", ""))
    info.binning = _binning(hdr)
    info.shape = cal.sci.shape
    try:
        info.exptime = float(hdr.get(kw.get("exptime") or "EXPTIME", math.nan))
    except (TypeError, ValueError):
        info.exptime = math.nan
    info.jd_mid = jd_mid_utc(hdr, instrument, info.exptime if math.isfinite(info.exptime) else 0.0)
    status = str(cal.primary.get("ASTROSTA", ""))
    wcs = _celestial_wcs(cal.sci_header) or _celestial_wcs(cal.primary)
    if wcs is not None and status == "solved":
        info.wcs_source = "solved"
    elif wcs is not None and use_header_wcs and status != "solved":
        info.wcs_source = "header"
    else:
        wcs = None
    info.wcs = wcs
    info.wcs_rms_px = float(hdr.get("WCSRMSPX", math.nan))
    if not (math.isfinite(info.exptime) and info.exptime > 0):
        info.reject(f"no usable exposure time ({hdr.get('EXPTIME')!r})")
    if wcs is None:
        msg = str(cal.primary.get("ASTROMSG", "")).strip()
        info.reject("no WCS" + (f" (ASTROSTA={status}{': ' + msg if msg else ''})" if status else ""))
        return info
    info.scale_arcsec = pixel_scale_arcsec(wcs)
    sky, _ = S.sky_stats(cal.sci, cal.mask)
    info.sky_e = sky
    found = S.find_bright_stars(cal.sci, cal.mask, fwhm_px=fwhm_guess_px, nsigma=nsigma, max_stars=max_stars)
    info.n_stars = len(found)
    if len(found):
        xc, yc = S.refine_centroids(cal.sci, np.asarray(found["x"]), np.asarray(found["y"]), fwhm_guess_px, sky)
        ok = np.isfinite(xc) & np.isfinite(yc) & (np.hypot(xc - found["x"], yc - found["y"]) < 1.5)
        info.stars_xy = np.column_stack([xc[ok], yc[ok]])
        info.fwhm_px = S.measure_fwhm(cal.sci, xc[ok][:30], yc[ok][:30], fwhm_guess_px, sky)
    return info


def judge_group(infos, settings):
    """Reject the frames of a group that do not meet the quality criteria (in place).

    Parameters
    ----------
    infos : list of FrameInfo
    settings : dict
        ``max_wcs_rms_px``, ``max_fwhm_factor``, ``max_fwhm_arcsec`` (None: off),
        ``min_stars``.

    Returns
    -------
    int or None
        Index of the reference frame (smallest FWHM among the accepted ones), None if none left.
    """
    ok = [f for f in infos if f.status == "ok"]
    if ok:
        common = Counter(f.binning for f in ok).most_common(1)[0][0]
        for f in ok:
            if f.binning != common:
                f.reject(f"binning {f.binning} differs from the group's {common}")
    max_rms = settings.get("max_wcs_rms_px")
    for f in infos:
        if f.status == "ok" and max_rms is not None and math.isfinite(f.wcs_rms_px) and f.wcs_rms_px > max_rms:
            f.reject(f"plate-solution residual {f.wcs_rms_px:.2f} px > max_wcs_rms_px {max_rms}")
    ok = [f for f in infos if f.status == "ok"]
    if ok:
        scale = float(np.median([f.scale_arcsec for f in ok]))
        for f in ok:
            if abs(f.scale_arcsec / scale - 1) > 0.05:
                f.reject(f"pixel scale {f.scale_arcsec:.3f}\"/px differs from the group's {scale:.3f}\"/px by > 5 %")
    min_stars = int(settings.get("min_stars", 3))
    for f in infos:
        if f.status == "ok" and (f.stars_xy is None or len(f.stars_xy) < min_stars or not math.isfinite(f.fwhm_px)):
            n = 0 if f.stars_xy is None else len(f.stars_xy)
            f.reject(f"only {n} measurable stars (< min_stars {min_stars}): clouds, trailing or no WCS field")
    ok = [f for f in infos if f.status == "ok"]
    if ok:
        med = float(np.median([f.fwhm_px for f in ok]))
        factor = settings.get("max_fwhm_factor")
        limit_as = settings.get("max_fwhm_arcsec")
        for f in ok:
            if factor is not None and f.fwhm_px > factor * med:
                f.reject(f"seeing: FWHM {f.fwhm_px:.2f} px > {factor} x group median {med:.2f} px")
            elif limit_as is not None and f.fwhm_px * f.scale_arcsec > limit_as:
                f.reject(f"seeing: FWHM {f.fwhm_px * f.scale_arcsec:.2f}\" > max_fwhm_arcsec {limit_as}")
    ok = [i for i, f in enumerate(infos) if f.status == "ok"]
    if not ok:
        return None
    return min(ok, key=lambda i: (infos[i].fwhm_px, -infos[i].n_stars))


def _fit_similarity(pred, meas, clip=3.0, iterations=3):
    """Shift, rotation and scale ``meas = A @ pred + t`` (A = [[a, -b], [b, a]]), sigma-clipped.

    Returns as :func:`_fit_affine`.
    """
    used = np.ones(len(pred), bool)
    for _ in range(iterations):
        x, y = pred[used, 0], pred[used, 1]
        n = used.sum()
        G = np.zeros((2 * n, 4))
        G[:n] = np.column_stack([x, -y, np.ones(n), np.zeros(n)])
        G[n:] = np.column_stack([y, x, np.zeros(n), np.ones(n)])
        rhs = np.r_[meas[used, 0], meas[used, 1]]
        a, b, tx, ty = np.linalg.lstsq(G, rhs, rcond=None)[0]
        A, t = np.array([[a, -b], [b, a]]), np.array([tx, ty])
        res = meas - (pred @ A.T + t)
        r = np.hypot(res[:, 0], res[:, 1])
        rms = np.sqrt(np.mean(r[used] ** 2))
        new = r <= max(clip * rms, 0.05)
        if new.sum() < 3 or np.array_equal(new, used):
            break
        used = new
    return A, t, used, res


def _fit_affine(pred, meas, clip=3.0, iterations=3):
    """Least-squares affine map ``meas = A @ pred + t`` (N x 2 arrays), sigma-clipped.

    Returns
    -------
    A, t, used (bool array), residuals (N x 2, meas - model)
    """
    used = np.ones(len(pred), bool)
    for _ in range(iterations):
        P = np.column_stack([pred[used], np.ones(used.sum())])
        coef, *_ = np.linalg.lstsq(P, meas[used], rcond=None)
        model = np.column_stack([pred, np.ones(len(pred))]) @ coef
        res = meas - model
        r = np.hypot(res[:, 0], res[:, 1])
        rms = np.sqrt(np.mean(r[used] ** 2)) if used.any() else np.inf
        new = r <= max(clip * rms, 0.05)
        if new.sum() < 3 or np.array_equal(new, used):
            break
        used = new
    A, t = coef[:2].T, coef[2]
    return A, t, used, res


def align_to_reference(infos, ref_index, match_radius_px=3.0, max_align_rms_px=0.5, affine=True):
    """Fit each accepted frame's pixel correction relative to the reference frame (in place).

    The reference's bright stars (sky positions through its WCS) are projected through each
    frame's WCS and matched to the frame's stars within ``match_radius_px``. ``affine=False``
    fits a shift only.

    Sets ``affine``, ``n_align``, ``align_rms_px``, ``radisp``/``dedisp`` (arcsec, RMS of the
    residuals in RA and Dec) on every accepted frame; rejects frames that cannot be aligned.
    """
    ref = infos[ref_index]
    ref_ra, ref_dec = ref.wcs.all_pix2world(ref.stars_xy[:, 0], ref.stars_xy[:, 1], 0)
    for f in infos:
        if f.status != "ok":
            continue
        if f is ref:
            f.affine, f.n_align, f.align_rms_px, f.radisp, f.dedisp = (np.eye(2), np.zeros(2)), len(ref.stars_xy), \
                0.0, 0.0, 0.0
            continue
        px, py = f.wcs.all_world2pix(ref_ra, ref_dec, 0)
        pred = np.column_stack([px, py])
        # A global offset larger than the match radius (a poor WCS) is found first from all pairs.
        dx = (f.stars_xy[None, :, 0] - pred[:, None, 0]).ravel()
        dy = (f.stars_xy[None, :, 1] - pred[:, None, 1]).ravel()
        near = np.hypot(dx, dy) < 30.0
        shift = np.zeros(2)
        if near.sum() >= 3:
            h, xe, ye = np.histogram2d(dx[near], dy[near], bins=30, range=[[-30, 30], [-30, 30]])
            iy = np.unravel_index(np.argmax(h), h.shape)
            if h[iy] >= 3:
                shift = np.array([(xe[iy[0]] + xe[iy[0] + 1]) / 2, (ye[iy[1]] + ye[iy[1] + 1]) / 2])
        d = np.hypot(pred[:, None, 0] + shift[0] - f.stars_xy[None, :, 0],
                     pred[:, None, 1] + shift[1] - f.stars_xy[None, :, 1])
        j = np.argmin(d, axis=1)
        m = d[np.arange(len(pred)), j] < match_radius_px
        # One-to-one: keep the closest reference star for each frame star.
        pairs = {}
        for i in np.nonzero(m)[0]:
            if j[i] not in pairs or d[i, j[i]] < d[pairs[j[i]], j[i]]:
                pairs[j[i]] = i
        ii = np.array(list(pairs.values()), int)
        jj = np.array(list(pairs.keys()), int)
        if len(ii) < 3:
            f.reject(f"alignment: only {len(ii)} stars matched to the reference frame (< 3)")
            continue
        P, M = pred[ii], f.stars_xy[jj]
        # Shift first, robustly (median, MAD clipping): a wrong match among few stars must not
        # pull the solution; then an affine fit on the kept pairs when there are enough of them.
        used = np.ones(len(P), bool)
        for _ in range(5):
            t = np.median(M[used] - P[used], axis=0)
            r = np.hypot(*(M - P - t).T)
            mad = 1.4826 * np.median(np.abs(r[used] - np.median(r[used])))
            new = r <= max(3 * (np.median(r[used]) + mad), 0.3)
            if new.sum() < 3 or np.array_equal(new, used):
                break
            used = new
        A, res = np.eye(2), M - (P + t)
        if affine and used.sum() >= 4:
            # Affine (6 parameters) from 10 pairs; shift, rotation and scale (4) from 4 to 9:
            # the acquisition software's WCSs differ in scale by ~0.2 % (ARCSAT's PinPoint), i.e.
            # ~1 px across the chip, which a shift alone leaves in the residuals.
            fit = _fit_affine if used.sum() >= 10 else _fit_similarity
            A, t, used_aff, res = fit(P[used], M[used])
            full = np.zeros(len(P), bool)
            full[np.nonzero(used)[0][used_aff]] = True
            res_all = M - (P @ A.T + t)
            used = full
            res = res_all
        f.affine = (A, t)
        f.n_align = int(used.sum())
        r = res[used]
        f.align_rms_px = float(np.sqrt(np.mean(np.sum(r ** 2, axis=1)))) if len(r) else math.nan
        # Residuals on the sky: through the local CD matrix of the frame.
        cd = f.wcs.pixel_scale_matrix * 3600.0
        sky = r @ cd.T
        f.radisp = float(np.sqrt(np.mean(sky[:, 0] ** 2))) if len(sky) else math.nan
        f.dedisp = float(np.sqrt(np.mean(sky[:, 1] ** 2))) if len(sky) else math.nan
        if not f.align_rms_px <= max_align_rms_px:
            f.reject(f"alignment residual {f.align_rms_px:.3f} px > max_align_rms_px {max_align_rms_px}")


FRAME_COLUMNS = ("file", "status", "reason", "object", "filter", "binning", "exptime", "jd_mid", "wcs_source",
                 "wcs_rms_px", "scale_arcsec", "fwhm_px", "n_stars", "n_align", "align_rms_px", "radisp", "dedisp",
                 "weight", "sky_e")


def frame_table(infos):
    """One row per frame of the group: decisions, reasons and measurements (units in ``unit``)."""
    from pathlib import Path

    rows = [(Path(f.path).name, f.status, f.reason, f.object, f.filter, f.binning, f.exptime, f.jd_mid,
             f.wcs_source, f.wcs_rms_px, f.scale_arcsec, f.fwhm_px, f.n_stars, f.n_align, f.align_rms_px,
             f.radisp, f.dedisp, f.weight, f.sky_e) for f in infos]
    dtypes = ("U256", "U8", "U300", "U64", "U32", "U8", "f8", "f8", "U8", "f8", "f8", "f8", "i4", "i4", "f8",
              "f8", "f8", "f8", "f8")
    t = Table(rows=rows or None, names=FRAME_COLUMNS, dtype=dtypes)
    for col, unit in (("exptime", "s"), ("jd_mid", "d"), ("wcs_rms_px", "pix"), ("scale_arcsec", "arcsec / pix"),
                      ("fwhm_px", "pix"), ("align_rms_px", "pix"), ("radisp", "arcsec"), ("dedisp", "arcsec"),
                      ("sky_e", "electron / pix")):
        t[col].unit = unit
    return t


def group_centre(infos):
    """Mean sky position (deg) of the centres of the accepted frames."""
    from .grid import mean_center

    return mean_center([frame_center(f.wcs, f.shape) for f in infos if f.status == "ok"])
