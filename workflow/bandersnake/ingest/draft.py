"""Draft an instrument file from a night's raw headers and pixels.

``bandersnake-init-instrument RAW_DIR > MYCAM.yaml`` reads every raw file under ``RAW_DIR`` (a
night folder, or a date folder holding several, as ASTEP keeps them) and writes an instrument
file in the schema of ``config/schemas/instrument.schema.yaml`` with a comment on every value
saying where it came from: a header keyword, a measurement on the pixels, or ``GUESS`` (a
default to replace with the camera's real figure). Where the headers say everything the
workflow needs, the draft runs the night as written: nights without bias, dark or flat frames
get ``night_settings.calibration_params.skip`` and a pedestal (``bias_level_adu``).

What is read:

* keywords present (frame type, object, filter, exposure, time, pointing, airmass);
* shape from NAXIS1/NAXIS2; saturation from BITPIX/BZERO and the highest value in the data
  (a 12-bit camera writes at most 4095 into 16-bit files);
* frame types from the IMAGETYP-like keyword's values, else from file-name patterns;
* which time keyword is UTC and its zone: zone suffixes, naive local stamps compared with
  JD/MJD-OBS/UT-OBS (their difference in whole hours is ``utc_offset_hours``), the rounding of
  MJD-OBS, whether DATE-OBS marks the start/middle/end of the exposure (its comment);
* the site from SITELAT/SITELONG, LAT-OBS/LONG-OBS, LONGITUD (sign conventions below), checked
  against the local sidereal time keyword (ST/LST) when there is one;
* the plate scale from a WCS, a scale keyword or FOCALLEN with XPIXSZ (and binning);
* the gain from GAIN/EGAIN, else measured from the sky: half the variance of the difference of
  consecutive science frames (flat-field structure and stars cancel) against their sky level
  above the bias (photon transfer).
"""

import argparse
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import BandersnakeError, ConfigError, FrameError
from ..fitsio import is_raw_fits_name, read_header, read_image
from . import timing
from .inventory import FRAME_TYPES, _normalise, sanitize_name

ARCSEC_PER_RAD = 206264.806

KEYWORD_CANDIDATES = {
    "imagetyp": ("IMAGETYP", "ACQTYPE", "FRAMETYP", "OBSTYPE", "IMGTYPE", "EXPTYPE"),
    "object": ("OBJECT", "OBJNAME", "TARGET", "TARGNAME"),
    "filter": ("FILTER", "FILTNAME", "FILTER1", "FILT", "FLTNAME"),
    "exptime": ("EXPTIME", "EXPOSURE", "EXP_TIME", "ITIME", "EXPOSED"),
    "date_obs": ("DATE-OBS", "DATE-BEG", "UT-OBS", "UTC-OBS", "DATE"),
    "ra": ("OBJCTRA", "RA", "RA_OBJ", "TELRA", "OBJRA", "CRVAL1"),
    "dec": ("OBJCTDEC", "DEC", "DEC_OBJ", "TELDEC", "OBJDEC", "CRVAL2"),
    "airmass": ("AIRMASS", "SECZ", "AMSTART"),
}
TIME_OF_DAY_KEYS = ("TIME-OBS", "UT", "UTSTART", "UT-START", "UTC", "TIME")
JD_KEYS = ("JD", "JD-OBS", "JD_OBS", "JDSTART")
MJD_KEYS = ("MJD-OBS", "MJD", "MJD_OBS", "MJDSTART")
GAIN_KEYS = ("GAIN", "EGAIN", "CCDGAIN", "GAIN_E")
READ_NOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE", "RDNOISE1")
SCALE_KEYS = ("PIXSCALE", "SECPIX", "SCALE", "PIXSCAL1", "PLATESCL")
SITE_LAT_KEYS = ("LAT-OBS", "SITELAT", "LATITUDE", "OBSLAT", "OBS-LAT")
SITE_LON_KEYS = ("LONG-OBS", "SITELONG", "LONGITUD", "LONGITUDE", "OBSLONG", "OBS-LONG")
SITE_ALT_KEYS = ("ALT-OBS", "SITEELEV", "SITEALT", "ELEVATIO", "OBSALT", "OBS-ELEV", "HEIGHT")
LST_KEYS = ("LST", "ST", "SIDEREAL")
TYPE_WORDS = {"bias": ("bias", "zero"), "dark": ("dark",), "flat": ("flat", "twilight", "sky flat"),
              "science": ("light", "object", "science", "sci")}
# Frames of the pixel measurements (saturation, gain): enough for a robust figure, few enough
# that a 1000-frame night is drafted in seconds.
MAX_PIXEL_FRAMES = 12


