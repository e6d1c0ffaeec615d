"""Mid-exposure times, BJD_TDB and airmass, computed offline with astropy.

* ``JD_UTC`` at mid-exposure: ``DATE-OBS`` (+ ``EXPTIME / 2`` unless the instrument file says
  ``date_obs_is: mid``).
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

import numpy as np

log = logging.getLogger(__name__)


def offline_iers():
    """Make astropy use only its bundled Earth-orientation tables (idempotent)."""
    from astropy.utils import iers

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    iers.conf.iers_degraded_accuracy = "warn"


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
    """JD (UTC) at mid-exposure from ``DATE-OBS`` (ISO; ``TIME-OBS`` appended when it has no time).

    Returns NaN when the header has no usable date.
    """
    from astropy.time import Time

    key = _kw(instrument, "date_obs", "DATE-OBS")
    date = header.get(key)
    if date is None:
        jd_key = _kw(instrument, "jd", None)
        if jd_key and jd_key in header:
            jd = float(header[jd_key])
        else:
            return math.nan
    else:
        date = str(date).strip()
        if "T" not in date and header.get("TIME-OBS"):
            date = f"{date}T{str(header['TIME-OBS']).strip()}"
        try:
            jd = Time(date, format="isot" if "T" in date else None, scale="utc").jd
        except ValueError:
            return math.nan
    if instrument.get("date_obs_is", "start") != "mid":
        jd += 0.5 * float(exptime) / 86400.0
    return float(jd)


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
