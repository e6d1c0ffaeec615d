"""Stack of one group (object, filter, binning): select, align, resample, combine, write.

Product of :func:`stack_group` (the image part of ``<TARGET>_<FILTER>_stk.fits``, see
docs/ARCHITECTURE.md): primary header with the stack's facts, ``SCI`` (e-/s), ``ERR`` (1-sigma
e-/s), ``MASK`` (uint8 bits 1 bad/no data, 2 cosmic ray left out, 4 saturated, 8 grown) and
``NCOMB`` (frames used per pixel), all with the grid's WCS; plus the group's frame table
(one row per frame: accepted or the reason it was left out).
"""

import logging
import math
from pathlib import Path

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.time import Time

from ..calibration.mef import read_calibrated
from ..errors import BandersnakeError, FrameError
from ..fitsio import atomic_path, write_fits
from . import combine as C
from . import frames as F
from . import grid as G

log = logging.getLogger(__name__)

DEFAULTS = dict(method="mean", clip_sigma=3.0, interpolation="bicubic", fieldcenter=None, out_size=None,
                pixel_scale_arcsec=None, use_header_wcs=True, max_wcs_rms_px=1.5, max_fwhm_factor=1.5,
                max_fwhm_arcsec=None, min_stars=3, max_align_rms_px=0.5, align="affine", grow=1,
                fwhm_guess_px=3.0, min_frames=1)


class NoStack(BandersnakeError):
    """The frames of a group allow no stack (none usable); ``reason`` says why."""

    def __init__(self, reason):
        self.reason = str(reason)
        super().__init__(self.reason)


def parse_fieldcenter(value):
    """``[ra, dec]`` in degrees or sexagesimal strings (``['10:00:00', '+20:00:00']``) -> degrees, or None."""
    if value is None:
        return None
    ra, dec = value
    if isinstance(ra, str) and ":" in ra:
        c = SkyCoord(ra, dec, unit=("hourangle", "deg"))
    else:
        c = SkyCoord(float(ra), float(dec), unit="deg")
    return float(c.ra.deg), float(c.dec.deg)


def output_grid(infos, settings):
    """TAN grid of a group: ``fieldcenter`` or the mean frame centre; ``out_size`` or the union footprint.

    Returns
    -------
    wcs, shape
    """
    ok = [f for f in infos if f.status == "ok"]
    centre = parse_fieldcenter(settings.get("fieldcenter")) or F.group_centre(infos)
    scale = settings.get("pixel_scale_arcsec") or float(np.median([f.scale_arcsec for f in ok]))
    size = settings.get("out_size")
    if size:
        nx, ny = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
        shape = (ny, nx)
        wcs = G.tangent_grid(centre[0], centre[1], scale, shape)
    else:
        probe = G.tangent_grid(centre[0], centre[1], scale, (1, 1))
        shape = G.footprint_shape([f.wcs for f in ok], [f.shape for f in ok], probe)
        wcs = G.tangent_grid(centre[0], centre[1], scale, shape)
    return wcs, shape


def select_frames(paths, settings, instrument=None):
    """Read, judge and align the frames of a group.

    Returns
    -------
    infos : list of FrameInfo
    ref : int or None
        Index of the reference frame.
    """
    s = dict(DEFAULTS, **(settings or {}))
    infos = [F.read_frame_info(p, instrument, use_header_wcs=s["use_header_wcs"], fwhm_guess_px=s["fwhm_guess_px"])
             for p in paths]
    ref = F.judge_group(infos, s)
    if ref is not None:
        F.align_to_reference(infos, ref, max_align_rms_px=s["max_align_rms_px"], affine=s["align"] == "affine")
    for f in infos:
        if f.status != "ok":
            log.warning("frame left out of the stack: %s: %s", Path(f.path).name, f.reason)
    return infos, ref


