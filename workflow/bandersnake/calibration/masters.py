"""Master calibrations: bias, dark, flat and bad-pixel map, with the documented fallback chain.

Products (see docs/ARCHITECTURE.md):

* ``master_bias.fits``: float32, ADU; ``RDNOISE`` (e-) from pairwise bias differences.
* ``master_dark.fits``: float32, ADU/s; each frame bias-subtracted and divided by its own
  exposure time; ``DARKCUR`` (e-/s/px) = gain * median of the central region.
* ``master_flat_<FILTER>.fits``: float32, median 1 over the illuminated area; each flat is bias-
  and dark-corrected and normalised by its own level before combining (bandersnatch mixed
  twilight levels); dusk and dawn are combined separately and then averaged.
* ``bad_pixel_map.fits``: uint8 bitmask, 1 hot (dark), 2 dead/low response (flat).

Every raw frame goes through :func:`overscan_and_trim` first. Unreadable or mis-shaped frames
are skipped with a logged reason. When a night has too few usable frames of a type the master
comes from, in order: the nearest earlier night's master of the same instrument within
``fallback_max_days``; for flats, ``master_flats.yaml`` by date; the configured backup file.
The choice is logged and written to the header (``FALLBACK``); with nothing available
:class:`~bandersnake.errors.CalibrationMissing` says what to supply.
"""

import datetime as _dt
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..config import load_yaml, parse_night_id
from ..errors import CalibrationMissing, ConfigError, FrameError
from ..fitsio import read_image, write_fits
from .stats import MAD_TO_SIGMA

log = logging.getLogger(__name__)

# Read noise is the median over at most this many consecutive bias pairs: each pair of 2k x 2k
# frames already measures it to 0.05 %, and a pair costs ~0.2 s.
RN_MAX_PAIRS = 8
SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


# --------------------------------------------------------------------------------------------
# overscan and trim
# --------------------------------------------------------------------------------------------
def parse_section(section):
    """Numpy slices ``(rows, cols)`` of a FITS section ``[x1:x2,y1:y2]`` (1-based, inclusive).

    Raises
    ------
    ConfigError
        When the string is not of that form or a range is reversed/empty.
    """
    match = SECTION.match(str(section).strip())
    if match is None:
        raise ConfigError(f"section {section!r} is not of the form [x1:x2,y1:y2] (1-based, inclusive)")
    x1, x2, y1, y2 = (int(g) for g in match.groups())
    if x1 < 1 or y1 < 1 or x2 < x1 or y2 < y1:
        raise ConfigError(f"section {section!r}: ranges must be increasing and start at 1 or more")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def section_slices(section, shape, what):
    """Slices of ``section`` (see :func:`parse_section`); ConfigError naming ``what`` when it
    extends beyond a frame of ``shape`` (ny, nx)."""
    rows, cols = parse_section(section)
    if rows.stop > shape[0] or cols.stop > shape[1]:
        raise ConfigError(f"{what} {section!r} extends beyond the {shape[1]}x{shape[0]} (nx x ny) frame")
    return rows, cols


def overscan_line_medians(region):
    """Median of each line of an overscan region along its long axis (ADU), and that axis.

    One median per row for a strip of columns, per column for a strip of rows: ccdproc's
    ``subtract_overscan(median=True, overscan_axis=None)`` rule.
    """
    axis = 0 if region.shape[1] > region.shape[0] else 1
    return np.median(region, axis=axis), axis


def overscan_and_trim(data, instrument, model="constant"):
    """Subtract the overscan and trim, as set by the instrument file.

    The overscan region (``overscan_section``) is collapsed to one median per line along its
    long axis (per row for a strip of columns), as ``ccdproc.subtract_overscan(median=True)``.
    ``model='constant'`` subtracts the mean of those line medians (identical to ccdproc with
    ``model=Const1D()``; adds no line noise); ``model='line'`` subtracts each line's median
    (ccdproc with ``model=None``). Then the frame is cut to ``trim_section``.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Raw frame (ADU).
    instrument : dict
        Instrument configuration; ``overscan_section`` / ``trim_section`` are FITS-style
        ``[x1:x2,y1:y2]`` strings (1-based, inclusive) or None.
    model : {'constant', 'line'}

    Returns
    -------
    ndarray of float32
        Overscan-subtracted, trimmed frame (ADU). A new array.
    """
    osec = instrument.get("overscan_section")
    tsec = instrument.get("trim_section")
    # float64 only while an overscan is subtracted (ccdproc-identical line medians).
    data = np.asarray(data, dtype=np.float64 if osec else np.float32)
    if osec:
        rows, cols = section_slices(osec, data.shape, "overscan_section")
        lines, axis = overscan_line_medians(data[rows, cols])
        if model == "constant":
            data = data - lines.mean()
        elif model == "line":
            if lines.size != data.shape[1 - axis]:
                raise ConfigError(f"overscan_section {osec!r} must span the full frame for model='line'")
            data = data - (lines[:, None] if axis == 1 else lines[None, :])
        else:
            raise ConfigError(f"overscan model {model!r} is not 'constant' or 'line'")
    if tsec:
        rows, cols = section_slices(tsec, data.shape, "trim_section")
        data = data[rows, cols]
    return np.array(data, dtype=np.float32)


def calibrated_shape(instrument):
    """Shape ``(ny, nx)`` of a frame after trimming, or None when the instrument has no shape."""
    shape = instrument.get("shape")
    if not shape:
        return None
    tsec = instrument.get("trim_section")
    if not tsec:
        return tuple(shape)
    rows, cols = section_slices(tsec, tuple(shape), "trim_section")
    return rows.stop - rows.start, cols.stop - cols.start


def load_raw(path, instrument):
    """Read a raw frame and apply :func:`overscan_and_trim`.

    Returns
    -------
    data : ndarray of float32
        ADU, trimmed.
    header : astropy.io.fits.Header

    Raises
    ------
    FrameError
        Unreadable file, wrong raw shape, or sections outside the frame.
    """
    shape = instrument.get("shape")
    data, header = read_image(path, extension=instrument.get("image_extension", 0),
                              expected_shape=tuple(shape) if shape else None)
    try:
        return overscan_and_trim(data, instrument), header
    except ConfigError as err:
        raise FrameError(path, str(err)) from None


def exposure_time(header, instrument, path):
    """Exposure time (s) from the instrument's exptime keyword; FrameError when absent or < 0."""
    key = instrument.get("keywords", {}).get("exptime", "EXPTIME")
    try:
        value = float(header[key])
    except (KeyError, TypeError, ValueError):
        raise FrameError(path, f"no usable exposure time in {key}") from None
    if not np.isfinite(value) or value < 0:
        raise FrameError(path, f"{key}={value} is not a valid exposure time")
    return value


