"""Site geometry with astropy, offline: sun altitude, target airmass, sidereal time, BJD_TDB.

Everything runs inside :func:`offline_iers`, which forbids IERS downloads and accepts the
bundled tables (``astropy-iers-data``) with degraded accuracy outside their range: the
simulator needs arcminute-level geometry, not milliarcseconds.
"""

import contextlib
import warnings

import numpy as np
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord, get_body
from astropy.time import Time
from astropy.utils import iers


@contextlib.contextmanager
def offline_iers():
    """Use the bundled IERS tables only (no download), warning instead of failing out of range."""
    with iers.conf.set_temp("auto_download", False), \
            iers.conf.set_temp("iers_degraded_accuracy", "ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", iers.IERSWarning)
        yield


def site_location(site):
    """EarthLocation of an instrument file's ``site`` section (deg, deg, m)."""
    return EarthLocation.from_geodetic(lon=site["longitude_deg"] * u.deg, lat=site["latitude_deg"] * u.deg,
                                       height=site["altitude_m"] * u.m)


def sun_altitude(jd_utc, location):
    """Apparent altitude of the Sun (deg, no refraction) at JD(UTC) ``jd_utc``."""
    t = Time(np.atleast_1d(jd_utc), format="jd", scale="utc")
    with offline_iers():
        sun = get_body("sun", t, location)
        alt = sun.transform_to(AltAz(obstime=t, location=location)).alt.deg
    return alt


def target_altaz(jd_utc, ra_deg, dec_deg, location):
    """Altitude and azimuth (deg) of an ICRS position at JD(UTC) ``jd_utc`` (no refraction).

    The simulator's airmass is ``1 / sin(alt)`` (astropy's ``AltAz.secz``), what a pipeline
    recomputing it from the headers gets too.
    """
    t = Time(np.atleast_1d(jd_utc), format="jd", scale="utc")
    with offline_iers():
        aa = SkyCoord(ra_deg * u.deg, dec_deg * u.deg).transform_to(AltAz(obstime=t, location=location))
        return aa.alt.deg, aa.az.deg


def local_sidereal_time_deg(jd_utc, location):
    """Local apparent sidereal time (deg) at JD(UTC) ``jd_utc``."""
    t = Time(np.atleast_1d(jd_utc), format="jd", scale="utc", location=location)
    with offline_iers():
        return t.sidereal_time("apparent").deg


def bjd_tdb(jd_utc, ra_deg, dec_deg, location):
    """Barycentric Julian date (TDB) for JD(UTC) ``jd_utc`` toward an ICRS position.

    Uses astropy's built-in ephemeris (no download), accurate to well below 1 s.
    """
    t = Time(np.atleast_1d(jd_utc), format="jd", scale="utc", location=location)
    with offline_iers():
        ltt = t.light_travel_time(SkyCoord(ra_deg * u.deg, dec_deg * u.deg), kind="barycentric",
                                  ephemeris="builtin")
        return (t.tdb + ltt).jd


def sexagesimal(value_deg, hours=False, plus=True, precision=2):
    """MaxIm-style sexagesimal string: ``'05 02 11.83'`` (hours) or ``'-24 37 38.0'`` (deg).

    Parameters
    ----------
    value_deg : float
        Angle in degrees (divided by 15 when ``hours``).
    hours : bool
        Format as hours (RA).
    plus : bool
        Prefix non-negative values with ``+`` (declinations).
    precision : int
        Decimals of the seconds field (0: integer seconds).
    """
    v = value_deg / 15.0 if hours else value_deg
    sign = "-" if v < 0 else ("+" if plus else "")
    v = abs(v)
    total = round(v * 3600.0, precision)
    d, rem = divmod(total, 3600.0)
    m, s = divmod(rem, 60.0)
    width = 3 + precision if precision else 2
    sec = f"{s:0{width}.{precision}f}" if precision else f"{int(round(s)):02d}"
    return f"{sign}{int(d):02d} {int(m):02d} {sec}"