# ----------------------------------------------------------------------------------------- reading
def find_raw_files(raw_dir, max_depth=2):
    """Raw FITS files under ``raw_dir`` (its sub-folders too, down to ``max_depth``), sorted."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise BandersnakeError(f"{raw_dir}: not a folder")
    out = []
    base_depth = len(raw_dir.parts)
    for dirpath, dirnames, filenames in os.walk(raw_dir, followlinks=True):
        if len(Path(dirpath).parts) - base_depth >= max_depth:
            dirnames[:] = []
        out += [str(Path(dirpath) / f) for f in filenames if is_raw_fits_name(f)]
    return sorted(out)


def read_headers(paths):
    """``[(path, header)]`` of the readable files and ``[(path, reason)]`` of the others."""
    good, bad = [], []
    for path in paths:
        try:
            good.append((path, read_header(path, 0)))
        except FrameError as err:
            bad.append((path, err.reason))
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not fatal
            bad.append((path, f"{type(err).__name__}: {err}"))
    return good, bad


def _present(headers, key):
    return sum(1 for _, h in headers if key in h and str(h[key]).strip() != "")


def pick_keyword(headers, candidates, need=0.5):
    """First of ``candidates`` present (non-empty) in at least ``need`` of the headers, with its count."""
    n = len(headers)
    for key in candidates:
        count = _present(headers, key)
        if n and count >= need * n:
            return key, count
    return None, 0


# ----------------------------------------------------------------------------------------- helpers
class Draft:
    """Lines of the YAML draft, each value with its comment."""

    def __init__(self):
        self.lines = []

    def comment(self, text, indent=0):
        for part in str(text).splitlines() or [""]:
            self.lines.append(" " * indent + "# " + part if part else "#")

    def value(self, key, value, note="", indent=0):
        import yaml

        text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
        if text.endswith("\n..."):
            text = text[:-4].strip()
        if text.endswith("..."):
            text = text[:-3].strip()
        line = f"{' ' * indent}{key}: {text}"
        self.lines.append(line + (f"  # {note}" if note else ""))

    def section(self, key, note="", indent=0):
        self.lines.append(f"{' ' * indent}{key}:" + (f"  # {note}" if note else ""))

    def text(self):
        return "\n".join(self.lines) + "\n"


def _str(value):
    return str(value).strip()


def _frame_type_guess(value):
    norm = _normalise(value)
    for frame_type in ("bias", "dark", "flat", "science"):
        if any(w in norm for w in TYPE_WORDS[frame_type]):
            return frame_type
    return None


def _instrument_defaults():
    """The schema's defaults for imagetyp_values and filename_patterns."""
    from ..config import _schema

    props = _schema("instrument.schema.yaml")["properties"]
    values = {t: props["imagetyp_values"]["properties"][t]["default"] for t in FRAME_TYPES}
    patterns = {t: props["filename_patterns"]["properties"][t]["default"] for t in FRAME_TYPES}
    return values, patterns


def _match_type(name, patterns):
    import fnmatch

    for frame_type in FRAME_TYPES:
        if any(fnmatch.fnmatch(name.lower(), p.lower()) for p in patterns[frame_type]):
            return frame_type
    return None


# ----------------------------------------------------------------------------------------- parts
def frame_types(headers, draft_kw):
    """Frame type of each file and how the types are to be told apart.

    Returns
    -------
    types : dict
        path -> bias|dark|flat|science|unknown.
    settings : dict
        ``frame_type_source``, ``imagetyp_values`` and ``filename_patterns`` to write (only the
        ones differing from the schema's defaults), and ``notes`` (comment lines).
    """
    default_values, default_patterns = _instrument_defaults()
    key = draft_kw.get("imagetyp")
    types, notes, settings = {}, [], {}
    if key:
        seen = Counter(_str(h[key]) for _, h in headers if key in h and _str(h[key]))
        values = {t: list(v) for t, v in default_values.items()}
        added = False
        for val, count in sorted(seen.items()):
            known = next((t for t in FRAME_TYPES if _normalise(val) in {_normalise(v) for v in values[t]}), None)
            if known is None:
                known = _frame_type_guess(val)
                if known is not None:
                    values[known].append(val)
                    added = True
                    notes.append(f"{key}={val!r} ({count} files): taken as {known} (GUESS from the word)")
                else:
                    notes.append(f"{key}={val!r} ({count} files): not a frame type this draft knows; "
                                 "add it to imagetyp_values or those files are rejected")
            else:
                notes.append(f"{key}={val!r} ({count} files): {known}")
        if added:
            settings["imagetyp_values"] = {t: values[t] for t in FRAME_TYPES}
        for path, h in headers:
            val = _str(h.get(key, ""))
            t = next((t for t in FRAME_TYPES if val and _normalise(val) in {_normalise(v) for v in values[t]}), None)
            types[path] = t or _match_type(Path(path).name, default_patterns) or "unknown"
        return types, dict(settings, notes=notes)
    # No frame-type keyword: file names, else everything is a science frame.
    named = {path: _match_type(Path(path).name, default_patterns) for path, _ in headers}
    counts = Counter(t for t in named.values() if t)
    patterns = {t: list(v) for t, v in default_patterns.items()}
    if not counts.get("science"):
        patterns["science"] = patterns["science"] + ["*"]
        settings["filename_patterns"] = patterns
        notes.append("no frame-type keyword and no science file-name pattern matched: every file not named "
                     "*bias*/*zero*/*dark*/*flat* is a science frame (filename_patterns.science has '*')")
    else:
        notes.append("no frame-type keyword: types from file names (" + ", ".join(
            f"{t} {counts[t]}" for t in FRAME_TYPES if counts.get(t)) + ")")
    settings["frame_type_source"] = "filename"
    for path, t in named.items():
        types[path] = t or ("science" if "*" in patterns["science"] else "unknown")
    return types, dict(settings, notes=notes)


def _jd_of(header, key, kind):
    try:
        v = float(header[key])
    except (KeyError, TypeError, ValueError):
        return math.nan
    return v + timing.MJD_ZERO if kind == "mjd" else v