def read_master(path, expected_shape=None):
    """Read a master calibration (float32) and its header; FrameError on any problem."""
    return read_image(path, expected_shape=expected_shape)


# --------------------------------------------------------------------------------------------
# fallback chain
# --------------------------------------------------------------------------------------------
@dataclass
class Fallback:
    """Where masters come from when a night lacks frames.

    Parameters
    ----------
    night : str
        ``<INST>_<YYYYMMDD>`` of the night being built.
    search_roots : sequence of str or Path
        Directories holding ``<INST>_<YYYYMMDD>/calib/`` night folders (work dir, results dir).
    max_days : int
        Earlier nights at most this many days before ``night`` are considered.
    backup_bias, backup_dark : str, optional
        ``calibration_params.backup_master_bias`` / ``backup_master_dark``.
    backup_flats : dict
        ``calibration_params.backup_master_flats``: filter -> path.
    master_flats_file : str, optional
        bandersnatch's ``master_flats.yaml`` (``filters: {F: [{start_date, path}, ...]}``).
    force_backup_flats : bool
        Skip the night's own flats and use ``master_flats_file`` / ``backup_flats`` first.
    skip : tuple of str
        ``calibration_params.skip``: calibrations the night does without (:func:`write_skipped_master`).
    raw_shape : tuple of int, optional
        ``(ny, nx)`` of the night's raw science frames, for skipped masters when the instrument
        file gives no shape.
    """

    night: str = None
    search_roots: tuple = ()
    max_days: int = 30
    backup_bias: str = None
    backup_dark: str = None
    backup_flats: dict = field(default_factory=dict)
    master_flats_file: str = None
    force_backup_flats: bool = False
    skip: tuple = ()
    raw_shape: tuple = None

    @classmethod
    def from_settings(cls, night, calibration_params, search_roots=(), master_flats_file=None, raw_shape=None):
        """Build from a night's validated ``calibration_params`` section."""
        cp = calibration_params or {}
        return cls(night=night, search_roots=tuple(search_roots), max_days=cp.get("fallback_max_days", 30),
                   backup_bias=cp.get("backup_master_bias"), backup_dark=cp.get("backup_master_dark"),
                   backup_flats=dict(cp.get("backup_master_flats") or {}), master_flats_file=master_flats_file,
                   force_backup_flats=bool(cp.get("force_backup_flats", False)),
                   skip=tuple(cp.get("skip") or ()), raw_shape=tuple(raw_shape) if raw_shape else None)

    def skips(self, kind):
        """Whether calibration ``kind`` ('bias', 'dark', 'flat') is skipped this night."""
        return kind in (self.skip or ())


def _night_date(night):
    inst, date = parse_night_id(night)
    return inst, _dt.datetime.strptime(date, "%Y%m%d").date()


def earlier_night_masters(fallback, name):
    """Masters ``<root>/<INST>_<date>/calib/<name>`` of earlier nights, nearest first.

    Only nights 1..``max_days`` days before ``fallback.night`` of the same instrument count,
    and only masters built from their own frames (``FALLBACK`` absent or 'none'), so a
    fallback never chains beyond the window.

    Returns
    -------
    list of (night, Path)
    """
    if fallback is None or not fallback.night:
        return []
    inst, date = _night_date(fallback.night)
    found = []
    for order, root in enumerate(fallback.search_roots):
        root = Path(root)
        if not root.is_dir():
            continue
        for folder in root.glob(f"{inst}_*"):
            try:
                other_inst, other_date = _night_date(folder.name)
            except (ConfigError, ValueError):
                continue
            delta = (date - other_date).days
            path = folder / "calib" / name
            if other_inst == inst and 0 < delta <= fallback.max_days and path.is_file():
                found.append((delta, order, folder.name, path))
    found.sort()
    seen, out = set(), []
    for _, _, night, path in found:
        if night not in seen:
            seen.add(night)
            out.append((night, path))
    return out


def master_flat_from_yaml(master_flats_file, filter_name, night_date):
    """Path from bandersnatch's ``master_flats.yaml``: most recent ``start_date <= night_date``.

    Parameters
    ----------
    master_flats_file : str or Path
    filter_name : str
    night_date : str
        ``YYYYMMDD``.

    Returns
    -------
    Path or None
        Relative paths are taken from the working directory, else from the YAML's folder.
    """
    if not master_flats_file or not Path(master_flats_file).is_file():
        return None
    data = load_yaml(master_flats_file)
    filters = data.get("filters") if isinstance(data, dict) else None
    if not isinstance(filters, dict):
        raise ConfigError(f"{master_flats_file}: expected 'filters: {{<FILTER>: [{{start_date, path}}, ...]}}'")
    entries = filters.get(filter_name) or []
    best = None
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(f"{master_flats_file}: filters.{filter_name} entries must be {{start_date, path}}")
        start = str(entry.get("start_date", "")).strip()
        if re.fullmatch(r"\d{8}", start) and start <= night_date and "path" in entry:
            if best is None or start > best[0]:
                best = (start, entry["path"])
    if best is None:
        return None
    path = Path(best[1])
    if not path.is_absolute() and not path.exists():
        path = Path(master_flats_file).parent / path
    return path


def _adopt(src, out, label, caltype, expected_shape, filter_name=None):
    """Copy master ``src`` to ``out`` with ``FALLBACK=label``; None (logged) when unusable."""
    try:
        data, header = read_image(src, expected_shape=expected_shape)
    except FrameError as err:
        log.warning("fallback candidate %s unusable: %s", src, err.reason)
        return None
    header["CALTYPE"] = caltype
    if filter_name is not None:
        header["FILTER"] = filter_name
    # Long labels (paths) go to CONTINUE cards, so no comment that would force truncation.
    header["FALLBACK"] = label
    header.add_history(f"bandersnake fallback: copied from {src}")
    write_fits(fits.PrimaryHDU(data.astype(np.float32), _clean_header(header)), out)
    log.info("%s: using %s (%s)", Path(out).name, src, label)
    return {"path": str(out), "fallback": label, "source": str(src), "header": header}


def _clean_header(header):
    header = header.copy()
    for key in ("BZERO", "BSCALE", "BLANK", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "SIMPLE"):
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def _is_own_master(path):
    try:
        value = str(fits.getheader(path).get("FALLBACK", "none")).strip().lower()
    except Exception:  # unreadable candidates are reported by _adopt
        return True
    return value in ("", "none")