def stack_frames(infos, out_path, settings, memory_mb=1024, header_extra=None):
    """Resample the accepted frames onto the group grid, combine them and write the stack image.

    Parameters
    ----------
    infos : list of FrameInfo
        From :func:`select_frames`.
    out_path : str or Path
        Stack image (SCI/ERR/MASK/NCOMB).
    settings : dict
        Stack settings (:data:`DEFAULTS` keys).
    memory_mb : float
        Memory bound of the combination (MiB).
    header_extra : dict, optional
        Cards for the primary header.

    Returns
    -------
    astropy.io.fits.Header
        The primary header written.
    """
    s = dict(DEFAULTS, **(settings or {}))
    ok = [f for f in infos if f.status == "ok"]
    if len(ok) < max(1, int(s["min_frames"])):
        reasons = "; ".join(sorted({f.reason for f in infos if f.reason}))
        raise NoStack(f"{len(ok)} usable frame(s) of {len(infos)} (< min_frames {s['min_frames']}): {reasons}")
    wcs, shape = output_grid(infos, s)
    log.info("stack grid %dx%d px at %.4f\"/px centred on %s", shape[1], shape[0], G.pixel_scale_arcsec(wcs),
             wcs.wcs.crval)
    used = []
    with C.FrameCube(len(ok), shape, C.scratch_dir_for(out_path)) as cube:
        for i, f in enumerate(ok):
            try:
                cal = read_calibrated(f.path)
            except FrameError as err:
                f.reject(err.reason)
                continue
            t = f.exptime
            err = cal.err if cal.err is not None else np.sqrt(np.maximum(cal.sci, 0) + 1.0)
            sci, var, mask = G.resample_frame(cal.sci / t, (err / t) ** 2, cal.mask, f.wcs, wcs, shape,
                                              order=s["interpolation"], affine=f.affine)
            cube.put(i, sci, var, mask)
            f.weight = float(cube.weights[i])
            used.append(f)
        sci, err, mask, ncomb = C.combine_cube(cube, s["method"], s["clip_sigma"], memory_mb, s["grow"])
    hdr = stack_header(used, wcs, s, header_extra)
    hdul = image_hdul(hdr, wcs, sci, err, mask, ncomb)
    write_fits(hdul, out_path)
    log.info("stack of %d frames (%.0f s) written to %s", len(used), hdr["EXPTIME"], out_path)
    return hdr


def image_hdul(primary_header, wcs, sci, err, mask, ncomb=None):
    """HDUList of a stack image: primary header, SCI (e-/s), ERR (e-/s), MASK, NCOMB with the grid WCS."""
    wh = wcs.to_header(relax=True)
    hdus = [fits.PrimaryHDU(header=primary_header)]
    for name, arr, unit, comment in (("SCI", sci, "electron/s", "stacked rate"),
                                     ("ERR", err, "electron/s", "1-sigma uncertainty of SCI"),
                                     ("MASK", mask, None, "bits: 1 bad/no data, 2 cosmic ray left out in a "
                                                          "frame, 4 saturated in a frame, 8 near bad"),
                                     ("NCOMB", ncomb, None, "frames combined per pixel")):
        if arr is None:
            continue
        h = fits.ImageHDU(arr, name=name)
        h.header.update(wh)
        if unit:
            h.header["BUNIT"] = unit
        h.header["COMMENT"] = comment
        hdus.append(h)
    return fits.HDUList(hdus)


def stack_header(used, wcs, s, extra=None):
    """Primary header of a stack: counts, total exposure, times, alignment dispersion, method."""
    h = fits.Header()
    h.update(wcs.to_header(relax=True))
    first = used[0]
    h["OBJECT"] = (first.object, "object of the stacked frames")
    h["FILTER"] = (first.filter, "filter")
    h["BINNING"] = (first.binning, "binning of the stacked frames")
    h["BUNIT"] = ("electron/s", "SCI and ERR in e-/s")
    h["NCOMBINE"] = (len(used), "frames combined")
    texp = float(sum(f.exptime for f in used))
    h["EXPTIME"] = (texp, "[s] total exposure time of the combined frames")
    jd = np.array([f.jd_mid for f in used])
    w = np.array([f.exptime for f in used])
    if np.isfinite(jd).all() and len(jd):
        jd_mid = float(np.sum(jd * w) / np.sum(w))
        t = Time(jd_mid, format="jd", scale="utc")
        h["JD-MID"] = (jd_mid, "[d] exposure-weighted mid-time, JD UTC")
        h["MJD-MID"] = (jd_mid - 2400000.5, "[d] exposure-weighted mid-time, MJD UTC")
        h["DATE-MID"] = (t.isot, "[UTC] exposure-weighted mid-time")
        h["MJD-BEG"] = (float(np.min(jd - w / 2 / 86400)) - 2400000.5, "[d] start of the first exposure (MJD UTC)")
        h["MJD-END"] = (float(np.max(jd + w / 2 / 86400)) - 2400000.5, "[d] end of the last exposure, MJD UTC")
    ra = np.array([f.radisp for f in used])
    de = np.array([f.dedisp for f in used])
    al = np.array([f.align_rms_px for f in used])
    h["RADISP"] = (_rms(ra), "[arcsec] RMS of the frames' RA alignment residual")
    h["DEDISP"] = (_rms(de), "[arcsec] RMS of the frames' Dec alignment resid.")
    h["ALIGNRMS"] = (_rms(al), "[px] RMS of the frames' alignment residual")
    h["FWHMMED"] = (round(float(np.median([f.fwhm_px for f in used])), 3), "[px] median FWHM of the frames")
    h["STKMETH"] = (s["method"], "clipped inverse-variance mean, or median")
    h["STKCLIP"] = (float(s["clip_sigma"]), "[sigma] rejection threshold of the clipped mean")
    h["STKINTRP"] = (s["interpolation"], "SCI resampling (variance, MASK bilinear)")
    h["STKALIGN"] = (s["align"], "per-frame correction fitted to reference stars")
    h["STKREF"] = (Path(min(used, key=lambda f: f.fwhm_px).path).name[:60], "reference frame of the alignment")
    h["WCSSRC"] = (",".join(sorted({f.wcs_source for f in used})), "WCS of the inputs: solved / header")
    for k, v in (extra or {}).items():
        h[k] = v
    for f in used:
        h["HISTORY"] = f"input {Path(f.path).name} t={f.exptime:g}s w={f.weight:.4g}"
    return h


