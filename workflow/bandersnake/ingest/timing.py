"""Mid-exposure times, BJD_TDB and airmass, computed offline with astropy.

* ``JD_UTC`` at mid-exposure from the header's best time (:func:`frame_time`): an ISO 8601
  stamp with or without a zone suffix (``-0700``, ``-07:00``, ``Z``, ``-0000``; stamps without a
  zone are in ``utc_offset_hours`` of the instrument file, UTC by default), a date plus a
  time-of-day keyword (``keywords.time_obs``), ``keywords.jd_obs`` or ``keywords.mjd_obs``; the
  stamp marks the start, middle or end of the exposure (``date_obs_is``). A source rounded
  coarser than 1 s (MJD to 0.001 d = 86 s) is used only when nothing finer exists; other time
  keywords of the header that disagree by more than the exposure are reported.
* ``BJD_TDB = JD(TDB) + barycentric light-travel time`` towards the target, for the site of the
  instrument file, with astropy's built-in ephemeris (ERFA ``epv00``, accurate to ~10 us in
  light-travel time) so no ephemeris is downloaded.
* Earth orientation: astropy's bundled IERS tables (``astropy-iers-data``); nothing is
  downloaded (``iers.conf.auto_download = False``). For dates past the bundled predictions
  astropy falls back to zero UT1-UTC / polar motion with a warning, which moves BJD by at most a
  few microseconds (Earth rotation displaces the site by < 0.5 km per second of UT1 error).
* Airmass: the header's value (instrument keyword ``airmass``) when present and consistent,
  else computed from the altitude with Hardie's (1962) polynomial in ``sec z``.
"""

import logging
import math
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def offline_iers():
    """Make astropy use only its bundled Earth-orientation tables (idempotent)."""
    from astropy.utils import iers

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    iers.conf.iers_degraded_accuracy = "warn"
    _use_kept_iers_table()


_IERS_READY = []


def _use_kept_iers_table():
    """Load astropy's combined IERS-A/B table from a pickle kept in the user cache.

    astropy parses its bundled IERS text tables at their first use in every process: 0.5 s of
    each job that computes BJD or airmass (issue 22). The parsed table (the same object astropy
    builds, so the same numbers) is kept per astropy and astropy-iers-data version in
    ``$XDG_CACHE_HOME/bandersnake`` (default ``~/.cache``) and set as the process's
    ``earth_orientation_table``; it unpickles in ~10 ms. Anything going wrong leaves astropy to
    read its tables as usual.
    """
    if _IERS_READY:
        return
    _IERS_READY.append(True)
    try:
        import astropy
        import astropy_iers_data
        from astropy.utils import iers

        cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bandersnake"
        kept = cache_dir / f"iers-astropy{astropy.__version__}-data{astropy_iers_data.__version__}.pickle"
        if kept.exists():
            with open(kept, "rb") as fh:
                table = pickle.load(fh)
        else:
            table = iers.IERS_Auto.open()
            cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(table, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, kept)  # atomic: jobs running side by side never read half a file
        iers.earth_orientation_table.set(table)
    except Exception as err:  # a read-only home, a damaged pickle: astropy's own loading
        log.debug("kept IERS table not used (%s: %s)", type(err).__name__, err)


def _kw(instrument, name, default):
    return (instrument.get("keywords") or {}).get(name) or default


def parse_angle(value, hours=False):
    """Angle in degrees from a number (deg) or a sexagesimal string.

    Parameters
    ----------
    value : float or str
        ``240.5``, ``"240.5"``, ``"16 02 11.83"``, ``"16:02:11.83"``, ``"+28 10 10.7"``.
    hours : bool
        Sexagesimal strings are hours (RA) rather than degrees.

    Returns
    -------
    float
        Degrees, NaN when ``value`` is None or not understood.
    """
    if value is None:
        return math.nan
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = text.replace(":", " ").replace("h", " ").replace("m", " ").replace("s", " ") \
        .replace("d", " ").replace("'", " ").replace('"', " ").split()
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        return math.nan
    if not nums or len(nums) > 3:
        return math.nan
    sign = -1.0 if text.startswith("-") else 1.0
    nums[0] = abs(nums[0])
    val = sum(n / 60.0 ** k for k, n in enumerate(nums))
    return sign * val * (15.0 if hours else 1.0)