def resolve_fallback(kind, out, fallback, expected_shape=None, filter_name=None, reason="",
                     need_hint="", use_earlier=True):
    """Write a fallback master for ``kind`` ('bias', 'dark', 'flat') to ``out``.

    Tries the earlier nights, then (flats) ``master_flats.yaml``, then the backup path.

    Returns
    -------
    dict
        ``path``, ``fallback`` (the FALLBACK label), ``source``, ``header``.

    Raises
    ------
    CalibrationMissing
        When nothing along the chain is usable; the message says what to supply.
    """
    caltype = kind.upper()
    tried = []
    fb = fallback or Fallback()
    if use_earlier:
        for night, path in earlier_night_masters(fb, Path(out).name):
            if not _is_own_master(path):
                log.info("skipping %s: it is itself a fallback", path)
                continue
            got = _adopt(path, out, f"earlier_night {night}", caltype, expected_shape, filter_name)
            if got:
                return got
        tried.append(f"no {Path(out).name} of an earlier {_inst(fb)} night within "
                     f"fallback_max_days={fb.max_days} under {[str(r) for r in fb.search_roots] or 'no search root'}")
    if kind == "flat":
        got, note = _flat_backups(out, fb, filter_name, expected_shape)
        if got:
            return got
        tried.extend(note)
    else:
        backup = fb.backup_bias if kind == "bias" else fb.backup_dark
        key = f"calibration_params.backup_master_{kind}"
        if backup:
            got = _adopt(backup, out, f"backup {backup}", caltype, expected_shape)
            if got:
                return got
            tried.append(f"{key}={backup} is unusable")
        else:
            tried.append(f"{key} is not set")
    key = f"calibration_params.backup_master_{'flats: {' + str(filter_name) + ': ...}' if kind == 'flat' else kind}"
    raise CalibrationMissing(
        f"no master {kind}{' for filter ' + str(filter_name) if filter_name else ''}"
        f"{' for night ' + fb.night if fb.night else ''}: {reason}; " + "; ".join(tried)
        + f". Supply {need_hint}, or set {key} to a master {kind} FITS file.")


def _inst(fb):
    try:
        return parse_night_id(fb.night)[0] if fb.night else "same-instrument"
    except ConfigError:
        return fb.night


def _flat_backups(out, fb, filter_name, expected_shape):
    notes = []
    if fb.master_flats_file and fb.night:
        _, date = parse_night_id(fb.night)
        path = master_flat_from_yaml(fb.master_flats_file, filter_name, date)
        if path is not None:
            got = _adopt(path, out, f"master_flats.yaml {path}", "FLAT", expected_shape, filter_name)
            if got:
                return got, notes
            notes.append(f"{fb.master_flats_file} points to unusable {path}")
        else:
            notes.append(f"{fb.master_flats_file} has no {filter_name} entry with start_date <= {date}")
    else:
        notes.append("no master_flats.yaml given" if not fb.master_flats_file
                     else "no night date to look up master_flats.yaml")
    backup = (fb.backup_flats or {}).get(filter_name)
    if backup:
        got = _adopt(backup, out, f"backup {backup}", "FLAT", expected_shape, filter_name)
        if got:
            return got, notes
        notes.append(f"calibration_params.backup_master_flats[{filter_name}]={backup} is unusable")
    else:
        notes.append(f"calibration_params.backup_master_flats has no {filter_name} entry")
    return None, notes




# --------------------------------------------------------------------------------------------
# skipped calibrations (calibration_params.skip)
# --------------------------------------------------------------------------------------------
SKIP_NOTES = {"bias": "constant pedestal", "dark": "no dark subtracted", "flat": "unit flat"}


def pedestal(instrument):
    """Bias level (ADU) subtracted when the bias is skipped, and where it comes from.

    With an ``overscan_section`` every frame's overscan level is already subtracted, so the
    pedestal left is 0; else the instrument file's ``bias_level_adu``.

    Raises
    ------
    CalibrationMissing
        When the instrument file has neither.
    """
    if instrument.get("overscan_section"):
        return 0.0, f"overscan {instrument['overscan_section']}"
    level = instrument.get("bias_level_adu")
    if level is None:
        raise CalibrationMissing(
            f"calibration_params.skip has 'bias' but instrument {instrument.get('name', '?')} has neither "
            "bias_level_adu nor overscan_section: set bias_level_adu (the camera's bias level, ADU; "
            "bandersnake-init-instrument estimates it) in its instrument file")
    return float(level), "bias_level_adu"


def skipped_shape(instrument, raw_shape=None):
    """Shape ``(ny, nx)`` of a skipped master: the instrument's (trimmed), else ``raw_shape`` trimmed."""
    shape = calibrated_shape(instrument)
    if shape is not None:
        return shape
    if not raw_shape:
        raise CalibrationMissing("a skipped calibration needs the frames' shape: set shape in the instrument file")
    tsec = instrument.get("trim_section")
    if not tsec:
        return tuple(int(v) for v in raw_shape)
    rows, cols = section_slices(tsec, tuple(raw_shape), "trim_section")
    return rows.stop - rows.start, cols.stop - cols.start


def write_skipped_master(kind, out, instrument, raw_shape=None, filter_name=None):
    """Write the stand-in master of a skipped calibration.

    * bias: the constant :func:`pedestal` (ADU); ``RDNOISE`` is the instrument's ``read_noise_e``
      (not measured);
    * dark: zeros (ADU/s); ``DARKCUR`` 0: dark current stays in the sky level, which the local
      sky subtraction removes and whose noise the sky term of the noise model carries;
    * flat: ones.

    Headers: ``FALLBACK = 'skipped'``, ``CALSKIP = T`` and ``SKIPNOTE`` saying what stands in.

    Returns
    -------
    dict
        ``path``, ``fallback`` ('skipped'), ``ncombine`` (0), ``skipped`` ([]), and ``rdnoise_e``
        (bias), ``darkcur_e`` (dark), ``level_adu`` (bias).
    """
    shape = skipped_shape(instrument, raw_shape)
    header = fits.Header()
    header["CALTYPE"] = kind.upper()
    header["NCOMBINE"] = (0, "frames combined")
    header["FALLBACK"] = "skipped"
    header["CALSKIP"] = (True, "skipped (calibration_params.skip)")
    extra = {}
    if kind == "bias":
        level, how = pedestal(instrument)
        data = np.full(shape, level, np.float32)
        header["BUNIT"] = "adu"
        header["BIASLEV"] = (level, "[ADU] constant pedestal")
        header["RDNOISE"] = (float(instrument["read_noise_e"]), "[e-] instrument file's, not measured")
        header["GAIN"] = (float(instrument["gain_e_per_adu"]), "gain used (e-/ADU)")
        note = f"bias skipped: constant pedestal {level:g} ADU from {how}"
        extra = {"rdnoise_e": float(instrument["read_noise_e"]), "level_adu": level}
    elif kind == "dark":
        data = np.zeros(shape, np.float32)
        header["BUNIT"] = "adu / s"
        header["DARKCUR"] = (0.0, "[e-/s/px] dark skipped, not measured")
        note = "dark skipped: no dark subtracted (dark current stays in the sky level)"
        extra = {"darkcur_e": 0.0}
    elif kind == "flat":
        data = np.ones(shape, np.float32)
        header["BUNIT"] = ""
        header["FILTER"] = filter_name or ""
        header["ILLUMFR"] = (1.0, "fraction of pixels illuminated")
        note = "flat skipped: unit flat (no pixel-response correction)"
    else:
        raise ValueError(f"unknown calibration {kind!r}")
    header["SKIPNOTE"] = note
    header.add_history(f"bandersnake: {note}")
    write_fits(fits.PrimaryHDU(data, header), out)
    log.warning("%s: %s (calibration_params.skip)", Path(out).name, note)
    return dict({"path": str(out), "fallback": "skipped", "ncombine": 0, "skipped": []}, **extra)