def time_settings(headers, draft_kw):
    """Time keywords: ``date_obs``, ``time_obs``, ``jd_obs``, ``mjd_obs``, ``utc_offset_hours``,
    ``date_obs_is`` and comment lines saying how each was decided."""
    out, notes = {}, []
    key = draft_kw.get("date_obs")
    sample = [h for _, h in headers if key and key in h]
    jd_key, _ = pick_keyword(headers, JD_KEYS)
    mjd_key, _ = pick_keyword(headers, MJD_KEYS)
    if jd_key:
        out["jd_obs"] = jd_key
    if mjd_key:
        out["mjd_obs"] = mjd_key
    if mjd_key:
        res = np.nanmedian([timing.float_resolution(timing._card_text(h, mjd_key)) for _, h in headers
                         if mjd_key in h] or [np.nan]) * 86400.0
        notes.append(f"{mjd_key} is written to {res:g} s: used only when {key or 'no stamp'} gives no time"
                     if res > timing.FINE_RESOLUTION_S else f"{mjd_key} is written to {res:g} s")
    if not sample:
        notes.append("no date/time stamp keyword: times from " + (jd_key or mjd_key or "nothing (GUESS: set one)"))
        return out, notes
    texts = [_str(h[key]) for h in sample]
    zones = Counter()
    naive = 0
    date_only = 0
    for t in texts:
        m = timing._ISO_STAMP.match(t)
        if m is None:
            continue
        if m.group(8):
            zones[m.group(8)] += 1
        else:
            naive += 1
        if m.group(4) is None:
            date_only += 1
    if date_only:
        tkey, _ = pick_keyword(headers, TIME_OF_DAY_KEYS)
        if tkey:
            out["time_obs"] = tkey
            notes.append(f"{key} holds the date only: the time of day is {tkey}")
        else:
            notes.append(f"{key} holds the date only and no time-of-day keyword was found (GUESS)")
    if zones:
        notes.append(f"{key} carries a zone suffix ({', '.join(sorted(zones))}): converted to UTC as written")
    # Naive stamps: compare with a keyword known to be UTC (JD, MJD, a zone-suffixed UT stamp).
    if naive:
        diffs = []
        ref_name = None
        for _, h in headers:
            if key not in h:
                continue
            try:
                jd_local, _, _ = timing.parse_iso_time(_str(h[key]))
            except ValueError:
                continue
            ref = math.nan
            for rkey, kind in ((jd_key, "jd"), (mjd_key, "mjd")):
                if rkey and rkey in h:
                    ref, ref_name = _jd_of(h, rkey, kind), rkey
                    break
            if not math.isfinite(ref):
                for rkey in ("UT-OBS", "UTC-OBS", "DATE-OBS"):
                    if rkey != key and rkey in h:
                        try:
                            ref, _, _ = timing.parse_iso_time(_str(h[rkey]))
                            ref_name = rkey
                            break
                        except ValueError:
                            continue
            if math.isfinite(ref):
                diffs.append((jd_local - ref) * 24.0)
        if diffs:
            med = float(np.median(diffs))
            offset = round(med * 4) / 4.0
            if abs(offset) >= 0.25:
                out["utc_offset_hours"] = offset
                notes.append(f"{key} has no zone and differs from {ref_name} by {med:+.3f} h (median of "
                             f"{len(diffs)} files): local time, utc_offset_hours {offset:+g}")
            else:
                notes.append(f"{key} has no zone and agrees with {ref_name} ({med * 3600:+.1f} s): UTC")
        else:
            notes.append(f"{key} has no zone and no other time keyword to compare with: taken as UTC (GUESS)")
    comment = ""
    for h in sample[:1]:
        try:
            comment = str(h.comments[key]).lower()
        except (KeyError, AttributeError, IndexError):
            comment = ""
    if re.search(r"\bmid|middle|centre|center", comment):
        out["date_obs_is"] = "mid"
    elif re.search(r"\bend\b", comment):
        out["date_obs_is"] = "end"
    else:
        out["date_obs_is"] = "start"
    notes.append(f"date_obs_is {out['date_obs_is']}: " + (f"from the comment of {key} ({comment!r})" if comment
                                                          else "GUESS (FITS convention: exposure start)"))
    return out, notes


def _angle(value, hours=False):
    text = _str(value)
    sign = 1.0
    m = re.match(r"^([NSEW])\s*(.*)$", text, re.IGNORECASE) or re.match(r"^(.*?)\s*([NSEW])$", text, re.IGNORECASE)
    if m:
        letter = m.group(1) if len(m.group(1)) == 1 and m.group(1).isalpha() else m.group(2)
        rest = m.group(2) if letter == m.group(1) else m.group(1)
        sign = -1.0 if letter.upper() in "SW" else 1.0
        return sign * abs(timing.parse_angle(rest, hours)), letter.upper()
    return timing.parse_angle(value, hours), None