def jd_mid_utc(header, instrument, exptime):
    """JD (UTC) at mid-exposure from the header's best time keyword (see :func:`frame_time`).

    Returns NaN when the header has no usable time.
    """
    found = frame_time(header, instrument, exptime, check=False)
    return found.jd_mid if found is not None else math.nan


def header_coords(header, instrument):
    """Pointing RA, Dec (deg) from the header keywords of the instrument file (NaN when absent)."""
    ra = parse_angle(header.get(_kw(instrument, "ra", "RA")), hours=True)
    dec = parse_angle(header.get(_kw(instrument, "dec", "DEC")))
    return ra, dec


def header_airmass(header, instrument):
    """Airmass from the header (NaN when absent or not in 1..40)."""
    try:
        value = float(header.get(_kw(instrument, "airmass", "AIRMASS")))
    except (TypeError, ValueError):
        return math.nan
    return value if 1.0 <= value <= 40.0 else math.nan


def site_location(instrument):
    """``EarthLocation`` of the instrument's site (geodetic lat/lon in deg, altitude in m)."""
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    site = instrument["site"]
    return EarthLocation.from_geodetic(lon=site["longitude_deg"] * u.deg, lat=site["latitude_deg"] * u.deg,
                                       height=site["altitude_m"] * u.m)