def _skipping(fallback, kind):
    return fallback is not None and fallback.skips(kind)


def calibration_sources(counts, calibration_params, fallback, filters):
    """Where each master of a night will come from, decided from frame counts before any job runs.

    Parameters
    ----------
    counts : dict
        Accepted frames per calibration: ``{"bias": n, "dark": n, "flat": {filter: n}}``.
    calibration_params : dict
        The night's validated ``calibration_params`` (``min_*_frames``, ``skip``, backups).
    fallback : Fallback
        Earlier-night search, ``master_flats.yaml`` and backup paths of the night.
    filters : iterable of str
        Science filters (a master flat each).

    Returns
    -------
    dict
        ``{"bias": text, "dark": text, "flat <F>": text}``; text is ``"frames (n)"``,
        ``"skipped"``, ``"earlier night <night>"``, ``"backup <path>"``, ``"master_flats.yaml <path>"``
        or ``None`` when nothing will give that master.
    """
    cp = calibration_params or {}
    fb = fallback or Fallback()
    skip = set(cp.get("skip") or ()) | set(fb.skip or ())
    out = {}

    def earlier(name):
        found = [night for night, path in earlier_night_masters(fb, name) if _is_own_master(path)]
        return f"earlier night {found[0]}" if found else None

    for kind in ("bias", "dark"):
        n = int(counts.get(kind, 0))
        backup = fb.backup_bias if kind == "bias" else fb.backup_dark
        if kind in skip:
            out[kind] = "skipped"
        elif n >= int(cp.get(f"min_{kind}_frames", 3)):
            out[kind] = f"frames ({n})"
        else:
            out[kind] = (earlier(f"master_{kind}.fits")
                         or (f"backup {backup}" if backup and Path(backup).is_file() else None))
    for flt in sorted(filters):
        n = int((counts.get("flat") or {}).get(flt, 0))
        key = f"flat {flt}"
        if "flat" in skip:
            out[key] = "skipped"
            continue
        if n >= int(cp.get("min_flat_frames", 3)) and not fb.force_backup_flats:
            out[key] = f"frames ({n})"
            continue
        yaml_path = None
        if fb.master_flats_file and fb.night:
            try:
                yaml_path = master_flat_from_yaml(fb.master_flats_file, flt, parse_night_id(fb.night)[1])
            except ConfigError:
                yaml_path = None
        backup = (fb.backup_flats or {}).get(flt)
        out[key] = ((f"master_flats.yaml {yaml_path}" if yaml_path is not None and Path(yaml_path).is_file() else None)
                    or (f"backup {backup}" if backup and Path(backup).is_file() else None)
                    or (f"frames ({n})" if n >= int(cp.get("min_flat_frames", 3)) else None)
                    or earlier(f"master_flat_{flt}.fits"))
    return out


def check_calibration_sources(sources, counts, calibration_params, night=""):
    """Raise one :class:`CalibrationMissing` naming every master with no source and every way out.

    ``sources`` from :func:`calibration_sources`. Nothing happens when each master has a source.
    """
    cp = calibration_params or {}
    missing = [k for k, v in sources.items() if v is None]
    if not missing:
        return
    kinds = sorted({k.split()[0] for k in missing}, key=("bias", "dark", "flat").index)
    parts = []
    for key in missing:
        kind = key.split()[0]
        n = counts.get(kind, 0) if kind != "flat" else (counts.get("flat") or {}).get(key.split()[1], 0)
        parts.append(f"{key}: {n} usable frame(s), min_{kind}_frames={cp.get(f'min_{kind}_frames', 3)}")
    flats = [k.split()[1] for k in missing if k.startswith("flat ")]
    ways = [f"add the frames to the night's raw folder ({', '.join(kinds)})",
            f"build an earlier night of the same instrument within fallback_max_days={cp.get('fallback_max_days', 30)}"]
    backups = [f"backup_master_{k}: <master FITS>" for k in kinds if k != "flat"]
    if flats:
        backups.append("backup_master_flats: {" + ", ".join(f"{f}: <master FITS>" for f in flats) + "}")
        ways.append("list master flats by date in master_flats.yaml")
    ways.append("set calibration_params " + "; ".join(backups))
    ways.append(f"or do without them: calibration_params.skip: [{', '.join(kinds)}] "
                "(bias: constant bias_level_adu or the overscan; dark: none; flat: unit flat)")
    raise CalibrationMissing(
        f"night {night}: no source for {len(missing)} master calibration(s): " + "; ".join(parts)
        + ". Ways out (per night in config/nights/<night>.yaml, or for every night of the instrument "
        "in its night_settings): " + "; ".join(ways) + ".")


def calibration_counts(table):
    """Accepted calibration frames of a night's inventory: ``{"bias": n, "dark": n, "flat": {F: n}}``,
    and its science filters."""
    types = np.asarray(table["type"]).astype(str)
    ok = np.asarray(table["accepted"], dtype=bool)
    filters = np.asarray(table["filter"]).astype(str)
    flats = Counter(filters[(types == "flat") & ok])
    counts = {"bias": int(((types == "bias") & ok).sum()), "dark": int(((types == "dark") & ok).sum()),
              "flat": dict(flats)}
    return counts, sorted(set(filters[(types == "science") & ok]))


def check_night_calibrations(inventory_path, calibration_params, fallback, night=""):
    """Log where each master of the night comes from; raise one :class:`CalibrationMissing` naming
    every master that has no source and every way out (run by the first master job, master_bias)."""
    from ..ingest.inventory import read_inventory

    counts, filters = calibration_counts(read_inventory(inventory_path))
    sources = calibration_sources(counts, calibration_params, fallback, filters)
    for key, source in sources.items():
        log.info("%s: %s", key, source or "NO SOURCE")
    check_calibration_sources(sources, counts, calibration_params, night or (fallback.night if fallback else ""))
    return sources