def site_settings(headers, time_out, draft_kw):
    """``site`` (latitude, east-positive longitude, altitude) and comment lines."""
    notes = []
    lat_key, _ = pick_keyword(headers, SITE_LAT_KEYS)
    lon_key, _ = pick_keyword(headers, SITE_LON_KEYS)
    alt_key, _ = pick_keyword(headers, SITE_ALT_KEYS)
    # The first header holding the site keywords (a mixed folder may have frames without them).
    h = next((h for _, h in headers if all(k is None or _str(h.get(k, "")) for k in (lat_key, lon_key))),
             headers[0][1])
    lat_key = lat_key if lat_key and _str(h.get(lat_key, "")) else None
    lon_key = lon_key if lon_key and _str(h.get(lon_key, "")) else None
    alt_key = alt_key if alt_key and _str(h.get(alt_key, "")) else None
    site = {"name": _str(h.get("OBSERVAT") or h.get("SITENAME") or h.get("TELESCOP") or "unknown")}
    lat, _ = _angle(h[lat_key]) if lat_key else (math.nan, None)
    if math.isfinite(lat):
        site["latitude_deg"] = round(lat, 6)
        notes.append(f"latitude from {lat_key} = {_str(h[lat_key])!r} (north positive)")
    else:
        site["latitude_deg"] = 0.0
        notes.append("latitude: no site keyword (GUESS 0: set your site, BJD and airmass depend on it)")
    lon = math.nan
    if lon_key:
        lon, letter = _angle(h[lon_key])
        comment = ""
        try:
            comment = str(h.comments[lon_key])
        except (KeyError, AttributeError, IndexError):
            pass
        if letter:
            how = f"the letter {letter} gives the sign (W negative)"
        elif re.search(r"west|\+w\b|w\+|positive west", comment, re.IGNORECASE):
            lon, how = -lon, f"its comment {comment.strip()!r} says west-positive, so the sign is flipped"
        elif lon_key == "LONGITUD" and lon > 0:
            how = ("LONGITUD is east-positive in this draft; some software writes an unsigned west "
                   "longitude here: if your site is west of Greenwich, make it negative")
        else:
            how = "read as east-positive (MaxIm and FITS convention: west negative)"
        notes.append(f"longitude from {lon_key} = {_str(h[lon_key])!r}: {how}")
        for other in SITE_LON_KEYS:
            if other != lon_key and other in h:
                value, _ = _angle(h[other])
                if math.isfinite(value) and math.isfinite(lon):
                    agree = abs(((value - lon + 180) % 360) - 180) < 0.05
                    notes.append(f"{other} = {_str(h[other])!r} " + ("agrees" if agree else
                                 "DISAGREES (an unsigned west longitude?): check the sign"))
    lon_lst = _longitude_from_lst(headers, time_out, draft_kw)
    if lon_lst is not None:
        if math.isfinite(lon) and abs(((lon - lon_lst + 180) % 360) - 180) > 0.5:
            flipped = -lon
            if abs(((flipped - lon_lst + 180) % 360) - 180) <= 0.5:
                notes.append(f"the sign of {lon_key} disagrees with the sidereal time in the headers "
                             f"(which gives {lon_lst:+.3f} deg): flipped")
                lon = flipped
            else:
                others = [k for k in SITE_LON_KEYS if k != lon_key and k in h
                          and abs(((_angle(h[k])[0] - lon_lst + 180) % 360) - 180) <= 0.5]
                if others:
                    notes.append(f"{lon_key} disagrees with the sidereal time in the headers ({lon_lst:+.3f} "
                                 f"deg), {others[0]} agrees: {others[0]} is used")
                    lon = _angle(h[others[0]])[0]
                else:
                    notes.append(f"{lon_key} disagrees with the sidereal time in the headers ({lon_lst:+.3f} "
                                 "deg): kept; check the longitude and the time zone (GUESS)")
        elif math.isfinite(lon):
            notes.append(f"longitude confirmed by the local sidereal time keyword ({lon_lst:+.3f} deg)")
        else:
            lon = lon_lst
            notes.append(f"longitude from the local sidereal time keyword and the UTC time: {lon_lst:+.4f} deg")
    if math.isfinite(lon):
        site["longitude_deg"] = round(((lon + 180.0) % 360.0) - 180.0, 6)
    else:
        site["longitude_deg"] = 0.0
        notes.append("longitude: no site keyword (GUESS 0: set your site, BJD and airmass depend on it)")
    try:
        site["altitude_m"] = round(float(h[alt_key]), 1) if alt_key else 0.0
        notes.append(f"altitude from {alt_key}" if alt_key else "altitude: no keyword (GUESS 0 m)")
    except (TypeError, ValueError):
        site["altitude_m"] = 0.0
        notes.append(f"altitude: {alt_key}={h[alt_key]!r} is not a number (GUESS 0 m)")
    return site, notes


def _longitude_from_lst(headers, time_out, draft_kw):
    """East longitude (deg) from a sidereal-time keyword and the frame's UTC time, or None."""
    from astropy.time import Time
    import astropy.units as u

    key, _ = pick_keyword(headers, LST_KEYS)
    if key is None:
        return None
    instrument = {"keywords": dict(draft_kw, **{k: time_out.get(k) for k in ("time_obs", "jd_obs", "mjd_obs")}),
                  "utc_offset_hours": time_out.get("utc_offset_hours"), "date_obs_is": "start"}
    values = []
    for _, h in headers[:20]:
        ft = timing.frame_time(h, instrument, 0.0, check=False)
        lst = timing.parse_angle(h.get(key), hours=True)
        if ft is None or not math.isfinite(lst):
            continue
        gast = Time(ft.jd_mid, format="jd", scale="utc").sidereal_time("apparent", longitude=0 * u.deg).deg
        values.append(((lst - gast + 180.0) % 360.0) - 180.0)
    if not values:
        return None
    return float(np.median(values))


