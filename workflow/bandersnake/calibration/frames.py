"""Calibrated-frame products of a night: calibration + cosmic rays, plate solutions, KBMOD frames.

Three stages, one Snakemake job each per night (``rules/calibrated.smk``, ``rules/astrometry.smk``,
``rules/kbmod.smk``), so the DAG grows with nights, not frames:

1. :func:`calibrate_night`: every accepted science frame -> ``<stem><suffix>.fits`` (SCI e-,
   ERR 1-sigma e-, MASK bits 1 bad / 2 cosmic ray / 4 saturated / 8 near bad; primary header =
   raw header + provenance), cosmic rays found by :mod:`bandersnake.cosmics` on the frame in
   memory, so each frame is written once. Darks are matched by exposure time; a frame whose
   exposure has no darks is calibrated with the all-exposure master dark (ADU/s) scaled to its
   exposure, with a warning and ``DARKMTCH = F`` in its header.
2. :func:`solve_night`: each calibrated frame plate-solved (:func:`bandersnake.astrometry.solve_field`,
   hinted by the header RA/Dec, then by the previous solution); the final product is the stage
   frame with the WCS in every image header, ``ASTROSTA`` = solved / unsolved / error. A frame
   that does not solve is flagged and kept (no WCS), never fatal.
3. :func:`kbmod_night`: KBMOD frames (header, SCI, MASK, VAR with WCS and mid-exposure MJD) of
   the solved frames (:func:`bandersnake.kbmod.kbmod_from_calibrated`).

Each stage writes a table (``calibrated_frames.ecsv``, ``astrometry_summary.ecsv``,
``kbmod_frames.ecsv``) with one row per frame and the reason of anything that went wrong; a
bad frame is recorded and skipped, the night goes on.
"""

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from . import cosmics as _cosmics
from .mef import MASK_BAD, MASK_CR, MASK_SATURATED
from ..errors import BandersnakeError, FrameError
from ..fitsio import atomic_path, write_fits
from ..ingest.inventory import exptime_tag
from .reduce import calibrate_frame, calibrated_hdul, load_calibration, read_raw, reduced_name

log = logging.getLogger(__name__)

CALIBRATED_TABLE = "calibrated_frames.ecsv"
ASTROMETRY_TABLE = "astrometry_summary.ecsv"
KBMOD_TABLE = "kbmod_frames.ecsv"


def cal_name(raw_path, suffix="_CAL"):
    """Calibrated file name of a raw frame: raw stem + ``suffix`` + ``.fits``.

    ``2025-04-20_01.02.03_SCIENCE.fits.gz`` -> ``2025-04-20_01.02.03_SCIENCE_CAL.fits``.
    """
    return reduced_name(raw_path)[: -len(".fits")] + suffix + ".fits"


def saturation_electrons(cal):
    """Lowest calibrated value (e-) a saturated pixel can have, for astroscrappy's ``satlevel``.

    ``gain * (saturation - bias) / flat`` at its smallest over the good pixels (highest bias,
    highest flat), so every saturated star is protected; pixels already flagged saturated in
    MASK are ignored by the detection anyway.
    """
    good = cal.static_mask == 0
    bias = float(np.max(cal.bias[good])) if good.any() else 0.0
    flat = float(np.max(cal.flat[good])) if good.any() else 1.0
    return cal.gain * (cal.saturation_adu - bias) / max(flat, 1e-3)


def _write_table(rows, names, dtypes, path, meta=None):
    table = Table(rows=[[r[n] for n in names] for r in rows] or None, names=names, dtype=dtypes)
    table.meta.update(meta or {})
    with atomic_path(path) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    return table


def read_table(path):
    """Read one of the stage tables (ECSV)."""
    return Table.read(path, format="ascii.ecsv")


def frames_from_inventory(inventory_path, paths):
    """Frame records (``path``, ``filter``, ``exptime``) of ``paths`` from the night's inventory,
    in the inventory's (time) order.

    Raises
    ------
    BandersnakeError
        When a path is not in the inventory (the inventory is older than the frame list).
    """
    from ..ingest.inventory import read_inventory

    table = read_inventory(inventory_path)
    rows = {str(r["path"]): r for r in table}
    missing = [p for p in paths if str(p) not in rows]
    if missing:
        raise BandersnakeError(f"{inventory_path}: {len(missing)} frame(s) not in the inventory, e.g. {missing[0]}")
    wanted = {str(p) for p in paths}
    return [dict(path=str(r["path"]), filter=str(r["filter"]), exptime=float(r["exptime"]))
            for r in table if str(r["path"]) in wanted]