# --------------------------------------------------------------------------------------------
# headers
# --------------------------------------------------------------------------------------------
def _master_header(caltype, bunit, used, skipped, clip, nlimit, extra=()):
    header = fits.Header()
    header["CALTYPE"] = caltype
    header["BUNIT"] = bunit
    header["NCOMBINE"] = (len(used), "frames combined")
    header["CLIPSIG"] = (float(clip), "MAD-sigma clip (1.4826*MAD, single pass)")
    header["CLIPNLIM"] = (int(nlimit), "highest values left out of centre/scale")
    for key, value in extra:
        header[key] = value
    header["FALLBACK"] = "none"
    for path in used:
        header.add_history(f"input: {path}")
    for path, reason in skipped:
        header.add_history(f"skipped: {path}: {reason}"[:2000])
    return header


def _reason_for(n_used, n_given, skipped, min_frames, kind):
    text = f"{n_used} usable {kind} frame(s) of {n_given} given, fewer than min_{kind}_frames={min_frames}"
    if skipped:
        text += " (skipped: " + "; ".join(f"{Path(str(p)).name}: {r}" for p, r in skipped[:3]) + ")"
    return text


def _scratch(out):
    return Path(out).parent


def _rej_fraction(result):
    n_finite_max = result.nframes
    return float(1.0 - result.ncombined.mean() / n_finite_max) if n_finite_max else 0.0


# --------------------------------------------------------------------------------------------
# bias
# --------------------------------------------------------------------------------------------
def read_noise_from_pairs(frames, clip=5.0):
    """Read noise (ADU) from differences of consecutive frames.

    Each difference ``a - b`` removes the fixed pattern. Its sigma is the standard deviation
    after rejecting values beyond ``clip`` MAD-sigma of the median (cosmic rays, unstable hot
    pixels), divided by sqrt(2). The MAD itself is not used as the estimate because on
    integer-valued raw data it is quantised (ARCSAT: MAD = 11 exactly, a 4 % step); the
    clipped std is not, and a 5-sigma clip removes only 6e-7 of a Gaussian's variance.
    The median over the pairs is returned.

    Parameters
    ----------
    frames : iterable of ndarray
        Overscan-corrected bias frames (ADU), at least two.
    clip : float
        Rejection threshold in MAD-sigma.

    Returns
    -------
    float
        Read noise (ADU), NaN with fewer than two frames.
    """
    estimates = []
    prev = None
    for frame in frames:
        if prev is not None:
            estimates.append(_pair_sigma(prev, frame, clip))
        prev = frame
    return float(np.median(estimates)) if estimates else float("nan")


def mad_std(values):
    """1.4826 x the median absolute deviation: the same numbers as ``astropy.stats.mad_std``,
    without importing astropy.stats (0.5 s per masters job, issue 22)."""
    values = np.asanyarray(values)
    return np.median(np.abs(values - np.median(values))) * MAD_TO_SIGMA  # astropy's order and dtype


def _pair_sigma(a, b, clip=5.0):
    diff = np.subtract(a, b, dtype=np.float32)
    diff = diff[np.isfinite(diff)]
    med = np.median(diff)
    keep = np.abs(diff - med) <= clip * mad_std(diff)
    return float(np.std(diff[keep], dtype=np.float64)) / np.sqrt(2.0)


def build_master_bias(paths, out, instrument, clip=5.0, nlimit=0, min_frames=3, memory_mb=1024,
                      fallback=None, threads=None):
    """Master bias (float32, ADU) with ``RDNOISE`` (e-) from pairwise differences.

    Parameters
    ----------
    paths : sequence of str
        Raw bias frames.
    out : str or Path
        Output FITS.
    instrument : dict
        Instrument configuration (``gain_e_per_adu``, sections, shape, extension).
    clip : float
        MAD-sigma clip (``bias_MAD_clip``).
    nlimit : int
        ``bias_MAD_nlimit`` (see :mod:`bandersnake.combine`).
    min_frames : int
        Fewer usable frames than this trigger the fallback chain (``min_bias_frames``).
    memory_mb : float
        Combine memory bound (``processing.combine_memory_mb``).
    fallback : Fallback, optional
    threads : int, optional

    Returns
    -------
    dict
        ``path``, ``fallback``, ``ncombine``, ``rdnoise_e``, ``rdnoise_adu``, ``level_adu``,
        ``skipped``.
    """
    if _skipping(fallback, "bias"):
        return write_skipped_master("bias", out, instrument, fallback.raw_shape)
    paths = [str(p) for p in paths]
    gain = float(instrument["gain_e_per_adu"])
    pair_sigmas = []
    prev = {}

    def loader(path):
        data, _ = load_raw(path, instrument)
        if len(pair_sigmas) < RN_MAX_PAIRS:
            if "frame" in prev and prev["frame"].shape == data.shape:
                pair_sigmas.append(_pair_sigma(prev["frame"], data))
            prev["frame"] = data
        else:
            prev.clear()
        return data

    stack, skipped = load_stack(paths, loader, calibrated_shape(instrument), memory_mb,
                                reserved_bytes_per_px=16, scratch_dir=_scratch(out))
    prev.clear()
    with stack:
        if stack.n < max(1, min_frames):
            got = resolve_fallback("bias", out, fallback, stack.shape or calibrated_shape(instrument),
                                   reason=_reason_for(stack.n, len(paths), skipped, min_frames, "bias"),
                                   need_hint=f"at least {min_frames} readable bias frames")
            return _summary(got, skipped, rdnoise_e=got["header"].get("RDNOISE"))
        result = stack.combine(clip, clip, nlimit, threads)
    rn_adu = float(np.median(pair_sigmas)) if pair_sigmas else float("nan")
    rn_e = rn_adu * gain
    level = float(np.nanmedian(result.data))
    header = _master_header("BIAS", "adu", result.used, skipped, clip, nlimit, extra=[
        ("RDNOISE", (_finite_or_none(rn_e), "read noise (e-), clipped std of bias pair diffs")),
        ("RDNADU", (_finite_or_none(rn_adu), "read noise (ADU)")),
        ("GAIN", (gain, "gain used (e-/ADU)")),
        ("REJFRAC", (round(_rej_fraction(result), 6), "fraction of values rejected")),
    ])
    write_fits(fits.PrimaryHDU(result.data, header), out)
    log.info("master bias %s: %d frames, median %.2f ADU, read noise %.3f ADU = %.3f e- (%d pairs)",
             out, result.nframes, level, rn_adu, rn_e, len(pair_sigmas))
    return {"path": str(out), "fallback": "none", "ncombine": result.nframes, "rdnoise_e": rn_e,
            "rdnoise_adu": rn_adu, "level_adu": level, "skipped": skipped}