def plate_scale(headers):
    """Plate scale (arcsec/px) and how it was found: WCS, a scale keyword, FOCALLEN + XPIXSZ."""
    h = next((h for _, h in headers if "CD1_1" in h or "CDELT1" in h), None)
    if h is not None:
        if "CD1_1" in h:
            cd = np.array([[h.get("CD1_1", 0.0), h.get("CD1_2", 0.0)], [h.get("CD2_1", 0.0), h.get("CD2_2", 0.0)]])
            scale = math.sqrt(abs(np.linalg.det(cd))) * 3600.0
        else:
            scale = math.sqrt(abs(h["CDELT1"] * h.get("CDELT2", h["CDELT1"]))) * 3600.0
        if 0.01 < scale < 600:
            return round(scale, 4), "from the WCS in the headers (CD/CDELT)"
    key, _ = pick_keyword(headers, SCALE_KEYS)
    if key:
        try:
            scale = float(headers[0][1][key])
            if 0.01 < scale < 600:
                return round(scale, 4), f"from {key}"
        except (TypeError, ValueError):
            pass
    h = headers[0][1]
    try:
        focal_mm = float(h["FOCALLEN"])
        px_um = float(h.get("XPIXSZ", h.get("PIXSIZE1", h.get("PIXSIZE"))))
        comment = ""
        try:
            comment = str(h.comments["XPIXSZ"]).lower()
        except (KeyError, AttributeError, IndexError):
            pass
        binning = 1.0 if "after binning" in comment else float(h.get("XBINNING", 1) or 1)
        scale = ARCSEC_PER_RAD * px_um * 1e-3 * binning / focal_mm
        if 0.01 < scale < 600:
            return round(scale, 4), (f"from FOCALLEN {focal_mm:g} mm and XPIXSZ {px_um:g} um"
                                     + (f" x binning {binning:g}" if binning != 1 else "") + ": 206265 * pixel / focal length")
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    return 1.0, "GUESS: no WCS, scale keyword or FOCALLEN/XPIXSZ; set it (astrometry and cosmic-ray settings use it)"


def adc_ceiling(header):
    """Largest value the file format holds (ADU) from BITPIX, BZERO and BSCALE."""
    bitpix = int(header.get("BITPIX", 16))
    bzero = float(header.get("BZERO", 0) or 0)
    bscale = float(header.get("BSCALE", 1) or 1)
    if bitpix > 0:
        top = 2 ** (bitpix - 1) - 1
        return bzero + bscale * top
    return math.inf


def _sample(paths, n):
    if len(paths) <= n:
        return list(paths)
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in sorted(set(idx))]


def pixel_stats(paths_by_type, extension):
    """Highest value (ADU) of a sample of flats and science frames, and the readable frames' data."""
    high, shape = -math.inf, None
    kinds = ("flat", "science") if paths_by_type.get("flat") or paths_by_type.get("science") else FRAME_TYPES
    for frame_type in kinds:
        for path in _sample(paths_by_type.get(frame_type, []), MAX_PIXEL_FRAMES // 2):
            try:
                data, _ = read_image(path, extension)
            except FrameError:
                continue
            high = max(high, float(np.nanmax(data)))
            shape = data.shape
    return high, shape


def saturation(header, high):
    """Saturation (ADU) and its note from the format's ceiling and the highest value seen."""
    ceiling = adc_ceiling(header)
    if not math.isfinite(ceiling):
        return 65535.0, (f"BITPIX {header.get('BITPIX')} (floating point; highest value seen {high:.0f}): "
                         "GUESS 65535 ADU, set the camera's saturation")
    for bits in (10, 12, 14):
        top = 2 ** bits - 1
        # Flats and bright stars reach the ADC's top: a maximum just below 2^N - 1 says N bits.
        if math.isfinite(high) and 0.75 * top <= high <= top < ceiling:
            return float(top), (f"the highest value in the data is {high:.0f} ADU <= {top}: a {bits}-bit "
                                f"camera in {int(header.get('BITPIX', 16))}-bit files (GUESS: full scale; "
                                "the real full well may be lower)")
    if math.isfinite(ceiling):
        return float(ceiling), (f"BITPIX {header.get('BITPIX')} BZERO {header.get('BZERO', 0)}: format ceiling "
                                f"(highest value seen {high:.0f} ADU; GUESS: the real full well may be lower)")
    return 65535.0, "floating-point data: GUESS 65535 ADU"


def _central(data, fraction=0.5):
    ny, nx = data.shape
    dy, dx = int(ny * (1 - fraction) / 2), int(nx * (1 - fraction) / 2)
    return data[dy:ny - dy, dx:nx - dx]


def bias_figures(bias_paths, extension):
    """Bias level (ADU) and read noise (ADU) from bias frames (median; pair differences)."""
    from astropy.stats import mad_std

    frames = []
    for path in bias_paths[:6]:
        try:
            frames.append(read_image(path, extension)[0])
        except FrameError:
            continue
    if not frames:
        return None, None
    level = float(np.median([np.median(_central(f)) for f in frames]))
    rn = [float(mad_std(_central(a) - _central(b))) / math.sqrt(2) for a, b in zip(frames, frames[1:])
          if a.shape == b.shape]
    return level, (float(np.median(rn)) if rn else None)


def sky_pairs(science_paths, exptimes, extension, max_pairs=MAX_PIXEL_FRAMES):
    """Sky level (ADU) and half the robust variance of the difference (ADU^2) of consecutive
    science frames of the same exposure (flat-field structure and most stars cancel)."""
    from astropy.stats import mad_std

    out = []
    chosen = _sample(list(range(len(science_paths) - 1)), max_pairs)
    for i in chosen:
        a_path, b_path = science_paths[i], science_paths[i + 1]
        if abs(exptimes.get(a_path, 0) - exptimes.get(b_path, -1)) > 1e-3:
            continue
        try:
            a = _central(read_image(a_path, extension)[0])
            b = _central(read_image(b_path, extension)[0])
        except FrameError:
            continue
        if a.shape != b.shape:
            continue
        level = 0.5 * (np.median(a) + np.median(b))
        var = float(mad_std(a - b)) ** 2 / 2.0
        out.append((float(level), var))
    return out


def gain_estimate(pairs, bias_level, read_noise_adu):
    """Gain (e-/ADU) from sky photon transfer and a note; None when it cannot be measured.

    With a known bias level: ``g = (S - B) / (var - RN^2)`` per pair, median. Without: the slope
    of var against S over the pairs (``var = S / g + const``) when the sky levels span at least
    30 %.
    """
    if not pairs:
        return None, "no pair of consecutive science frames to measure it"
    s = np.array([p[0] for p in pairs])
    v = np.array([p[1] for p in pairs])
    if bias_level is not None:
        rn2 = (read_noise_adu or 0.0) ** 2
        g = (s - bias_level) / (v - rn2)
        g = g[np.isfinite(g) & (g > 0)]
        if g.size:
            return float(np.median(g)), (f"measured: (sky - bias) / (variance - read noise^2) over {g.size} "
                                         f"pairs of consecutive science frames (sky {np.median(s) - bias_level:.0f} "
                                         f"ADU above the bias); GUESS-quality, replace with a photon-transfer gain")
    if s.size >= 3 and (s.max() - s.min()) > 0.3 * max(np.median(s), 1.0):
        slope = np.polyfit(s, v, 1)[0]
        if slope > 0:
            return float(1.0 / slope), (f"measured: slope of variance against sky level over {s.size} pairs "
                                        "(no bias frames); GUESS-quality")
    return None, "sky levels too uniform and no bias frames: cannot measure it"


_DATE_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATE = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)")