def _rms(a):
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    return round(float(np.sqrt(np.mean(a ** 2))), 5) if a.size else math.nan


def write_frame_table(infos, path, meta=None):
    """Write the group's frame table (ECSV), atomically."""
    t = F.frame_table(infos)
    t.meta.update(meta or {})
    with atomic_path(path) as tmp:
        t.write(tmp, format="ascii.ecsv", overwrite=True)
    return t


def stack_group(paths, out_path, table_path, settings=None, instrument=None, memory_mb=1024):
    """Select, align and stack the frames ``paths`` of one group; write the image and the frame table.

    Fewer usable frames than ``min_frames`` (none at all included) is a data condition: the image
    file then holds only a primary header with ``STKSTAT = 'FAILED'`` and ``STKWHY``, and the
    frame table gives each frame's reason; the night goes on.
    """
    s = dict(DEFAULTS, **(settings or {}))
    infos, ref = select_frames(paths, s, instrument)
    try:
        hdr = stack_frames(infos, out_path, s, memory_mb)
    except NoStack as err:
        # A data condition, not a software error: the night goes on with a product saying why.
        log.warning("no stack: %s", err.reason)
        hdr = fits.Header()
        hdr["STKSTAT"] = ("FAILED", "no stack could be made")
        hdr["STKWHY"] = (err.reason[:68], "why")
        hdr["NCOMBINE"] = (0, "frames combined")
        write_fits(fits.PrimaryHDU(header=hdr), out_path)
    finally:
        write_frame_table(infos, table_path, meta={"n_frames": len(infos),
                                                   "n_used": sum(f.status == "ok" for f in infos)})
    return hdr


def group_paths(cal_dir, inventory_path, target, filt):
    """Calibrated frames of one target and filter of a night, in time order.

    The night's ``calibrated_frames.ecsv`` (in ``cal_dir``) lists the frames written; the
    inventory maps their raw frames to targets (sanitised OBJECT) and filters.

    Returns
    -------
    list of str
    """
    from ..calibration.frames import CALIBRATED_TABLE, read_table
    from ..ingest.inventory import read_inventory

    cal_dir = Path(cal_dir)
    table_path = cal_dir / CALIBRATED_TABLE
    if not table_path.exists():
        raise BandersnakeError(f"{cal_dir}: no {CALIBRATED_TABLE} (not a calibrated-frames folder)")
    cal = read_table(table_path)
    inv = read_inventory(inventory_path)
    target_of = {str(r["path"]): str(r["target"]) for r in inv}
    paths = []
    for r in cal:
        if str(r["status"]) != "ok":
            continue
        if target_of.get(str(r["raw"])) == target and str(r["filter"]) == filt and (cal_dir / str(r["file"])).exists():
            paths.append(str(cal_dir / str(r["file"])))
    return paths


def stack_night_group(cal_dir, inventory_path, target, filt, out_path, table_path, settings=None, instrument=None,
                      memory_mb=1024):
    """:func:`stack_group` of the frames of ``target`` in ``filt`` of a night (rule ``stack_image``)."""
    paths = group_paths(cal_dir, inventory_path, target, filt)
    log.info("%s %s: %d calibrated frames", target, filt, len(paths))
    return stack_group(paths, out_path, table_path, settings, instrument, memory_mb)