def _finite_or_none(value):
    return float(value) if np.isfinite(value) else None


def _summary(got, skipped, **extra):
    out = {"path": got["path"], "fallback": got["fallback"], "ncombine": got["header"].get("NCOMBINE"),
           "skipped": skipped}
    out.update(extra)
    return out


# --------------------------------------------------------------------------------------------
# dark
# --------------------------------------------------------------------------------------------
def dark_level(dark):
    """Typical dark rate of a master dark (its unit): median of the central region.

    The central half of each axis (as for flat levels) keeps amplifier glow, which lives at
    corners and edges, out of the figure; on the simulator's small night (15 e-/s glow in one
    corner) the whole-frame median reads 5 % high, the central one matches the true level to
    0.2 %. The median ignores hot pixels.
    """
    centre = dark[central_region(dark.shape)]
    return float(np.median(centre[np.isfinite(centre)]))


def build_master_dark(paths, bias, out, instrument, clip=5.0, nlimit=0, min_frames=3, memory_mb=1024,
                      fallback=None, exptime=None, exptime_rtol=0.01, threads=None):
    """Master dark in ADU/s with ``DARKCUR`` (e-/s/px).

    Each frame: overscan/trim, minus the master bias, divided by its own exposure time.

    Parameters
    ----------
    paths : sequence of str
        Raw dark frames.
    bias : str or Path
        Master bias (ADU).
    out : str or Path
    instrument : dict
    clip, nlimit : float, int
        ``dark_MAD_clip``, ``dark_MAD_nlimit``.
    min_frames : int
        ``min_dark_frames``.
    memory_mb : float
    fallback : Fallback, optional
    exptime : float, optional
        Exposure-matched master: only frames with this exposure time (s, within
        ``exptime_rtol``) are used; the product is still in ADU/s.
    exptime_rtol : float
        Relative tolerance of the exposure-time match.
    threads : int, optional

    Returns
    -------
    dict
        ``path``, ``fallback``, ``ncombine``, ``darkcur_e``, ``skipped``.
    """
    if _skipping(fallback, "dark"):
        return write_skipped_master("dark", out, instrument, fallback.raw_shape)
    paths = [str(p) for p in paths]
    gain = float(instrument["gain_e_per_adu"])
    shape = calibrated_shape(instrument)
    bias_data, _ = read_master(bias, expected_shape=shape)
    shape = bias_data.shape

    def loader(path):
        data, header = load_raw(path, instrument)
        t = exposure_time(header, instrument, path)
        if t <= 0:
            raise FrameError(path, f"exposure time {t} s: cannot scale a dark")
        if exptime is not None and abs(t - exptime) > exptime_rtol * exptime + 1e-3:
            raise FrameError(path, f"exposure time {t} s does not match {exptime} s")
        if data.shape != shape:
            raise FrameError(path, f"shape {data.shape} differs from the master bias {shape}")
        data -= bias_data
        data /= np.float32(t)
        return data

    stack, skipped = load_stack(paths, loader, shape, memory_mb, reserved_bytes_per_px=4,
                                scratch_dir=_scratch(out))
    with stack:
        if stack.n < max(1, min_frames):
            got = resolve_fallback("dark", out, fallback, shape,
                                   reason=_reason_for(stack.n, len(paths), skipped, min_frames, "dark"),
                                   need_hint=f"at least {min_frames} readable dark frames"
                                   + (f" of {exptime} s" if exptime is not None else ""))
            return _summary(got, skipped, darkcur_e=got["header"].get("DARKCUR"))
        result = stack.combine(clip, clip, nlimit, threads)
    darkcur = gain * dark_level(result.data)
    header = _master_header("DARK", "adu / s", result.used, skipped, clip, nlimit, extra=[
        ("DARKCUR", (darkcur, "dark current (e-/s/px), gain * central median")),
        ("GAIN", (gain, "gain used (e-/ADU)")),
        ("DARKEXP", (float(exptime) if exptime is not None else "all", "exposure-matched time (s)")),
        ("REJFRAC", (round(_rej_fraction(result), 6), "fraction of values rejected")),
    ])
    header.add_history(f"bias: {bias}")
    write_fits(fits.PrimaryHDU(result.data, header), out)
    log.info("master dark %s: %d frames, dark current %.4f e-/s/px", out, result.nframes, darkcur)
    return {"path": str(out), "fallback": "none", "ncombine": result.nframes, "darkcur_e": darkcur,
            "skipped": skipped}


def build_master_dark_matched(paths_for_exptime, bias, out, exptime, instrument, **kwargs):
    """Exposure-matched master dark (``dark_exposure_matching``): frames of ``exptime`` s only.

    Same product and units as :func:`build_master_dark` (ADU/s); header ``DARKEXP`` = exptime.
    Keyword arguments are passed on to :func:`build_master_dark`.
    """
    return build_master_dark(paths_for_exptime, bias, out, instrument, exptime=float(exptime), **kwargs)


# --------------------------------------------------------------------------------------------
# flat
# --------------------------------------------------------------------------------------------
def central_region(shape, fraction=0.5):
    """Slices of the central ``fraction`` of each axis of ``shape`` (px)."""
    ny, nx = shape
    dy, dx = int(ny * (1 - fraction) / 2), int(nx * (1 - fraction) / 2)
    return slice(dy, ny - dy), slice(dx, nx - dx)


def flat_level(data):
    """Robust level of a flat (median of the central half in each axis), in the data's unit."""
    centre = data[central_region(data.shape)]
    return float(np.nanmedian(centre))


def illuminated_mask(flat, fraction=0.5):
    """Pixels receiving light: finite and above ``fraction`` of the central median."""
    level = flat_level(flat)
    with np.errstate(invalid="ignore"):
        return np.isfinite(flat) & (flat > fraction * level)


def normalise_flat(flat, fraction=0.5):
    """``flat`` divided by its median over the illuminated area (so that median is 1)."""
    mask = illuminated_mask(flat, fraction)
    if not mask.any():
        raise ValueError("flat has no illuminated pixel")
    return (flat / np.float32(np.median(flat[mask]))).astype(np.float32)