def _date_fields(name):
    """``name`` with its date written as ``{date_iso}`` (YYYY-MM-DD) or ``{date}`` (YYYYMMDD)."""
    out = _DATE_ISO.sub("{date_iso}", name)
    return out if out != name else _DATE.sub("{date}", name)


def raw_layout(raw_dir, paths):
    """The instrument's ``raw_layout`` when the night's folder does not follow the workflow's
    ``{raw_root}/{inst}/images/{date}`` (None and a note when it does or cannot be told)."""
    raw_dir = Path(raw_dir).resolve()
    subdirs = sorted({Path(p).resolve().parent for p in paths} - {raw_dir})
    parts = raw_dir.parts
    if not subdirs and len(parts) >= 3 and parts[-2] == "images" and _DATE.fullmatch(parts[-1]):
        return None, (f"the workflow's default {{raw_root}}/{{inst}}/images/{{date}} (raw_root = "
                      f"{Path(*parts[:-3])}, the folder {parts[-3]} must be named after the instrument)")
    name = _date_fields(raw_dir.name)
    if "{date" not in name:
        return None, ("the folder name holds no date: put the frames at <raw_root>/<name>/images/<YYYYMMDD>/ "
                      "(the workflow's default layout) or set raw_layout")
    if not subdirs:
        return "{raw_root}/" + name, f"night folders named by date under raw_root = {raw_dir.parent}"
    names = [_date_fields(d.name) for d in subdirs if d.parent == raw_dir]
    prefix = os.path.commonprefix(names) if names else ""
    if not prefix:
        return None, f"frames in several sub-folders of {raw_dir.name} with no common name: set raw_layout (GUESS)"
    return ("{raw_root}/" + name + "/" + prefix + "*",
            f"sub-folders {', '.join(d.name for d in subdirs)} of a date folder under raw_root = {raw_dir.parent}")