def bjd_tdb(jd_utc, ra_deg, dec_deg, location):
    """Barycentric JD in TDB of UTC Julian dates (vectorised).

    Parameters
    ----------
    jd_utc : array_like
        JD (UTC), e.g. at mid-exposure.
    ra_deg, dec_deg : float or array_like
        ICRS target coordinates (deg).
    location : astropy.coordinates.EarthLocation

    Returns
    -------
    ndarray
        BJD_TDB (d); NaN where any input is NaN.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from astropy.time import Time

    offline_iers()
    jd = np.atleast_1d(np.asarray(jd_utc, dtype=np.float64))
    ra = np.broadcast_to(np.asarray(ra_deg, dtype=np.float64), jd.shape)
    dec = np.broadcast_to(np.asarray(dec_deg, dtype=np.float64), jd.shape)
    out = np.full(jd.shape, np.nan)
    ok = np.isfinite(jd) & np.isfinite(ra) & np.isfinite(dec)
    if not ok.any():
        return out
    # Two-part JD keeps sub-microsecond precision through the time-scale conversions.
    t = Time(np.floor(jd[ok]), jd[ok] - np.floor(jd[ok]), format="jd", scale="utc", location=location)
    target = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg, frame="icrs")
    ltt = t.light_travel_time(target, kind="barycentric", ephemeris="builtin")
    out[ok] = (t.tdb + ltt).jd
    return out


def hardie_airmass(secz):
    """Hardie (1962) airmass from ``sec z`` (accurate to ~0.001 up to sec z ~ 4)."""
    s1 = np.asarray(secz, dtype=np.float64) - 1.0
    return secz - 0.0018167 * s1 - 0.002875 * s1 ** 2 - 0.0008083 * s1 ** 3


def computed_airmass(jd_utc, ra_deg, dec_deg, location):
    """Airmass from the altitude of the target at ``jd_utc`` (vectorised; NaN below the horizon)."""
    from astropy import units as u
    from astropy.coordinates import AltAz, SkyCoord
    from astropy.time import Time

    offline_iers()
    jd = np.atleast_1d(np.asarray(jd_utc, dtype=np.float64))
    ra = np.broadcast_to(np.asarray(ra_deg, dtype=np.float64), jd.shape)
    dec = np.broadcast_to(np.asarray(dec_deg, dtype=np.float64), jd.shape)
    out = np.full(jd.shape, np.nan)
    ok = np.isfinite(jd) & np.isfinite(ra) & np.isfinite(dec)
    if not ok.any():
        return out
    t = Time(jd[ok], format="jd", scale="utc")
    altaz = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg).transform_to(AltAz(obstime=t, location=location))
    alt = altaz.alt.to_value(u.deg)
    secz = 1.0 / np.sin(np.radians(np.clip(alt, 1e-3, 90.0)))
    am = hardie_airmass(secz)
    am[alt <= 0] = np.nan
    out[ok] = am
    return out


def frame_times(jd_mid, ra_deg, dec_deg, airmass_header, instrument, tolerance=0.05):
    """BJD_TDB and airmass for a night's frames (vectorised over frames).

    Parameters
    ----------
    jd_mid : array_like
        JD (UTC) at mid-exposure.
    ra_deg, dec_deg : array_like or float
        Target coordinates (deg); NaN gives NaN BJD.
    airmass_header : array_like
        Header airmass (NaN when absent).
    instrument : dict
        Instrument configuration (``site``).
    tolerance : float
        A header airmass differing from the computed one by more than
        ``tolerance * computed`` is replaced by the computed one (logged): real MaxIm headers
        were seen stuck at a stale value (13.37 at altitude 84 deg).

    Returns
    -------
    bjd : ndarray
        BJD_TDB (d).
    airmass : ndarray
    n_replaced : int
        Header airmass values missing or replaced by the computed ones.
    """
    loc = site_location(instrument)
    jd_mid = np.asarray(jd_mid, dtype=np.float64)
    bjd = bjd_tdb(jd_mid, ra_deg, dec_deg, loc)
    airmass = np.array(airmass_header, dtype=np.float64, copy=True).reshape(jd_mid.shape)
    computed = computed_airmass(jd_mid, ra_deg, dec_deg, loc)
    bad = np.isfinite(computed) & (~np.isfinite(airmass) | (np.abs(airmass - computed) > tolerance * computed))
    n_stale = int(np.sum(bad & np.isfinite(airmass)))
    if n_stale:
        log.warning("%d frame(s) have a header airmass differing from the computed one by more than "
                    "%.0f%%: the computed value is used", n_stale, 100 * tolerance)
    airmass[bad] = computed[bad]
    return bjd, airmass, int(np.sum(bad))


# --------------------------------------------------------------------------------------------
# Observation times from any camera's headers
# --------------------------------------------------------------------------------------------
# ISO 8601 stamp with an optional zone suffix: 2017-12-19T18:33:43.317-0700, ...-07:00, ...Z,
# ...-0000, or a space for the T. Groups: date, time (optional), zone (optional).
_ISO_STAMP = re.compile(
    r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(\.\d*)?)?)?"
    r"\s*(Z|UTC?|GMT|[+-]\d{2}(?::?\d{2})?)?\s*$", re.IGNORECASE)
_TIME_OF_DAY = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2})(\.\d*)?)?\s*(Z|UTC?|GMT|[+-]\d{2}(?::?\d{2})?)?\s*$",
                          re.IGNORECASE)
_FLOAT_TEXT = re.compile(r"^\s*[+-]?(\d*)(?:\.(\d*))?(?:[eEdD]([+-]?\d+))?\s*$")
# Keywords looked at when present although the instrument file does not name them: they never
# set a frame's time while a configured keyword gives one, they cross-check it.
AUTO_TIME_KEYWORDS = (("DATE-OBS", "iso"), ("DATE-BEG", "iso"), ("UT-OBS", "iso"), ("UTC-OBS", "iso"),
                      ("JD", "jd"), ("JD-OBS", "jd"), ("MJD-OBS", "mjd"))
# A source coarser than this (s) is "rounded": used only when nothing finer exists (said in the
# inventory and the night summary). Sources at least this fine are equivalent and go by order.
FINE_RESOLUTION_S = 1.0
# A source coarser than this (s) gives no time at all (a DATE-OBS holding only the date).
MAX_RESOLUTION_S = 3600.0
MJD_ZERO = 2400000.5


def _zone_hours(text):
    """UTC offset (h) of a zone suffix ``Z``, ``UTC``, ``-0700``, ``-07:00``, ``+05``; None if absent."""
    if not text:
        return None
    text = text.upper()
    if text in ("Z", "UT", "UTC", "GMT"):
        return 0.0
    sign = -1.0 if text[0] == "-" else 1.0
    digits = text[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) > 2 else 0
    return sign * (hours + minutes / 60.0)


def _zone_label(hours):
    sign = "-" if hours < 0 else "+"
    total = round(abs(hours) * 60)
    return f"{sign}{total // 60:02d}:{total % 60:02d}"


def _utc_jd(year, month, day, hour, minute, second, offset_h):
    """JD (UTC) of a civil stamp in a zone ``offset_h`` hours ahead of UTC (ERFA, leap seconds)."""
    import erfa

    d1, d2 = erfa.dtf2d("UTC", int(year), int(month), int(day), int(hour), int(minute), float(second))
    return d1 + d2 - offset_h / 24.0


def parse_iso_time(text, utc_offset_hours=None):
    """UTC Julian date of an ISO 8601 stamp, with or without a zone suffix.

    Parameters
    ----------
    text : str
        ``YYYY-MM-DDThh:mm:ss[.fff][zone]``; zone ``Z``, ``UTC``, ``±hh``, ``±hhmm`` or ``±hh:mm``
        (``-0000`` is UTC). A date alone is midnight.
    utc_offset_hours : float, optional
        Offset of a stamp *without* a zone from UTC (h, e.g. -7 for MST); None or 0: UTC.
        A stamp with a zone suffix ignores it.

    Returns
    -------
    jd : float
        JD (UTC).
    resolution_s : float
        Step of the stamp's last digit (s): 0.001 for milliseconds, 1 for whole seconds, 60 without
        seconds, 86400 for a date alone.
    zone : str
        How the zone was known: ``'UTC'`` (no suffix, no offset), ``'zone -07:00'`` (suffix) or
        ``'utc_offset_hours -7'``.

    Raises
    ------
    ValueError
        When ``text`` is not such a stamp.
    """
    m = _ISO_STAMP.match(str(text))
    if m is None:
        raise ValueError(f"not an ISO 8601 date/time: {text!r}")
    year, month, day, hour, minute, sec, frac, zone = m.groups()
    if hour is None:
        resolution = 86400.0
    elif sec is None:
        resolution = 60.0
    else:
        resolution = 10.0 ** -(len(frac) - 1) if frac and len(frac) > 1 else 1.0
    second = float((sec or "0") + (frac if frac and len(frac) > 1 else ""))
    offset = _zone_hours(zone)
    if offset is not None:
        how = "UTC" if offset == 0 else f"zone {_zone_label(offset)}"
    elif utc_offset_hours:
        offset, how = float(utc_offset_hours), f"utc_offset_hours {float(utc_offset_hours):+g}"
    else:
        offset, how = 0.0, "UTC"
    try:
        jd = _utc_jd(year, month, day, hour or 0, minute or 0, second, offset)
    except Exception as err:  # ERFA's errors for impossible dates (month 13, second 61.5 ...)
        raise ValueError(f"impossible date/time {text!r} ({err})") from None
    return jd, resolution, how


def parse_date_and_time(date_text, time_text, utc_offset_hours=None):
    """UTC JD of a date keyword (``YYYY-MM-DD``) and a time-of-day keyword (``hh:mm:ss[.f][zone]``).

    Returns and raises as :func:`parse_iso_time`.
    """
    d = _ISO_STAMP.match(str(date_text))
    t = _TIME_OF_DAY.match(str(time_text))
    if d is None or t is None:
        raise ValueError(f"not a date + time of day: {date_text!r} + {time_text!r}")
    date = f"{int(d[1]):04d}-{int(d[2]):02d}-{int(d[3]):02d}"
    hh, mm, ss, frac, zone = t.groups()
    stamp = f"{date}T{int(hh):02d}:{mm}" + (f":{ss}{frac or ''}" if ss else "") + (zone or "")
    return parse_iso_time(stamp, utc_offset_hours)


def float_resolution(text):
    """Step of the last written digit of a number written as ``text`` (``'58106.063'`` -> 0.001)."""
    m = _FLOAT_TEXT.match(str(text))
    if m is None:
        return math.nan
    decimals = len(m[2] or "") - int(m[3] or 0)
    return 10.0 ** -decimals


def _card_text(header, key):
    """The value of card ``key`` as written in the file (for a number's written precision)."""
    cards = getattr(header, "cards", None)
    if cards is not None:
        try:
            image = cards[key].image
        except (KeyError, IndexError, AttributeError):
            image = None
        if image:
            return image[10:].split("/")[0].strip()
    return repr(header.get(key))


@dataclass
class TimeSource:
    """One way a header gives a frame's time: ``label`` (keyword(s) and zone), ``jd`` (UTC, at the
    point of the exposure ``date_obs_is`` names), ``resolution_s``, ``configured`` (named in
    the instrument file) and ``order`` (preference among equally fine sources)."""

    label: str
    jd: float
    resolution_s: float
    configured: bool
    order: int


@dataclass
class FrameTime:
    """A frame's mid-exposure JD (UTC) and where it came from.

    ``source`` names the keyword(s) used; ``resolution_s`` their written precision; ``warnings``
    lists disagreements with other time keywords larger than the exposure (and the use of a
    rounded source); empty when none.
    """

    jd_mid: float
    source: str
    resolution_s: float
    warnings: list = field(default_factory=list)


def _kw_value(header, key):
    if not key:
        return None
    value = header.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def time_sources(header, instrument, auto=True):
    """Every time the header gives (see :class:`TimeSource`), configured ones first.

    Configured: ``keywords.date_obs`` (an ISO stamp; a date alone is completed by
    ``keywords.time_obs``, e.g. TIME-OBS or UT), ``keywords.jd_obs`` (or the older
    ``keywords.jd``) and ``keywords.mjd_obs``. With ``auto``, the usual keywords the instrument
    file does not name (:data:`AUTO_TIME_KEYWORDS`) are added for cross-checks. Stamps without a
    zone are in ``utc_offset_hours`` of the instrument (UTC when absent). Unparsable values are
    left out (the caller reports the configured keyword as unusable when nothing is left).
    """
    kw = instrument.get("keywords") or {}
    offset = instrument.get("utc_offset_hours")
    sources, used_keys = [], set()

    def add(label, jd, res, configured):
        if res > MAX_RESOLUTION_S:
            return
        sources.append(TimeSource(label, float(jd), float(res), configured, len(sources)))

    def iso(key, configured):
        value = _kw_value(header, key)
        if value is None:
            return
        used_keys.add(key.upper())
        text = str(value).strip()
        time_key = kw.get("time_obs") or "TIME-OBS"
        m = _ISO_STAMP.match(text)
        try:
            if m is not None and m.group(4) is None and configured and time_key and _kw_value(header, time_key):
                jd, res, how = parse_date_and_time(text, str(header[time_key]).strip(), offset)
                used_keys.add(time_key.upper())
                add(f"{key}+{time_key} ({how})", jd, res, configured)
            else:
                jd, res, how = parse_iso_time(text, offset)
                add(f"{key} ({how})", jd, res, configured)
        except ValueError:
            return

    def number(key, kind, configured):
        value = _kw_value(header, key)
        if value is None:
            return
        used_keys.add(key.upper())
        try:
            v = float(value)
        except (TypeError, ValueError):
            return
        if not math.isfinite(v):
            return
        jd = v + MJD_ZERO if kind == "mjd" else v
        if not 2.0e6 < jd < 3.0e6:     # not a JD of the telescope era (e.g. a JD stored as MJD)
            return
        res = float_resolution(_card_text(header, key)) * 86400.0
        add(key, jd, res if math.isfinite(res) else 86400.0, configured)

    iso(kw.get("date_obs") or "DATE-OBS", True)
    number(kw.get("jd_obs") or kw.get("jd"), "jd", True)
    number(kw.get("mjd_obs"), "mjd", True)
    if auto:
        for key, kind in AUTO_TIME_KEYWORDS:
            if key in used_keys:
                continue
            if kind == "iso":
                iso(key, False)
            else:
                number(key, kind, False)
    return sources


def _exposure_shift_days(instrument, exptime):
    """Days from the time the header marks (``date_obs_is``) to mid-exposure."""
    where = instrument.get("date_obs_is", "start")
    half = 0.5 * float(exptime) / 86400.0
    return {"start": half, "mid": 0.0, "end": -half}[where]


def choose_time(sources):
    """The source that sets a frame's time: configured before auto-detected, then the finest
    (any source at least :data:`FINE_RESOLUTION_S` fine counts as fine), then instrument-file order."""
    if not sources:
        return None
    return min(sources, key=lambda s: (not s.configured, max(s.resolution_s, FINE_RESOLUTION_S), s.order))


def frame_time(header, instrument, exptime, check=True):
    """Mid-exposure JD (UTC) of a frame from whichever header time is best (see :func:`choose_time`).

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
    instrument : dict
        Validated instrument configuration (``keywords``, ``utc_offset_hours``, ``date_obs_is``).
    exptime : float
        Exposure time (s).
    check : bool
        Also compare every other time keyword of the header with the chosen one: a difference
        larger than the exposure (plus both sources' rounding) becomes a warning.

    Returns
    -------
    FrameTime or None
        None when the header gives no usable time.
    """
    # Auto-detected keywords are always gathered (they set the time when no configured one
    # does), so the inventory and the photometry paths pick the same source.
    sources = time_sources(header, instrument, auto=True)
    chosen = choose_time(sources)
    if chosen is None:
        return None
    shift = _exposure_shift_days(instrument, exptime)
    out = FrameTime(chosen.jd + shift, chosen.label, chosen.resolution_s)
    if chosen.resolution_s > FINE_RESOLUTION_S:
        out.warnings.append(f"time from {chosen.label} rounded to {chosen.resolution_s:g} s "
                            "(no finer time keyword)")
    if check:
        for other in sources:
            if other is chosen:
                continue
            diff_s = (other.jd - chosen.jd) * 86400.0
            if abs(diff_s) > float(exptime) + other.resolution_s + chosen.resolution_s:
                hours = diff_s / 3600.0
                hint = (" (a whole number of hours: a stamp in local time? set utc_offset_hours or use a "
                        "UTC keyword)" if abs(hours) >= 0.9 and abs(hours - round(hours)) * 3600 < 120 else "")
                out.warnings.append(f"{other.label} differs from the time used ({chosen.label}) by "
                                    f"{diff_s:+.0f} s{hint}")
    return out


def time_problem(header, instrument):
    """Why a header gives no usable time (for the inventory's reason), naming the keywords tried."""
    kw = instrument.get("keywords") or {}
    keys = [k for k in (kw.get("date_obs") or "DATE-OBS", kw.get("jd_obs") or kw.get("jd"), kw.get("mjd_obs")) if k]
    present = [k for k in keys if _kw_value(header, k) is not None]
    if not present:
        return f"missing {' / '.join(keys)}"
    date_key = keys[0]
    m = _ISO_STAMP.match(str(header.get(date_key, "")))
    if m is not None and m.group(4) is None:
        return (f"{date_key}={header[date_key]!r} holds only a date and no time-of-day keyword was found: "
                "set keywords.time_obs (e.g. TIME-OBS, UT) in the instrument file")
    return "unparsable " + ", ".join(f"{k}={header[k]!r}" for k in present)