def build_master_flat(paths_dusk, paths_dawn, bias, dark, out, filter, instrument, clip=3.0, nlimit=0,
                      min_level=3000.0, max_level=50000.0, min_frames=3, memory_mb=1024, fallback=None,
                      threads=None):
    """Normalised master flat for one filter (float32, median 1 over the illuminated area).

    Each flat: overscan/trim, minus bias, minus dark (ADU/s) * its exposure time, then divided
    by its own level (median of the central region, ADU). Flats whose level is outside
    ``[min_level, max_level]`` ADU are rejected with a log line. Dusk and dawn are combined
    separately, each normalised, then averaged (one session alone is used as is); sessions with
    fewer than ``min_frames`` accepted flats are left out unless no session has that many, in
    which case all accepted flats are combined together if they number ``min_frames``.

    Parameters
    ----------
    paths_dusk, paths_dawn : sequence of str
        Raw flats per session (dome flats: put them all in one list).
    bias : str or Path
        Master bias (ADU).
    dark : str or Path or None
        Master dark (ADU/s); None skips the dark correction (logged).
    out : str or Path
    filter : str
    instrument : dict
    clip, nlimit : float, int
        ``flat_MAD_clip``, ``flat_MAD_nlimit``.
    min_level, max_level : float
        Accepted range of the bias/dark-corrected level (ADU).
    min_frames : int
    memory_mb : float
    fallback : Fallback, optional
        ``force_backup_flats`` there skips this night's flats in favour of
        ``master_flats.yaml`` / ``backup_master_flats`` when one exists.
    threads : int, optional

    Returns
    -------
    dict
        ``path``, ``fallback``, ``ncombine``, ``sessions`` ({name: n}), ``levels`` ({path: ADU}),
        ``skipped``.
    """
    if _skipping(fallback, "flat"):
        return write_skipped_master("flat", out, instrument, fallback.raw_shape, filter_name=filter)
    paths_dusk = [str(p) for p in paths_dusk or []]
    paths_dawn = [str(p) for p in paths_dawn or []]
    shape = calibrated_shape(instrument)
    if fallback is not None and fallback.force_backup_flats:
        got, notes = _flat_backups(out, fallback, filter, shape)
        if got:
            return _summary(got, [], sessions={}, levels={})
        log.warning("force_backup_flats is set but no backup flat is usable (%s): building from the "
                    "night's flats", "; ".join(notes))
    bias_data, _ = read_master(bias, expected_shape=shape)
    shape = bias_data.shape
    dark_data = None
    if dark is not None:
        dark_data, _ = read_master(dark, expected_shape=shape)
    else:
        log.warning("no master dark given: flats are not dark-corrected")
    levels = {}

    def loader(path):
        data, header = load_raw(path, instrument)
        if data.shape != shape:
            raise FrameError(path, f"shape {data.shape} differs from the master bias {shape}")
        data -= bias_data
        if dark_data is not None:
            data -= dark_data * np.float32(exposure_time(header, instrument, path))
        level = flat_level(data)
        if not (min_level <= level <= max_level):
            raise FrameError(path, f"flat level {level:.0f} ADU outside [{min_level:g}, {max_level:g}] ADU")
        levels[path] = level
        data /= np.float32(level)
        return data

    def combine_session(paths, name):
        stack, skipped = load_stack(paths, loader, shape, memory_mb, reserved_bytes_per_px=12,
                                    scratch_dir=_scratch(out))
        with stack:
            if stack.n == 0:
                return None, [], skipped
            if stack.n < max(1, min_frames):
                log.warning("%s flats %s: only %d accepted (< min_flat_frames=%d)", name, filter, stack.n, min_frames)
                return None, list(stack.items), skipped
            result = stack.combine(clip, clip, nlimit, threads)
        log.info("%s flats %s: %d combined", name, filter, result.nframes)
        return normalise_flat(result.data), result.used, skipped

    masters, used, skipped, sessions, short = [], [], [], {}, []
    for name, paths in (("dusk", paths_dusk), ("dawn", paths_dawn)):
        if not paths:
            continue
        master, accepted, sk = combine_session(paths, name)
        skipped += sk
        if master is not None:
            masters.append(master)
            used += accepted
            sessions[name] = len(accepted)
        else:
            short += accepted
    if not masters and len(short) >= max(1, min_frames):
        log.info("no session has %d flats: combining %d accepted flats of both sessions together",
                 min_frames, len(short))
        master, accepted, _ = combine_session(short, "dusk+dawn")
        masters, used, sessions = [master], accepted, {"dusk+dawn": len(accepted)}
    if not masters:
        n_acc = len(short)
        got = resolve_fallback(
            "flat", out, fallback, shape, filter_name=filter,
            reason=_reason_for(n_acc, len(paths_dusk) + len(paths_dawn), skipped, min_frames, "flat"),
            need_hint=f"at least {min_frames} {filter} flats with levels in [{min_level:g}, {max_level:g}] ADU",
            use_earlier=not (fallback is not None and fallback.force_backup_flats))
        return _summary(got, skipped, sessions={}, levels=levels)
    merged = masters[0] if len(masters) == 1 else np.mean(masters, axis=0, dtype=np.float64)
    final = normalise_flat(np.asarray(merged, dtype=np.float32))
    illum = illuminated_mask(final)
    header = _master_header("FLAT", "", used, skipped, clip, nlimit, extra=[
        ("FILTER", filter),
        ("SESSIONS", (",".join(f"{k}:{v}" for k, v in sessions.items()), "session:frames combined")),
        ("FLATMINL", (float(min_level), "accepted level range, low (ADU)")),
        ("FLATMAXL", (float(max_level), "accepted level range, high (ADU)")),
        ("ILLUMFR", (round(float(illum.mean()), 6), "fraction of pixels illuminated")),
    ])
    header.add_history(f"bias: {bias}")
    header.add_history(f"dark: {dark}")
    for path in used:
        header.add_history(f"level {Path(path).name}: {levels.get(path, float('nan')):.1f} ADU")
    write_fits(fits.PrimaryHDU(final, header), out)
    log.info("master flat %s (%s): sessions %s, illuminated %.1f%%, range %.3f..%.3f over illuminated",
             out, filter, sessions, 100 * illum.mean(), float(np.min(final[illum])), float(np.max(final[illum])))
    return {"path": str(out), "fallback": "none", "ncombine": len(used), "sessions": sessions,
            "levels": levels, "skipped": skipped}


# --------------------------------------------------------------------------------------------
# bad pixel map
# --------------------------------------------------------------------------------------------
def hot_pixels(dark, hot_sigma=8.0, box=16, half=2):
    """Hot pixels of a master dark: rate above the local background + ``hot_sigma`` sigma.

    The local background is the median of the ``(2 half + 1)^2`` neighbourhood, so smooth
    structure (amplifier glow, gradients) is not flagged while hot columns and small clusters
    (a minority of the window) are. sigma is 1.4826 * MAD of the residual from a tile-median
    background. To stay fast on large frames, the exact neighbourhood median is computed only
    for candidates above half the threshold over the tile background (:func:`local_flat`).

    Parameters
    ----------
    dark : ndarray
        Master dark (ADU/s).
    hot_sigma : float
    box : int
        Tile size of the coarse background (px).
    half : int
        Half-width of the neighbourhood (px).

    Returns
    -------
    ndarray of bool
    """
    finite = np.isfinite(dark)
    filled = np.where(finite, dark, np.float32(np.median(dark[finite])))
    resid = filled - local_flat(filled, box)
    sigma = float(mad_std(resid[finite]))
    ys, xs = np.nonzero(finite & (resid > 0.5 * hot_sigma * sigma))
    hot = np.zeros(dark.shape, bool)
    if ys.size:
        background = _neighbourhood_median(filled, ys, xs, half)
        hot[ys, xs] = filled[ys, xs] > background + hot_sigma * sigma
    return hot