# ----------------------------------------------------------------------------------------- draft
def draft_instrument(raw_dir, name=None):
    """YAML text of a drafted instrument file for the raw frames under ``raw_dir``.

    Parameters
    ----------
    raw_dir : str or Path
        A night's raw folder (sub-folders are read too).
    name : str, optional
        Instrument name (the file must be saved as ``<name>.yaml`` and the nights are
        ``<name>_<YYYYMMDD>``); default from INSTRUME/TELESCOP.

    Returns
    -------
    str

    Raises
    ------
    BandersnakeError
        When ``raw_dir`` holds no readable raw FITS file.
    """
    paths = find_raw_files(raw_dir)
    headers, unreadable = read_headers(paths)
    if not headers:
        raise BandersnakeError(f"{raw_dir}: no readable raw FITS file (.fits, .fit, .fts, .fits.gz, .fits.fz) "
                               + (f"({len(unreadable)} unreadable)" if unreadable else "found"))
    d = Draft()
    first = headers[0][1]
    inst_name = name or sanitize_name(_str(first.get("INSTRUME") or first.get("TELESCOP") or "MYCAM")).upper()
    inst_name = re.sub(r"[^A-Za-z0-9-]", "-", inst_name).strip("-") or "MYCAM"
    d.comment(f"Drafted by bandersnake-init-instrument from {len(headers)} raw files in {Path(raw_dir).resolve()}")
    d.comment("Every value says where it came from; values marked GUESS are defaults or estimates to replace")
    d.comment("with your camera's measured figures. Save as config/instruments/<name>.yaml.")
    if unreadable:
        d.comment(f"{len(unreadable)} file(s) could not be read, e.g. {Path(unreadable[0][0]).name}: {unreadable[0][1]}")
    d.value("name", inst_name, "the file name stem and the <INST> of night ids <INST>_<YYYYMMDD>"
            + ("" if name else " (from INSTRUME/TELESCOP; rename freely)"))
    desc = " ".join(x for x in (_str(first.get("TELESCOP", "")), _str(first.get("INSTRUME", ""))) if x)
    d.value("description", desc or "drafted instrument", "TELESCOP and INSTRUME")
    if _str(first.get("INSTRUME", "")):
        d.value("instrume", _str(first["INSTRUME"]), "INSTRUME")
    d.value("image_extension", 0, "primary HDU (.fits.fz files: the first image extension is found)")
    layout, layout_note = raw_layout(raw_dir, paths)
    if layout:
        d.value("raw_layout", layout, layout_note)
    else:
        d.comment(f"Raw layout: {layout_note}")

    # keywords
    kw, kw_notes = {}, []
    for quantity, candidates in KEYWORD_CANDIDATES.items():
        key, count = pick_keyword(headers, candidates, need=0.2 if quantity in ("object", "filter", "ra", "dec", "airmass") else 0.5)
        kw[quantity] = key
        kw_notes.append((quantity, key, count))
    # frame types
    types, type_settings = frame_types(headers, kw)
    by_type = {t: [p for p, _ in headers if types[p] == t] for t in FRAME_TYPES + ("unknown",)}
    exptimes = {}
    for p, h in headers:
        try:
            exptimes[p] = float(h[kw["exptime"]]) if kw["exptime"] else math.nan
        except (KeyError, TypeError, ValueError):
            exptimes[p] = math.nan
    # shape
    shapes = Counter((int(h.get("NAXIS2", h.get("ZNAXIS2", 0))), int(h.get("NAXIS1", h.get("ZNAXIS1", 0))))
                     for _, h in headers)
    shape, n_shape = shapes.most_common(1)[0]
    d.value("shape", list(shape) if len(shapes) == 1 else None,
            f"NAXIS2, NAXIS1 of all {len(headers)} files" if len(shapes) == 1
            else f"{len(shapes)} shapes ({dict(shapes)}): null takes the night's most common")
    d.section("keywords", "header keyword of each quantity")
    for quantity, key, count in kw_notes:
        if key:
            d.value(quantity, key, f"present in {count}/{len(headers)} files", indent=2)
        else:
            default = KEYWORD_CANDIDATES[quantity][0]
            d.value(quantity, default, f"GUESS: none of {', '.join(KEYWORD_CANDIDATES[quantity][:4])} found", indent=2)
    time_out, time_notes = time_settings(headers, kw)
    for key in ("time_obs", "jd_obs", "mjd_obs"):
        if time_out.get(key):
            d.value(key, time_out[key], "time keyword (cross-checked with the stamp)", indent=2)
    bjd_key, _ = pick_keyword(headers, ("BJD-OBS", "BJD_TDB", "BJD"))
    if bjd_key:
        d.value("bjd", bjd_key, "the camera software's BJD (informational)", indent=2)
    d.comment("Times (which keyword is UTC, its zone and rounding):")
    for line in time_notes:
        d.comment("  " + line)
    if "utc_offset_hours" in time_out:
        d.value("utc_offset_hours", time_out["utc_offset_hours"], "local time = UTC + this (stamps without a zone)")
    d.value("date_obs_is", time_out.get("date_obs_is", "start"), "which moment of the exposure the stamp marks")
    # frame types
    for line in type_settings["notes"]:
        d.comment("Frame types: " + line)
    if "frame_type_source" in type_settings:
        d.value("frame_type_source", type_settings["frame_type_source"], "no frame-type keyword")
    if "imagetyp_values" in type_settings:
        d.section("imagetyp_values", "defaults plus the values seen in these headers")
        for t in FRAME_TYPES:
            d.value(t, type_settings["imagetyp_values"][t], indent=2)
    if "filename_patterns" in type_settings:
        d.section("filename_patterns", "case-insensitive shell patterns on file names, bias/dark/flat first")
        for t in FRAME_TYPES:
            d.value(t, type_settings["filename_patterns"][t], indent=2)
    counts = {t: len(by_type[t]) for t in FRAME_TYPES}
    d.comment("Frames found: " + ", ".join(f"{t} {counts[t]}" for t in FRAME_TYPES)
              + (f", unknown {len(by_type['unknown'])}" if by_type["unknown"] else ""))

    # detector
    gain_key, _ = pick_keyword(headers, GAIN_KEYS)
    rn_key, _ = pick_keyword(headers, READ_NOISE_KEYS)
    bias_level, rn_adu = bias_figures(by_type["bias"], 0)
    gain, gain_note = None, ""
    if gain_key:
        try:
            gain, gain_note = float(first[gain_key]), f"from {gain_key}"
        except (TypeError, ValueError):
            gain = None
    pedestal_note = ""
    if bias_level is not None:
        pedestal_note = f"median of {min(len(by_type['bias']), 6)} bias frames"
    science_sorted = sorted(by_type["science"], key=lambda p: p)
    pairs = sky_pairs(science_sorted, exptimes, 0) if gain is None or bias_level is None else []
    if gain is None:
        gain, gain_note = gain_estimate(pairs, bias_level, rn_adu)
        if gain is None:
            gain, gain_note = 1.0, f"GUESS 1.0: not in the headers and {gain_note}"
        gain = round(gain, 3)
    if bias_level is None and pairs:
        s_lev = np.array([p[0] for p in pairs])
        v_lev = np.array([p[1] for p in pairs])
        if "GUESS 1.0" not in gain_note:
            # var = (S - B) / g + RN^2 with RN neglected: B = S - g var (too high by g RN^2).
            bias_level = max(0.0, float(np.median(s_lev - gain * v_lev)))
            pedestal_note = ("GUESS from the sky's photon noise (no bias frames): sky - gain x variance, "
                             "read noise neglected. It only sets the sky level in e- (noise model); "
                             "photometry subtracts the local sky")
        else:
            bias_level = max(0.0, float(np.min(s_lev - 9.0 * np.sqrt(v_lev))))
            pedestal_note = ("GUESS: no bias frames; darkest sky level minus 9 sigma of its noise. It only "
                             "sets the sky level in e- (noise model); photometry subtracts the local sky")
    d.value("gain_e_per_adu", gain, gain_note)
    if rn_key:
        try:
            d.value("read_noise_e", round(float(first[rn_key]), 3), f"from {rn_key}")
        except (TypeError, ValueError):
            rn_key = None
    if not rn_key:
        if rn_adu is not None:
            d.value("read_noise_e", round(rn_adu * gain, 3), f"measured: pair differences of bias frames "
                    f"({rn_adu:.2f} ADU) x gain")
        else:
            d.value("read_noise_e", 10.0, "GUESS: no bias frames and no read-noise keyword")
    high, _ = pixel_stats(by_type, 0)
    sat, sat_note = saturation(first, high)
    d.value("saturation_adu", sat, sat_note)
    d.value("bias_level_adu", round(bias_level, 1) if bias_level is not None else 0.0,
            pedestal_note or "GUESS 0: no bias frames and no sky to estimate it from")
    for key, sources in (("overscan_section", ("BIASSEC",)), ("trim_section", ("TRIMSEC", "DATASEC"))):
        found = next((k for k in sources if _str(first.get(k, ""))), None)
        value = _str(first[found]) if found else None
        note = f"from {found}" if found else f"no {'/'.join(sources)} keyword"
        if value is not None:
            from ..calibration.masters import parse_section

            try:
                rows, cols = parse_section(value)
                if rows.stop > shape[0] or cols.stop > shape[1]:
                    raise ConfigError("beyond the frame")
            except ConfigError:
                note, value = f"{found} = {value!r} is not a [x1:x2,y1:y2] section inside the frame (GUESS: none)", None
        d.value(key, value, note)
    scale, scale_note = plate_scale(headers)
    d.value("plate_scale_arcsec_per_px", scale, scale_note)
    try:
        aperture = float(first["APTDIA"]) / 1000.0
        if not aperture > 0:
            raise ValueError(aperture)
        d.value("telescope_diameter_m", round(aperture, 3), "APTDIA (mm)")
    except (KeyError, TypeError, ValueError):
        d.value("telescope_diameter_m", 0.4, "GUESS: no usable APTDIA (used for scintillation only)")
    site, site_notes = site_settings(headers, time_out, kw)
    for line in site_notes:
        d.comment("Site: " + line)
    d.section("site")
    for key in ("name", "latitude_deg", "longitude_deg", "altitude_m"):
        d.value(key, site[key], "east positive" if key == "longitude_deg" else "", indent=2)
    d.section("scintillation", "Osborn et al. (2015) median-site values")
    d.value("C_Y", 1.5, indent=2)
    d.value("H_m", 8000, indent=2)
    missing = [t for t in ("bias", "dark", "flat") if counts[t] < 3]
    dark_times = sorted({round(exptimes[p], 3) for p in by_type["dark"] if math.isfinite(exptimes[p])})
    matching = len(dark_times) > 1
    if missing or matching:
        d.section("night_settings", "settings of every night of this instrument")
        d.section("calibration_params", indent=2)
    if matching:
        d.value("dark_exposure_matching", True, f"darks of {len(dark_times)} exposure times ({dark_times} s): "
                "a master dark per science/flat exposure", indent=4)
    if missing:
        d.comment(f"This night has fewer than 3 {'/'.join(missing)} frames: those calibrations are skipped", indent=4)
        d.comment("(constant pedestal bias_level_adu or the overscan, no dark, unit flat). Remove the skip", indent=4)
        d.comment("when you have the frames or backup masters (calibration_params.backup_master_*).", indent=4)
        d.value("skip", missing, indent=4)
    return d.text()


def main(argv=None):
    """``bandersnake-init-instrument RAW_DIR [--name NAME] > NAME.yaml``."""
    parser = argparse.ArgumentParser(
        prog="bandersnake-init-instrument",
        description="Draft an instrument file from a night's raw frames (written to standard output).")
    parser.add_argument("raw_dir", help="a night's raw folder (sub-folders are read too)")
    parser.add_argument("--name", help="instrument name (default: from INSTRUME/TELESCOP)")
    parser.add_argument("-o", "--output", help="write here instead of standard output")
    args = parser.parse_args(argv)
    import yaml

    from ..config import validate

    try:
        text = draft_instrument(args.raw_dir, args.name)
        validate(yaml.safe_load(text), "instrument.schema.yaml", "drafted instrument file")
    except (BandersnakeError, ConfigError) as err:
        print(f"bandersnake-init-instrument: {err}", file=sys.stderr)
        return 2
    if args.output:
        from ..fitsio import write_text

        write_text(text, args.output)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