# --------------------------------------------------------------------------------------------
# 1. calibration + cosmic rays
# --------------------------------------------------------------------------------------------
_CAL_COLUMNS = ("raw", "file", "status", "filter", "exptime", "dark", "dark_matched", "n_cosmic",
                "n_bad", "n_saturated", "elapsed", "reason")
_CAL_DTYPES = ("U1024", "U256", "U8", "U32", "f8", "U256", "?", "i8", "i8", "i8", "f8", "U300")


def calibrate_night(frames, masters, instrument, out_dir, *, darks=None, suffix="_CAL", grow=1,
                    find_cosmics=True, cosmics_config=None, threads=1, cosmics_method="astroscrappy"):
    """Calibrate a night's science frames into ``out_dir`` and flag their cosmic rays.

    Parameters
    ----------
    frames : list of dict
        One per raw science frame, in time order: ``path``, ``filter``, ``exptime`` (s).
    masters : dict
        ``bias`` (ADU), ``dark`` (all-exposure master, ADU/s), ``flats`` ({filter: path}),
        ``bpm`` (uint8 bits, optional).
    instrument : dict
        Validated instrument configuration (gain, read noise, saturation, sections).
    out_dir : str or Path
        Created; receives ``<stem><suffix>.fits`` and ``calibrated_frames.ecsv``.
    darks : dict, optional
        ``{exptime: path or None}`` exposure-matched master darks (ADU/s, from the frames of that
        exposure only; :func:`bandersnake.inventory.dark_plan`). None, or an exposure missing or
        mapped to None, uses ``masters['dark']`` scaled to the exposure, with a warning.
    suffix : str
        Appended to the raw stem (ASTEP: ``_CAL`` -> ``*_SCIENCE_CAL.fits``).
    grow : int
        MASK bit 8 within this many px of a bad pixel.
    find_cosmics : bool
        Run astroscrappy (MASK bit 2).
    cosmics_config : dict, optional
        ``cosmics`` settings (:data:`bandersnake.cosmics.DEFAULTS` keys and ``replace_sci``).
    threads : int
        Frames processed at once (astroscrappy and the calibration release the GIL).

    Returns
    -------
    astropy.table.Table
        One row per frame (``calibrated_frames.ecsv``): ``raw``, ``file``, ``status``
        ('ok' or 'skipped'), ``filter``, ``exptime`` (s), ``dark`` (file used),
        ``dark_matched``, ``n_cosmic``, ``n_bad``, ``n_saturated`` (px), ``elapsed`` (s),
        ``reason``.

    Raises
    ------
    BandersnakeError
        When no frame at all could be calibrated (a night with no usable product).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cosmics_config = dict(cosmics_config or {})
    replace_sci = bool(cosmics_config.pop("replace_sci", False))
    # "series": each frame is flagged against its neighbours in time as soon as they are
    # calibrated, then written once (calibration/cosmics_series.py, issue 22); no astroscrappy.
    series = find_cosmics and cosmics_method == "series"
    cr_params = _cosmics.cosmic_params(cosmics_config, instrument.get("plate_scale_arcsec_per_px")) \
        if find_cosmics and not series else None
    if cr_params is not None:
        log.info("cosmic rays: PSF FWHM %.2f px (seeing %.2f\" at %.2f\"/px), kernel %d px, star cores %s",
                 cr_params["psffwhm"], cr_params["seeing_arcsec"], instrument.get("plate_scale_arcsec_per_px") or
                 float("nan"), cr_params["psfsize"], "protected" if cr_params["protect_stars"] else "not protected")
    darks = {float(k): v for k, v in (darks or {}).items()}
    cache = {}
    # numba's default (workqueue) threading layer aborts on concurrent parallel launches: the
    # calibration kernel (ms per frame, multithreaded itself) runs one frame at a time.
    kernel_lock, cache_lock = threading.Lock(), threading.Lock()

    def calibration(filt, exptime):
        dark_path, matched = _dark_for(darks, exptime, masters.get("dark"))
        key = (filt, dark_path)
        if key not in cache:
            flat = (masters.get("flats") or {}).get(filt)
            if flat is None:
                raise FrameError("<masters>", f"no master flat for filter {filt!r}")
            cal = load_calibration({"bias": masters["bias"], "dark": dark_path, "flat": flat,
                                    "bpm": masters.get("bpm")}, instrument, grow)
            cache[key] = (cal, saturation_electrons(cal))
        return cache[key], dark_path, matched

    names = [cal_name(f["path"], suffix) for f in frames]
    dupes = {n for n in names if names.count(n) > 1}
    warned = set()

    def one(args):
        k, frame = args
        t0 = time.perf_counter()
        row = dict(raw=str(frame["path"]), file=names[k], status="skipped", filter=str(frame.get("filter", "")),
                   exptime=float(frame.get("exptime", math.nan)), dark="", dark_matched=False, n_cosmic=0,
                   n_bad=0, n_saturated=0, elapsed=0.0, reason="")
        try:
            if names[k] in dupes:
                raise FrameError(frame["path"], f"another science frame of the night is also named {names[k]}")
            with cache_lock:
                (cal, sat_e), dark_path, matched = calibration(row["filter"], row["exptime"])
            raw = read_raw(frame["path"], instrument, cal.shape)
            with kernel_lock:
                sci, err, msk = calibrate_frame(raw, cal)
            n_cr, cr_cards = 0, []
            if cr_params is not None:
                res = cosmics_in_frame(sci, err, msk, cal.read_noise, sat_e, cr_params, replace_sci)
                msk |= np.where(res.mask, np.uint8(MASK_CR), np.uint8(0))
                if replace_sci:
                    sci = res.clean
                n_cr = res.n_pixels
                cr_cards = _cr_cards(res, cal.read_noise, sat_e, replace_sci)
            hdul = calibrated_hdul(raw, sci, err, msk, cal)
            hdr = hdul[0].header
            hdr["DARKMTCH"] = (bool(matched), "dark of this EXPTIME (F: all-exposure scaled)")
            hdr["DARKFILE"] = (Path(dark_path).name if dark_path else "none", "master dark used (ADU/s)")
            for key, value, comment in cr_cards:
                hdr[key] = (value, comment)
            if not series:
                hdr["HISTORY"] = ("MASK bit 2: cosmic rays (astroscrappy, gain 1 on e- data)" if cr_params
                                  else "cosmic rays not searched")
                write_fits(hdul, out_dir / names[k])
            else:
                row["_hdul"] = hdul      # written once, flagged, by the series (below)
            if not matched and dark_path and row["exptime"] not in warned:
                warned.add(row["exptime"])
                log.warning("no darks of %s s: %s calibrated with the all-exposure master dark %s scaled to "
                            "the exposure", exptime_tag(row["exptime"]), frame["path"], Path(dark_path).name)
            row.update(status="ok", dark=Path(dark_path).name if dark_path else "none", dark_matched=bool(matched),
                       n_cosmic=int(n_cr), n_bad=int(((msk & MASK_BAD) > 0).sum()),
                       n_saturated=int(((msk & MASK_SATURATED) > 0).sum()))
        except FrameError as err_:
            row["reason"] = err_.reason
            log.warning("frame skipped: %s", err_)
        except OSError as err_:
            row["reason"] = f"write failed: {err_}"
            log.warning("frame skipped: %s: %s", frame["path"], err_)
        row["elapsed"] = time.perf_counter() - t0
        return row

    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        if series:
            rows = _calibrate_and_flag(pool, one, frames, out_dir, max(1, int(threads)))
        else:
            rows = list(pool.map(one, enumerate(frames)))
    n_ok = sum(r["status"] == "ok" for r in rows)
    table = _write_table(rows, _CAL_COLUMNS, _CAL_DTYPES, out_dir / CALIBRATED_TABLE,
                         meta={"n_frames": len(rows), "n_calibrated": n_ok, "suffix": suffix,
                               "cosmics": bool(cr_params), "cosmics_params": cr_params or {}})
    log.info("calibrated %d of %d science frames into %s (%d cosmic-ray pixels)", n_ok, len(rows), out_dir,
             int(sum(r["n_cosmic"] for r in rows)))
    if frames and not n_ok:
        raise BandersnakeError(f"{out_dir}: none of the {len(frames)} science frames could be calibrated "
                               f"(first reason: {rows[0]['reason']})")
    return table


def _calibrate_and_flag(pool, one, frames, out_dir, threads):
    """Calibrate the frames on ``pool`` and hand them, in time order and still in memory, to the
    cosmic-ray series, which writes each once with its rays flagged (no stage write and re-read:
    a 4096x4096 frame is 144 MB). At most ``threads + 1`` calibrated frames wait for the series
    besides its own window. A frame that cannot be flagged or written is skipped with its reason,
    the others go on."""
    from collections import deque

    from .cosmics_series import SeriesFlagger

    by_path = {}

    def skip(path, reason):
        row = by_path[path]
        row.update(status="skipped", reason=reason)
        log.warning("frame skipped: %s: %s", path, reason)
        Path(path).unlink(missing_ok=True)

    series = SeriesFlagger(on_error=skip)
    rows, queue, todo = [], deque(), iter(enumerate(frames))
    for item in todo:
        queue.append(pool.submit(one, item))
        if len(queue) > threads:
            break
    while queue:
        row = queue.popleft().result()
        nxt = next(todo, None)
        if nxt is not None:
            queue.append(pool.submit(one, nxt))
        hdul = row.pop("_hdul", None)
        rows.append(row)
        if row["status"] == "ok":
            path = str(out_dir / row["file"])
            by_path[path] = row
            series.add(path, hdul)
    for path, n_cr in series.close().items():
        by_path[path]["n_cosmic"] = n_cr
    return rows


def cosmics_in_frame(sci, err, mask, read_noise_e, saturation_e, params, return_clean=False, pad=8):
    """Cosmic rays of a calibrated frame (e-), protecting stars near edges and saturated stars.

    Two details keep star cores unflagged (measured on simulated Tycho-2 fields: 2-6 % of
    star-core pixels flagged without them, 0 % with them, recall unchanged at 98-99 %):

    * the frame is mirrored by ``pad`` px on each side first, so a star cut by the edge looks
      like a whole star to L.A.Cosmic's median filters instead of a sharp feature (a star
      centred within ~2 px of the edge is still flagged, padded or not);
    * saturated pixels keep their values (only bad pixels are masked out), so astroscrappy's
      ``satlevel`` recognises saturated stars and protects their wings; they are never reported.

    Parameters
    ----------
    sci, err : ndarray
        Calibrated image and its 1-sigma uncertainty (e-).
    mask : ndarray of uint8
        MASK bits (1 bad, 4 saturated).
    read_noise_e, saturation_e : float
        e-; ``saturation_e`` is the lowest value a saturated pixel can have.
    params : dict
        astroscrappy parameters (:func:`bandersnake.cosmics.cosmic_params`).
    return_clean : bool
    pad : int
        Mirror padding (px).

    Returns
    -------
    bandersnake.cosmics.CosmicResult
        ``mask`` True on cosmic-ray pixels (never on bad or saturated ones), in the frame's shape.
    """
    bad = (mask & MASK_BAD) > 0
    saturated = (mask & MASK_SATURATED) > 0
    ny, nx = sci.shape
    p = int(min(pad, ny - 1, nx - 1))

    def mirror(a):
        return np.pad(a, p, mode="reflect") if p > 0 else a

    res = _cosmics.detect_cosmic_rays(mirror(sci), read_noise_e, 0.95 * saturation_e, err_e=mirror(err),
                                      bad=mirror(bad), config=params, return_clean=return_clean)
    inner = (slice(p, p + ny), slice(p, p + nx))
    res.mask = res.mask[inner] & ~saturated & ~bad
    res.n_pixels = int(res.mask.sum())
    if res.clean is not None:
        res.clean = np.where(res.mask, res.clean[inner], sci).astype(np.float32)
    return res


def _dark_for(darks, exptime, fallback):
    """(dark path, matched?) for a frame of ``exptime`` s: the matched master or the scaled fallback."""
    for t, path in darks.items():
        if path and abs(t - exptime) <= 0.01 * t + 1e-3:
            return str(path), True
    return (str(fallback) if fallback else None), False


def _cr_cards(res, read_noise_e, saturation_e, replace_sci):
    p = res.params
    return [("CRNPIX", res.n_pixels, "pixels flagged as cosmic rays (MASK bit 2)"),
            ("CRMETHOD", f"astroscrappy {_cosmics.astroscrappy.__version__}", "L.A.Cosmic implementation"),
            ("CRSIGCLP", p["sigclip"], "astroscrappy sigclip"), ("CRSIGFRC", p["sigfrac"], "astroscrappy sigfrac"),
            ("CROBJLIM", p["objlim"], "astroscrappy objlim"), ("CRNITER", p["niter"], "astroscrappy niter"),
            ("CRPSFFWH", float(p["psffwhm"]), "[px] PSF FWHM (seeing / plate scale)"),
            ("CRSTARPR", bool(p["protect_stars"]), "star-like peaks kept out of the CR search"),
            ("CRGAIN", 1.0, "gain passed to astroscrappy (SCI already in e-)"),
            ("CRRDNOIS", float(read_noise_e), "[e-] read noise passed to astroscrappy"),
            ("CRSATLEV", round(float(saturation_e), 1), "[e-] satlevel passed to astroscrappy"),
            ("CRCLEAN", bool(replace_sci), "SCI CR pixels replaced by cleaned values")]


# --------------------------------------------------------------------------------------------
# 2. astrometry
# --------------------------------------------------------------------------------------------
def solve_night(stage_dir, out_dir, wcs_dir, summary_path, instrument, settings, *, enabled=True,
                threads=1):
    """Plate-solve a night's calibrated frames and write the final products with their WCS.

    Parameters
    ----------
    stage_dir : str or Path
        Output of :func:`calibrate_night` (its ``calibrated_frames.ecsv`` gives the frames in
        time order).
    out_dir : str or Path
        Final calibrated frames: solved frames get the WCS in every image header
        (:func:`bandersnake.astrometry.apply_wcs_to_calibrated`), all get ``ASTROSTA``
        (solved / unsolved / error / disabled); the stage table is copied along.
    wcs_dir : str or Path
        One header-only ``<stem>.wcs`` per solved frame.
    summary_path : str or Path
        Per-frame table (:func:`bandersnake.astrometry.astrometry_summary`), ``meta`` with the
        solved fraction and median residuals.
    instrument : dict
        ``plate_scale_arcsec_per_px`` sets the scale bounds; ``keywords.ra``/``dec`` the hint.
    settings : dict
        The night's ``astrometry`` settings (night.schema.yaml).
    enabled : bool
        False: frames are passed on unsolved (hard links), the summary says so.
    threads : int
        Frames solved at once: the night is cut into that many consecutive runs, each
        following its own previous solution.

    Returns
    -------
    astropy.table.Table
        The summary.
    """
    from ..astrometry import solve as A

    stage_dir, out_dir, wcs_dir = Path(stage_dir), Path(out_dir), Path(wcs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wcs_dir.mkdir(parents=True, exist_ok=True)
    stage = read_table(stage_dir / CALIBRATED_TABLE)
    files = [str(stage_dir / f) for f, s in zip(stage["file"], stage["status"]) if s == "ok"]
    if not enabled:
        for f in files:
            _link_or_copy(f, out_dir / Path(f).name)
        results = [A.SolveResult(path=f, status="disabled", message="astrometry disabled for this night")
                   for f in files]
    elif settings.get("method", "follow") == "follow":
        return _solve_night_follow(stage_dir, files, out_dir, wcs_dir, summary_path, instrument, settings, threads)
    else:
        results = _solve_runs(files, wcs_dir, instrument, settings, threads)
        for f, res in zip(files, results):
            _finish_frame(f, out_dir / Path(f).name, res)
    _link_or_copy(stage_dir / CALIBRATED_TABLE, out_dir / CALIBRATED_TABLE)
    summary = A.astrometry_summary(results)
    summary["file"] = [Path(p).name for p in summary["file"]]
    summary.meta["enabled"] = bool(enabled)
    summary.meta["index_dir"] = str(settings.get("index_dir", A.DEFAULT_INDEX_DIR))
    A.write_astrometry_summary(summary, summary_path)
    log.info("astrometry: %d of %d frames solved, median residual %.3f arcsec", summary.meta["n_solved"],
             summary.meta["n_frames"], summary.meta["median_rms_arcsec"])
    return summary


def _solve_night_follow(stage_dir, files, out_dir, wcs_dir, summary_path, instrument, settings, threads):
    """:func:`solve_night` with one reference solve-field and every other frame followed.

    Per-frame outcomes go to ``<wcs_dir>/../progress/`` as they are known (a killed job resumes
    from there); the final frames (WCS, ``ASTROSTA``, ``ASTROFLG`` when the solution disagrees
    with its neighbours') are written once every frame is known.
    """
    from ..astrometry import follow as F
    from ..astrometry import solve as A

    kw = solve_kwargs(instrument, settings)
    lo, hi = kw.pop("scale_low"), kw.pop("scale_high")
    progress_dir = Path(wcs_dir).parent / "progress"
    t0 = time.perf_counter()
    results = F.solve_sequence(files, scale_low=lo, scale_high=hi, hints=lambda p: header_hint(p, instrument),
                               settings=settings, solve_kwargs=kw, progress_dir=progress_dir, threads=threads)
    t_solve = time.perf_counter() - t0

    def finish(item):
        f, res = item
        if res.solved:
            A.write_wcs(res.wcs, Path(wcs_dir) / (Path(f).name[: -len(".fits")] + ".wcs"), res)
        _finish_frame(f, out_dir / Path(f).name, res)

    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        list(pool.map(finish, zip(files, results)))
    _link_or_copy(stage_dir / CALIBRATED_TABLE, out_dir / CALIBRATED_TABLE)
    summary = F.summary_table(results)
    summary["file"] = [Path(p).name for p in summary["file"]]
    summary.meta.update(enabled=True, method="follow", solve_seconds=round(t_solve, 2),
                        index_dir=str(settings.get("index_dir", A.DEFAULT_INDEX_DIR)))
    A.write_astrometry_summary(summary, summary_path)
    m = summary.meta
    log.info("astrometry: %d of %d frames solved in %.1f s (%d followed, %d by solve-field, %d flagged), median "
             "residual %.3f px / %.3f arcsec (catalogue stars %.3f arcsec)", m["n_solved"], m["n_frames"], t_solve,
             m["n_followed"], m["n_solve_field"], m["n_flagged"], m["median_rms_px"], m["median_rms_arcsec"],
             m["median_cat_rms_arcsec"])
    return summary


def solve_kwargs(instrument, settings):
    """Keyword arguments of :func:`bandersnake.astrometry.solve_field` from the night's settings."""
    scale = float(instrument["plate_scale_arcsec_per_px"])
    margin = float(settings.get("scale_margin", 0.05))
    return dict(scale_low=scale * (1 - margin), scale_high=scale * (1 + margin),
                radius_deg=float(settings.get("radius_deg", 2.0)),
                index_dir=settings.get("index_dir", "/usr/share/astrometry"),
                index_files=list(settings.get("index_files") or []) or None,
                timeout_s=float(settings.get("timeout_s", 30)), tweak_order=int(settings.get("tweak_order", 2)),
                fwhm_px=float(settings.get("fwhm_px", 3.0)), nsigma=float(settings.get("nsigma", 5.0)),
                max_sources=int(settings.get("max_sources", 300)), min_sources=int(settings.get("min_sources", 8)))


def header_hint(path, instrument):
    """Pointing hint (RA, Dec in deg) from a calibrated frame's primary header, or (None, None)."""
    from ..astrometry import solve as A

    kw = instrument.get("keywords") or {}
    try:
        header = fits.getheader(path, 0)
    except Exception:  # an unreadable frame is reported by the solver itself
        return None, None
    for ra_key, dec_key in ((kw.get("ra", "RA"), kw.get("dec", "DEC")), ("RA", "DEC"), ("OBJCTRA", "OBJCTDEC"),
                            ("CRVAL1", "CRVAL2")):
        ra, dec = A.hints_from_header(header, ra_key, dec_key)
        if ra is not None:
            return ra, dec
    return None, None


def _solve_runs(files, wcs_dir, instrument, settings, threads):
    """Solve ``files`` in up to ``threads`` consecutive runs at once, each following its own solutions."""
    from ..astrometry import solve as A

    kwargs = solve_kwargs(instrument, settings)
    follow = bool(settings.get("follow", True))
    n = max(1, min(int(threads), len(files)))
    bounds = np.linspace(0, len(files), n + 1).astype(int)

    def run(k):
        chunk = files[bounds[k]:bounds[k + 1]]
        return _solve_sequence(chunk, wcs_dir, instrument, kwargs, follow) if chunk else []

    with ThreadPoolExecutor(max_workers=n) as pool:
        return [r for part in pool.map(run, range(n)) for r in part]


def _solve_sequence(files, wcs_dir, instrument, kwargs, follow):
    """Solve frames in order, each hinted by the previous solution.

    As :func:`bandersnake.astrometry.solve_frames`, with two differences: ``.wcs`` files are named
    by the full stem (ASTEP names hold dots: ``2025-04-03_15.48.22_SCIENCE_CAL``), and once a
    frame has solved, later frames use only the hinted steps of the retry ladder (no blind
    solve), so a cloudy frame costs two hinted attempts instead of a blind search.
    """
    from ..astrometry import solve as A

    results = []
    lo0, hi0 = kwargs["scale_low"], kwargs["scale_high"]
    lo, hi = lo0, hi0
    last = None
    for path in files:
        ra, dec = (last.ra_center, last.dec_center) if (last is not None and follow) else header_hint(path, instrument)
        args = dict(kwargs, scale_low=lo, scale_high=hi, ra_hint=ra, dec_hint=dec)
        if last is not None and follow:
            # The night's pointing is known: a frame that fails the hinted steps is cloudy or
            # trailed, and a blind search would only burn its timeout.
            args["ladder"] = tuple(step for step in A.DEFAULT_LADDER if step.get("hint", True))
        try:
            res = A.solve_field(path, Path(wcs_dir) / (Path(path).name[: -len(".fits")] + ".wcs"), **args)
        except FrameError as err:
            res = A.SolveResult(path=str(path), status="error", message=err.reason)
        results.append(res)
        if res.solved and follow:
            last = res
            # Next frame: +-5 % of this scale, never outside the configured bounds.
            lo, hi = max(lo0, 0.95 * res.pixscale_arcsec), min(hi0, 1.05 * res.pixscale_arcsec)
            if lo >= hi:
                lo, hi = lo0, hi0
    return results


def _finish_frame(stage_path, out_path, res):
    """Final product of one frame: WCS + status for a solved frame, status only otherwise."""
    from ..astrometry import solve as A

    try:
        if res.solved:
            A.apply_wcs_to_calibrated(stage_path, res.wcs, res, out_path=out_path,
                                      extra={"ASTROSTA": ("solved", "plate solution: solved/unsolved/error")}
                                      | ({"ASTROFLG": (str(res.flag)[:60], "solution disagrees with neighbours")}
                                         if getattr(res, "flag", "") else {}))
        else:
            _set_status(stage_path, res.status, res.message, out_path=out_path)
    except FrameError as err:
        res.status, res.message = "error", err.reason
        log.warning("astrometry: %s", err)
        if Path(stage_path).exists() and not Path(out_path).exists():
            _link_or_copy(stage_path, out_path)


def _set_status(path, status, message, out_path=None):
    """Write ``ASTROSTA`` (and the reason) into the primary header (atomic rewrite)."""
    with fits.open(path, memmap=False) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    hdul[0].header["ASTROSTA"] = (status, "plate solution: solved/unsolved/error")
    if message:
        hdul[0].header["ASTROMSG"] = (str(message)[:60], "why the frame has no new WCS")
    write_fits(hdul, out_path or path)


def _link_or_copy(src, dst):
    """Hard link ``src`` to ``dst`` (a copy across file systems)."""
    import shutil

    dst = Path(dst)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --------------------------------------------------------------------------------------------
# 3. KBMOD
# --------------------------------------------------------------------------------------------
_KB_COLUMNS = ("file", "kbmod_file", "status", "mjd_mid", "reason")
_KB_DTYPES = ("U256", "U256", "U8", "f8", "U300")


def kbmod_night(cal_dir, out_dir, *, date_obs_is="start", subtract_background=True, suffix="_CAL"):
    """KBMOD frames of a night's calibrated frames that have a plate solution.

    Parameters
    ----------
    cal_dir : str or Path
        Final calibrated frames (:func:`solve_night`'s ``out_dir``).
    out_dir : str or Path
        Receives ``<stem>.fits`` per frame (the calibrated name without ``suffix``) and
        ``kbmod_frames.ecsv`` (file, status, mid-exposure UTC MJD, reason), in time order.
    date_obs_is : {'start', 'mid'}
    subtract_background : bool
    suffix : str

    Returns
    -------
    astropy.table.Table
    """
    from ..astrometry.kbmod import kbmod_from_calibrated, mid_exposure_mjd

    cal_dir, out_dir = Path(cal_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = read_table(cal_dir / CALIBRATED_TABLE)
    rows = []
    for name, status in zip(stage["file"], stage["status"]):
        if status != "ok":
            continue
        src = cal_dir / name
        stem = name[: -len(suffix + ".fits")] if suffix and name.endswith(suffix + ".fits") else name[:-5]
        row = dict(file=name, kbmod_file=f"{stem}.fits", status="skipped", mjd_mid=math.nan, reason="")
        try:
            header = fits.getheader(src, 0)
            if header.get("ASTROSTA", "solved") != "solved":
                raise FrameError(src, f"no plate solution ({header.get('ASTROSTA')})")
            kbmod_from_calibrated(src, out_dir / row["kbmod_file"], date_obs_is=date_obs_is,
                                  subtract_background=subtract_background)
            row["mjd_mid"] = mid_exposure_mjd(header, date_obs_is=date_obs_is)
            row["status"] = "ok"
        except FrameError as err:
            row["reason"] = err.reason
            log.warning("KBMOD frame skipped: %s", err)
        except (OSError, ValueError) as err:
            row["reason"] = f"{type(err).__name__}: {err}"
            log.warning("KBMOD frame skipped: %s: %s", src, row["reason"])
        rows.append(row)
    n_ok = sum(r["status"] == "ok" for r in rows)
    table = _write_table(rows, _KB_COLUMNS, _KB_DTYPES, out_dir / KBMOD_TABLE,
                         meta={"n_frames": len(rows), "n_kbmod": n_ok,
                               "layout": "HDU0 header (MJD mid-exposure UTC), 1 SCI e-, 2 MASK LSST bits, 3 VAR e-2"})
    log.info("KBMOD: %d of %d calibrated frames written to %s", n_ok, len(rows), out_dir)
    return table


# --------------------------------------------------------------------------------------------
# night summary lines
# --------------------------------------------------------------------------------------------
def describe_products(paths):
    """Night-summary lines for the calibrated, astrometry and KBMOD products among ``paths``.

    Parameters
    ----------
    paths : list of str
        Products of the night (directories ``calibrated``/``kbmod``, the astrometry summary).

    Returns
    -------
    list of str
    """
    lines = []
    for p in map(Path, paths):
        if p.is_dir() and (p / CALIBRATED_TABLE).exists() and p.name == "calibrated":
            t = read_table(p / CALIBRATED_TABLE)
            ok = t["status"] == "ok"
            scaled = ok & ~np.asarray(t["dark_matched"], bool)
            lines.append(f"calibrated frames: {int(ok.sum())} of {len(t)} written to {p.name}/, "
                         f"{int(t['n_cosmic'][ok].sum())} cosmic-ray pixels flagged")
            for exptime in sorted(set(np.asarray(t["exptime"])[scaled])):
                lines.append(f"  no darks of {exptime_tag(exptime)} s: all-exposure master dark scaled "
                             f"({int((scaled & (t['exptime'] == exptime)).sum())} frames)")
            lines += [f"  skipped {r['raw']}: {r['reason']}" for r in t[~ok]]
        elif p.name == ASTROMETRY_TABLE and p.exists():
            t = read_table(p)
            m = t.meta
            lines.append(f"astrometry: {m.get('n_solved', 0)} of {m.get('n_frames', len(t))} frames solved "
                         f"({100 * m.get('solved_fraction', 0):.0f} %), median residual "
                         f"{m.get('median_rms_arcsec', math.nan):.2f} arcsec")
            if "n_followed" in m:
                lines.append(f"  {m['n_followed']} followed, {m['n_solve_field']} by solve-field, "
                             f"{m.get('n_flagged', 0)} flagged; catalogue residual "
                             f"{m.get('median_cat_rms_arcsec', math.nan):.2f} arcsec, {m.get('solve_seconds', 0)} s")
            lines += [f"  {r['status']} {r['file']}: {r['message']}" for r in t if r["status"] != "solved"]
            if "flag" in t.colnames:
                lines += [f"  flagged {r['file']}: {r['flag']}" for r in t if str(r["flag"]) not in ("", "--")]
        elif p.is_dir() and (p / KBMOD_TABLE).exists():
            t = read_table(p / KBMOD_TABLE)
            ok = t["status"] == "ok"
            lines.append(f"KBMOD frames: {int(ok.sum())} of {len(t)} written to {p.name}/")
            lines += [f"  skipped {r['file']}: {r['reason']}" for r in t[~ok]]
    return lines