def _neighbourhood_median(image, ys, xs, half):
    """Median of the (2 half + 1)^2 box around each (ys, xs), edges reflected."""
    padded = np.pad(image, half, mode="reflect")
    offsets = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    values = padded[ys[:, None] + half + dy.ravel()[None, :], xs[:, None] + half + dx.ravel()[None, :]]
    return np.median(values, axis=1)


def load_stack(*args, **kwargs):
    """:func:`bandersnake.calibration.combine.load_stack`, imported at the first call: numba comes
    with it, which the bad-pixel map's job (no combine) does without (issue 22)."""
    from .combine import load_stack as _load_stack

    return _load_stack(*args, **kwargs)


def local_flat(flat, box=16):
    """Local median of a flat: medians of ``box`` x ``box`` tiles, interpolated bilinearly.

    A full median filter of a 2k x 2k frame with a 15 px window takes ~40 s; tile medians give
    the same large-scale response in well under a second and are insensitive to isolated bad
    pixels (a tile of 256 values).

    Parameters
    ----------
    flat : ndarray, shape (ny, nx)
    box : int
        Tile size (px).

    Returns
    -------
    ndarray of float32, shape (ny, nx)
    """
    ny, nx = flat.shape
    ty, tx = -(-ny // box), -(-nx // box)
    padded = np.full((ty * box, tx * box), np.nan, np.float32)
    padded[:ny, :nx] = flat
    tiles = padded.reshape(ty, box, tx, box).transpose(0, 2, 1, 3).reshape(ty, tx, box * box)
    with np.errstate(invalid="ignore"), _quiet():
        grid = np.nanmedian(tiles, axis=2)
    grid = np.where(np.isfinite(grid), grid, np.nanmedian(grid))
    # Pixel -> fractional tile index through the tiles' true centres (0-based pixel centres;
    # the last tile may be partial); beyond the outer centres the edge tile value is kept.
    yy = np.interp(np.arange(ny), _tile_centres(ny, box), np.arange(ty))
    xx = np.interp(np.arange(nx), _tile_centres(nx, box), np.arange(tx))
    return _bilinear_on_grid(grid, yy, xx).astype(np.float32)


def _bilinear_on_grid(grid, yy, xx):
    """``scipy.ndimage.map_coordinates(grid, meshgrid(yy, xx), order=1, mode="nearest")`` for
    fractional indices inside the grid: separable, so numpy alone (no scipy.ndimage import)."""
    ty, tx = grid.shape
    y0 = np.clip(np.floor(yy).astype(np.intp), 0, ty - 1)
    x0 = np.clip(np.floor(xx).astype(np.intp), 0, tx - 1)
    y1, x1 = np.minimum(y0 + 1, ty - 1), np.minimum(x0 + 1, tx - 1)
    wy, wx = (yy - y0)[:, None], (xx - x0)[None, :]
    g = grid.astype(np.float64)
    top = g[y0][:, x0] * (1.0 - wx) + g[y0][:, x1] * wx
    bottom = g[y1][:, x0] * (1.0 - wx) + g[y1][:, x1] * wx
    return top * (1.0 - wy) + bottom * wy


def _tile_centres(n, box):
    starts = np.arange(0, n, box)
    return (starts + np.minimum(starts + box, n) - 1) / 2.0


class _quiet:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def low_pixels(flat, low_threshold=0.7, box=16):
    """Dead/low-response pixels: below ``low_threshold`` of the local flat, non-finite or <= 0."""
    local = local_flat(flat, box)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ~np.isfinite(flat) | (flat <= 0) | (flat < low_threshold * local)


def build_bad_pixel_map(dark, flats, out, hot_sigma=8.0, low_threshold=0.7, box=16):
    """Bad-pixel bitmask (uint8): 1 hot (from the master dark), 2 dead/low (from the flats).

    Parameters
    ----------
    dark : str or Path or None
        Master dark (ADU/s).
    flats : str or Path or sequence of them
        Master flats; a pixel low in any of them is flagged.
    out : str or Path
    hot_sigma : float
        ``hot_pixel_sigma``.
    low_threshold : float
        ``low_response_threshold``: fraction of the local (tile-median) flat.
    box : int
        Tile size of the local flat (px).

    Returns
    -------
    dict
        ``path``, ``n_hot``, ``n_low``.
    """
    if isinstance(flats, (str, Path)):
        flats = [flats]
    flats = list(flats or [])
    mask = None
    shape = None
    header = fits.Header()
    header["CALTYPE"] = "BPM"
    header["BUNIT"] = ""
    header["HOTSIG"] = (float(hot_sigma), "hot: dark > local median + HOTSIG * MAD-sigma")
    header["LOWTHR"] = (float(low_threshold), "low: flat < LOWTHR * local flat")
    header["BPMBOX"] = (int(box), "local flat tile size (px)")
    header["FALLBACK"] = "none"
    n_hot = n_low = 0
    if dark is not None:
        dark_data, _ = read_master(dark)
        shape = dark_data.shape
        hot = hot_pixels(dark_data, hot_sigma, box)
        mask = hot.astype(np.uint8)
        n_hot = int(hot.sum())
        header.add_history(f"dark: {dark}")
    for flat in flats:
        flat_data, _ = read_master(flat, expected_shape=shape)
        shape = flat_data.shape
        if mask is None:
            mask = np.zeros(shape, np.uint8)
        low = low_pixels(flat_data, low_threshold, box)
        mask |= low.astype(np.uint8) * np.uint8(2)
        header.add_history(f"flat: {flat}")
    if mask is None:
        raise CalibrationMissing(f"{out}: a bad-pixel map needs a master dark or at least one master flat")
    n_low = int(((mask & 2) > 0).sum())
    header["NHOT"] = (n_hot, "hot pixels")
    header["NLOW"] = (n_low, "dead/low-response pixels")
    write_fits(fits.PrimaryHDU(mask, header), out)
    log.info("bad pixel map %s: %d hot, %d dead/low of %d pixels", out, n_hot, n_low, mask.size)
    return {"path": str(out), "n_hot": n_hot, "n_low": n_low}
