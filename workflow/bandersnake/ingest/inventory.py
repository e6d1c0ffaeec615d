"""Per-night inventory: read each raw header once, classify, time-stamp and vet every frame.

The inventory (``calib/inventory.ecsv``) is the single source the workflow's input functions
read to find bias, dark, flat and science frames, so adding a frame to a night re-runs the
inventory and, through it, exactly the jobs whose inputs changed.
"""

import contextlib
import fnmatch
import hashlib
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.table import Table
from astropy.time import Time
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import BandersnakeError, FrameError
from ..fitsio import atomic_path, is_raw_fits_name, open_image_hdu, write_text
from . import timing
from .record_cache import file_identity, load_records, save_records, settings_digest
from .vetting import reject_duplicates, vet_hdu

log = logging.getLogger(__name__)

FRAME_TYPES = ("bias", "dark", "flat", "science")


def sanitize_name(name):
    """Target/filter name safe for file names: characters outside ``[A-Za-z0-9+._-]`` become ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9+._-]", "_", str(name).strip())
    return cleaned or "UNKNOWN"


def _normalise(value):
    return re.sub(r"[\s_]+", " ", str(value).strip().lower())


def classify(header, filename, instrument):
    """Frame type from IMAGETYP variants and the instrument's file-name patterns.

    The instrument's ``frame_type_source`` says which is tried first ('header', the default, or
    'filename', for cameras such as ASTEP whose file names carry the type); the other is the
    fallback.

    Parameters
    ----------
    header : astropy.io.fits.Header
    filename : str
        Base name of the file (patterns match case-insensitively).
    instrument : dict
        Validated instrument configuration.

    Returns
    -------
    frame_type : str
        One of ``bias``, ``dark``, ``flat``, ``science`` or ``unknown``.
    how : str
        ``"IMAGETYP=..."`` or ``"file name"``, for the log.
    """
    key = instrument["keywords"]["imagetyp"]
    value = header.get(key)
    by_header = _type_from_header(value, instrument)
    by_name = _type_from_name(filename, instrument)
    first, second = (by_name, by_header) if instrument.get("frame_type_source") == "filename" else (by_header, by_name)
    for found in (first, second):
        if found is not None:
            return found
    return "unknown", f"{key}={value!r}" if value is not None else f"no {key}"


def _type_from_header(value, instrument):
    if value is None or not str(value).strip():
        return None
    norm = _normalise(value)
    for frame_type in FRAME_TYPES:
        if norm in {_normalise(v) for v in instrument["imagetyp_values"][frame_type]}:
            return frame_type, f"{instrument['keywords']['imagetyp']}={str(value).strip()!r}"
    return None


def _type_from_name(filename, instrument):
    name = filename.lower()
    for frame_type in FRAME_TYPES:
        if any(fnmatch.fnmatch(name, pat.lower()) for pat in instrument["filename_patterns"][frame_type]):
            return frame_type, "file name"
    return None


def expected_data_bytes(header):
    """Bytes of the primary data unit (padded to 2880) implied by an uncompressed header."""
    naxes = [header.get(f"NAXIS{i}", 0) for i in range(1, header.get("NAXIS", 0) + 1)]
    nbytes = abs(header.get("BITPIX", 8)) // 8 * int(np.prod(naxes)) if naxes else 0
    return int(np.ceil(nbytes / 2880.0) * 2880)


def check_complete(path, hdul, index, header):
    """Raise :class:`FrameError` if an uncompressed FITS file is shorter than its header implies.

    Compressed files (``.gz``, ``.fz``) are checked by decompressing the data instead.

    Parameters
    ----------
    path : str
        The file.
    hdul : astropy.io.fits.HDUList
        The file, open.
    index : int
        Its image HDU.
    header : astropy.io.fits.Header
        The image HDU's header.
    """
    lower = str(path).lower()
    if lower.endswith((".gz", ".fz")):
        np.asarray(hdul[index].data)  # raises on a truncated stream (-> FrameError by the caller)
        return
    # Where the data starts (after the header's 2880-byte blocks), from the open file.
    needed = int(hdul.fileinfo(index)["datLoc"]) + expected_data_bytes(header)
    size = os.path.getsize(path)
    if size < needed:
        raise FrameError(path, f"truncated file ({size} bytes, header implies {needed})")


def frame_record(path, instrument, expected_shape=None, check_pixels=False):
    """Inventory row for one raw file; problems become ``accepted=False`` with a reason.

    The file is opened once: header checks, completeness and (``check_pixels``) the pixel
    checks of :func:`bandersnake.ingest.vetting.vet_hdu` all read the same open file.

    Parameters
    ----------
    path : str
        Raw file.
    instrument : dict
        Validated instrument configuration.
    expected_shape : tuple of int, optional
        ``(ny, nx)`` the night's frames must have.
    check_pixels : bool
        Read the pixels of a frame whose header passes: ``data_digest``, and rejection of
        empty, NaN-filled and saturated frames.

    Returns
    -------
    dict
        Keys of the inventory columns; ``jd_start`` is kept for the dusk/dawn split.
    """
    kw = instrument["keywords"]
    row = dict(path=str(path), file=Path(path).name, type="unknown", target="", filter="", exptime=np.nan,
               date_obs="", jd_mid_utc=np.nan, time_source="", time_warning="", session="", naxis1=0, naxis2=0,
               accepted=False, reason="", file_bytes=-1, file_mtime_ns=-1)
    try:
        # Size and modification time identify the file's content: when a frame is replaced the
        # inventory changes, and with it every job that reads the night's frames through it.
        with contextlib.suppress(OSError):
            stat = os.stat(path)
            row["file_bytes"], row["file_mtime_ns"] = stat.st_size, stat.st_mtime_ns
        with open_image_hdu(path, instrument.get("image_extension", 0),
                            do_not_scale_image_data=True) as (hdul, index, header):
            row["naxis1"], row["naxis2"] = int(header.get("NAXIS1", 0)), int(header.get("NAXIS2", 0))
            frame_type, how = classify(header, row["file"], instrument)
            row["type"] = frame_type
            row["filter"] = sanitize_name(header.get(kw["filter"], "NONE")) if frame_type in ("flat", "science") else ""
            if frame_type == "science":
                row["target"] = sanitize_name(header.get(kw["object"], "UNKNOWN"))
            if frame_type == "unknown":
                raise FrameError(path, f"unknown frame type ({how}; no file-name pattern matched)")
            if kw["exptime"] not in header:
                raise FrameError(path, f"missing {kw['exptime']}")
            exptime = float(header[kw["exptime"]])
            if not np.isfinite(exptime) or exptime < 0:
                raise FrameError(path, f"invalid {kw['exptime']}={header[kw['exptime']]!r}")
            row["exptime"] = exptime
            found = timing.frame_time(header, instrument, exptime)
            if found is None:
                raise FrameError(path, timing.time_problem(header, instrument))
            row["jd_mid_utc"] = found.jd_mid
            row["date_obs"] = Time(found.jd_mid - 0.5 * exptime / 86400.0, format="jd", scale="utc").isot
            row["time_source"] = found.source
            row["time_warning"] = "; ".join(found.warnings)
            for warning in found.warnings:     # counted once per night by summarize()
                log.debug("%s: %s", row["file"], warning)
            shape = (row["naxis2"], row["naxis1"])
            if header.get("NAXIS", 2) != 2 and not str(path).lower().endswith(".fz"):
                raise FrameError(path, f"NAXIS={header.get('NAXIS')} (expected a 2-D image)")
            if expected_shape is not None and shape != tuple(expected_shape):
                raise FrameError(path, f"shape {shape} differs from the instrument's {tuple(expected_shape)}")
            check_complete(path, hdul, index, header)
            if check_pixels:
                row["data_digest"] = vet_hdu(hdul[index], path, instrument)
        row["accepted"] = True
    except FrameError as err:
        row["reason"] = err.reason
    return row


def _contained_record(path, instrument, expected_shape, check_pixels=False):
    """:func:`frame_record`, with anything unexpected a rejection: one bad file never stops a night."""
    try:
        with warnings.catch_warnings():
            # Damaged headers make astropy warn card by card; the frame's reason says it once.
            warnings.simplefilter("ignore", (VerifyWarning, AstropyUserWarning))
            row = frame_record(path, instrument, expected_shape, check_pixels)
    except Exception as err:  # a header astropy parses into something no check foresaw
        # The columns of a row for a file that cannot be read at all, then this file's names.
        row = frame_record(os.path.join(os.sep, "nonexistent-bandersnake-dir", "x.fits"), instrument)
        row.update(path=str(path), file=Path(path).name,
                   reason=f"unreadable header ({type(err).__name__}: {err})", accepted=False)
    row.setdefault("data_digest", "")
    return row


def sun_sessions(jd_utc, site):
    """``'dusk'`` or ``'dawn'`` for each time, from the Sun's hour angle at the site.

    A frame taken while the Sun's local hour angle is between 0 h and 12 h (after local solar
    noon) belongs to the evening (dusk) session, otherwise to the morning (dawn) one. This works
    at every longitude, unlike a fixed UTC-hour cut.

    Parameters
    ----------
    jd_utc : array_like
        Julian dates (UTC).
    site : dict
        ``latitude_deg``, ``longitude_deg``, ``altitude_m``.
    """
    jd_utc = np.atleast_1d(np.asarray(jd_utc, dtype=float))
    out = np.full(jd_utc.shape, "", dtype="<U4")
    ok = np.isfinite(jd_utc)
    if not ok.any():
        return out
    # astropy.coordinates only here: the Snakefile imports this module at every start (issue 22).
    from astropy.coordinates import get_sun
    # UT1 = UTC: |UT1 - UTC| < 0.9 s moves the hour angle by < 0.9 s of time, nothing for a split
    # at local noon, and reading the IERS tables for it cost ~1 s of every inventory job.
    times = Time(jd_utc[ok], format="jd", scale="utc")
    times.delta_ut1_utc = np.zeros(times.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Greenwich sidereal time without the TIO locator (no polar motion, so no IERS table:
        # arcseconds, nothing for this split), plus the site's longitude.
        lst = times.sidereal_time("apparent", longitude="greenwich") + site["longitude_deg"] * u.deg
        sun = get_sun(times)
    hour_angle = (lst - sun.ra).wrap_at(24 * u.hourangle).hour
    out[ok] = np.where(hour_angle < 12.0, "dusk", "dawn")
    return out


def _records(paths, instrument, shape, check_pixels, workers=1):
    """:func:`_contained_record` of each path, in order; ``workers`` > 1 forks that many processes
    (each file's header parsing and pixel checks are independent, and mostly Python-bound)."""
    if workers <= 1 or len(paths) < 2 * MIN_FILES_PER_WORKER:
        return [_contained_record(p, instrument, shape, check_pixels) for p in paths]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    work = partial(_contained_record, instrument=instrument, expected_shape=shape, check_pixels=check_pixels)
    n = min(int(workers), len(paths) // MIN_FILES_PER_WORKER)
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(work, paths, chunksize=max(1, len(paths) // (8 * n))))


#: Fewer files than this per worker process are read in this process (forking costs ~10 ms).
MIN_FILES_PER_WORKER = 20


def build_inventory(paths, instrument, discard_n_first_science=0, check_pixels=True, records_path=None,
                    workers=1):
    """Inventory table of a night's raw files.

    Parameters
    ----------
    paths : list of str
        Raw files of the night (any order; sorted by observation time in the output).
    instrument : dict
        Validated instrument configuration.
    discard_n_first_science : int
        The first N accepted science frames of each target are marked rejected (bandersnatch's
        setting, for frames taken while the telescope settles).
    check_pixels : bool
        Read every header-accepted frame's pixels (:mod:`bandersnake.ingest.vetting`: empty,
        NaN-filled, saturated and duplicate frames). Off only for header-only test trees.
    records_path : str or Path, optional
        Where the per-file records are kept between runs
        (:mod:`bandersnake.ingest.record_cache`): files unchanged since are not read again.
    workers : int
        Processes reading the files (the inventory runs alone at the start of a night).

    Returns
    -------
    astropy.table.Table
    """
    shape = instrument.get("shape")
    settings = settings_digest(instrument, shape, check_pixels)
    kept = load_records(records_path, settings)
    paths = [str(p) for p in paths]
    identities = {path: file_identity(path) for path in paths}
    fresh = [path for path in paths if kept.get(path) is None or identities[path] is None
             or kept[path][0] != identities[path]]
    made = dict(zip(fresh, _records(fresh, instrument, shape, check_pixels, workers)))
    records, rows = {}, []
    for path in paths:
        row = made[path] if path in made else dict(kept[path][1])
        records[path] = (identities[path], dict(row))  # as recorded: the night-wide checks below modify rows
        rows.append(row)
    if records_path is not None:
        n_kept = sum(1 for path, (identity, _) in records.items() if path in kept and kept[path][0] == identity)
        log.info("inventory: %d of %d files unchanged since the last run (records kept), %d read",
                 n_kept, len(rows), len(rows) - n_kept)
        save_records(records_path, settings, records)
    if shape is None:
        # No fixed shape: the most common shape of accepted frames is the night's.
        shapes = [(r["naxis2"], r["naxis1"]) for r in rows if r["accepted"]]
        if shapes:
            common = max(set(shapes), key=shapes.count)
            for r in rows:
                if r["accepted"] and (r["naxis2"], r["naxis1"]) != common:
                    r["accepted"], r["reason"] = False, f"shape {(r['naxis2'], r['naxis1'])} differs from the night's {common}"
    if not rows:
        raise BandersnakeError("no raw files to inventory")
    reject_duplicates(rows)
    rows.sort(key=lambda r: (r["jd_mid_utc"] if np.isfinite(r["jd_mid_utc"]) else np.inf, r["file"]))
    if discard_n_first_science:
        seen = {}
        for r in rows:
            if r["type"] == "science" and r["accepted"]:
                seen[r["target"]] = seen.get(r["target"], 0) + 1
                if seen[r["target"]] <= discard_n_first_science:
                    r["accepted"], r["reason"] = False, "discard_n_first_science"
    table = Table(rows=rows, names=list(rows[0].keys()))
    table["session"] = sun_sessions(table["jd_mid_utc"], instrument["site"])
    table["exptime"].unit = u.s
    table["jd_mid_utc"].unit = u.day
    table.meta["comments"] = [
        "bandersnake inventory: one row per raw file; jd_mid_utc at mid-exposure (UTC);",
        "session from the Sun's hour angle at the site (dusk: after local noon).",
    ]
    return table


def list_files(table, frame_type, **match):
    """Paths of accepted frames of ``frame_type`` whose columns equal ``match`` (e.g. ``filter='z'``)."""
    keep = (np.asarray(table["type"]) == frame_type) & np.asarray(table["accepted"], dtype=bool)
    for column, value in match.items():
        keep &= np.asarray(table[column]) == value
    return [str(p) for p in np.asarray(table["path"])[keep]]


def write_lists(table, lists_dir, run):
    """Write bandersnatch's ``.list`` files (one path per line) into ``lists_dir``.

    ``<run>_bias.list``, ``<run>_dark.list``, ``<run>_flat_<F>.list`` with ``_dusk``/``_dawn``
    splits, and ``<run>_image_<TARGET>.list``.
    """
    lists_dir = Path(lists_dir)
    lists_dir.mkdir(parents=True, exist_ok=True)
    lists = {f"{run}_bias.list": list_files(table, "bias"), f"{run}_dark.list": list_files(table, "dark")}
    flat_filters = sorted(set(table["filter"][(table["type"] == "flat") & table["accepted"]]))
    for flt in flat_filters:
        lists[f"{run}_flat_{flt}.list"] = list_files(table, "flat", filter=flt)
        for session in ("dusk", "dawn"):
            lists[f"{run}_flat_{flt}_{session}.list"] = list_files(table, "flat", filter=flt, session=session)
    for target in sorted(set(table["target"][(table["type"] == "science") & table["accepted"]])):
        lists[f"{run}_image_{target}.list"] = list_files(table, "science", target=target)
    for name, paths in lists.items():
        write_text("".join(f"{os.path.abspath(p)}\n" for p in paths), lists_dir / name)
    return sorted(lists)


def summarize(table):
    """Human-readable counts per type and the rejected frames with their reasons."""
    lines = []
    for frame_type in FRAME_TYPES + ("unknown",):
        sel = table["type"] == frame_type
        if sel.any():
            lines.append(f"{frame_type:8s}: {int((sel & table['accepted']).sum())} accepted, {int((sel & ~table['accepted']).sum())} rejected")
    lines += time_lines(table)
    for row in table[~np.asarray(table["accepted"], dtype=bool)]:
        lines.append(f"rejected {row['file']}: {row['reason']}")
    return lines


def time_lines(table):
    """Where the accepted frames' times came from and the time warnings, each with its frame count.

    ``times: DATE-OBS (zone -07:00) for 80 frames``; ``time warning (80 frames, e.g. x.fits):
    MJD-OBS differs from the time used ...``. Inventories written before these columns existed
    give no line.
    """
    if "time_source" not in table.colnames:
        return []
    ok = np.asarray(table["accepted"], dtype=bool)
    lines = []
    sources = [str(s) for s in np.asarray(table["time_source"])[ok] if str(s)]
    for source in sorted(set(sources)):
        lines.append(f"times: {source} for {sources.count(source)} frame(s)")
    groups = {}
    for row in table[ok]:
        for warning in str(row["time_warning"] or "").split("; "):
            if warning and warning != "--":
                # Numbers vary frame to frame: group on the text without them.
                key = re.sub(r"[+-]?\d+(\.\d+)?", "#", warning)
                groups.setdefault(key, []).append((row["file"], warning))
    for items in groups.values():
        file, warning = items[0]
        lines.append(f"time warning ({len(items)} frame(s), e.g. {file}): {warning}")
    return lines


def make_inventory(paths, instrument, out_table, lists_dir, run="1", discard_n_first_science=0, night="",
                   records_path=None, workers=1):
    """Build, check and write a night's inventory and ``.list`` files.

    ``records_path``, ``workers``: see :func:`build_inventory` (the workflow keeps the records beside
    the inventory and reads with the rule's threads).

    Raises
    ------
    BandersnakeError
        When the night has no raw files or no accepted science frame.
    """
    if not paths:
        raise BandersnakeError(f"night {night}: no raw frames (.fits, .fits.gz, .fits.fz) were found")
    table = build_inventory(paths, instrument, discard_n_first_science, records_path=records_path, workers=workers)
    for line in summarize(table):
        (log.warning if line.startswith("time warning") else log.info)("%s", line)
    with atomic_path(out_table) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    write_lists(table, lists_dir, run)
    if not ((table["type"] == "science") & table["accepted"]).any():
        raise BandersnakeError(
            f"night {night}: no usable science frame among {len(table)} files "
            "(each file's type and reason are in this job's log)")
    return table


def raw_files(directory):
    """Sorted raw FITS files directly in ``directory`` (``.fits``, ``.fit``, ``.fits.gz``, ``.fits.fz``).

    ``directory`` may also be a list of folders (a night spread over several, e.g. ASTEP's
    ``-CAMS`` and ``-CAMS_SKYFLAT``): the files of all of them, sorted by path.
    """
    if isinstance(directory, (list, tuple)):
        return sorted(f for d in directory for f in raw_files(d))
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(str(directory / e.name) for e in os.scandir(directory) if e.is_file() and is_raw_fits_name(e.name))


def raw_fingerprint(paths):
    """Digest of the names, sizes (bytes) and modification times (ns) of ``paths``.

    The inventory job takes it as a parameter instead of declaring every raw frame as an input:
    Snakemake re-runs the job when a frame is added, removed or replaced (its parameters changed)
    at a small fraction of the cost of 1000 declared inputs per night when building the DAG.
    A missing file counts as size and time -1.
    """
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        digest.update(f"{path}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()


def exptime_tag(exptime):
    """Exposure time (s) as it appears in file names: ``30``, ``12.5``, ``0.001`` (no exponent)."""
    return np.format_float_positional(float(exptime), precision=6, trim="-")


def exposure_times(table, frame_type, rtol=0.01):
    """Distinct exposure times (s) of the accepted frames of ``frame_type``, sorted.

    Times within ``rtol`` (relative) of each other are one group, represented by its first
    (smallest) member: 29.999 s and 30.0 s are the same exposure.
    """
    sel = (np.asarray(table["type"]) == frame_type) & np.asarray(table["accepted"], dtype=bool)
    groups = []
    for t in sorted(float(v) for v in np.asarray(table["exptime"])[sel] if np.isfinite(v)):
        if not groups or abs(t - groups[-1]) > rtol * groups[-1] + 1e-3:
            groups.append(t)
    return groups


def list_files_exptime(table, frame_type, exptime, rtol=0.01, **match):
    """Like :func:`list_files`, keeping frames whose exposure time is ``exptime`` (s) within ``rtol``."""
    keep = (np.asarray(table["type"]) == frame_type) & np.asarray(table["accepted"], dtype=bool)
    t = np.asarray(table["exptime"], dtype=float)
    with np.errstate(invalid="ignore"):
        keep &= np.abs(t - float(exptime)) <= rtol * float(exptime) + 1e-3
    for column, value in match.items():
        keep &= np.asarray(table[column]) == value
    return [str(p) for p in np.asarray(table["path"])[keep]]


def dark_plan(table, needed_exptimes, min_frames=3, rtol=0.01):
    """Which master dark serves each needed exposure time.

    Parameters
    ----------
    table : astropy.table.Table
        Night inventory.
    needed_exptimes : iterable of float
        Exposure times (s) of the frames to calibrate (science, flats).
    min_frames : int
        Accepted darks of one exposure time needed for an exposure-matched master.
    rtol : float

    Returns
    -------
    dict
        ``{exptime: matched_exptime or None}``; None means no (or too few) darks of that
        exposure: the all-exposure master dark (ADU/s) is scaled, with a warning.
    """
    plan = {}
    available = exposure_times(table, "dark", rtol)
    for t in needed_exptimes:
        match = next((d for d in available if abs(d - t) <= rtol * t + 1e-3), None)
        if match is not None and len(list_files_exptime(table, "dark", match, rtol)) < min_frames:
            match = None
        plan[float(t)] = match
    return plan


def read_inventory(path):
    """Read an inventory table written by :func:`make_inventory`."""
    return Table.read(path, format="ascii.ecsv")
