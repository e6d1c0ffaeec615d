"""MaxIm DL-style raw files: headers, file names and uint16 writes (optionally gzipped).

This is the ``layout="maxim"`` writer of the simulator; another camera-software layout only needs
its own ``header``/``filename`` functions with the same arguments.
"""

import gzip
import os
from pathlib import Path

from astropy.io import fits

from ..fitsio import atomic_path
from .site import sexagesimal

IMAGETYP = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field", "science": "Light Frame"}


def _safe(name):
    """File-name-safe version of a header string (spaces and slashes to ``_``)."""
    return "".join(c if c.isalnum() or c in "+-._" else "_" for c in str(name))


def filename(kind, start_iso, target="", filt="", compressed=False):
    """MaxIm-like file name from the exposure start (UTC).

    ``<TARGET>_<FILTER>_<YYYYMMDD>_<HHMMSS>.fits``, ``Bias_<YYYYMMDD>_<HHMMSS>.fits``,
    ``Dark_<YYYYMMDD>_<HHMMSS>.fits`` and ``Flat_<FILTER>_<YYYYMMDD>_<HHMMSS>.fits``
    (``.fits.gz`` when ``compressed``).
    """
    stamp = start_iso[:19].replace("-", "").replace(":", "").replace("T", "_")
    prefix = {"bias": "Bias", "dark": "Dark", "flat": f"Flat_{_safe(filt)}",
              "science": f"{_safe(target)}_{_safe(filt)}"}[kind]
    return f"{prefix}_{stamp}.fits" + (".gz" if compressed else "")


def header(frame, instrument, cfg):
    """MaxIm DL-style primary header of one raw frame.

    Parameters
    ----------
    frame : dict
        ``kind`` (bias|dark|flat|science), ``date_obs`` (ISO UTC, exposure start), ``exptime`` (s),
        ``jd_start`` (JD UTC), and for flats/science ``ra_deg``, ``dec_deg``, ``airmass``.
    instrument : dict
        Instrument file contents (``keywords``, ``site``, ``name``...).
    cfg : SimConfig
        Provides ``filter``, ``target``, ``telescope``, ``ccd_temp_c``, ``seed``.
    """
    kw = {"imagetyp": "IMAGETYP", "object": "OBJECT", "filter": "FILTER", "exptime": "EXPTIME",
          "date_obs": "DATE-OBS", "ra": "RA", "dec": "DEC", "airmass": "AIRMASS", "jd": None}
    kw.update({k: v for k, v in (instrument.get("keywords") or {}).items() if v})
    site = instrument["site"]
    kind = frame["kind"]
    h = fits.Header()
    h[kw["date_obs"]] = (frame["date_obs"], "[ISO 8601] UTC date/time of exposure start")
    h[kw["exptime"]] = (float(frame["exptime"]), "[sec] Duration of exposure")
    h["EXPOSURE"] = (float(frame["exptime"]), "[sec] Duration of exposure")
    h["SET-TEMP"] = (cfg.ccd_temp_c, "CCD temperature setpoint in C")
    h["CCD-TEMP"] = (cfg.ccd_temp_c + frame.get("ccd_temp_offset", 0.0), "CCD temperature at start of exposure in C")
    h["XBINNING"] = (1, "Binning level along the X-axis")
    h["YBINNING"] = (1, "Binning level along the Y-axis")
    if kind in ("flat", "science"):
        h[kw["filter"]] = (cfg.filter, "Filter name")
    h[kw["imagetyp"]] = (IMAGETYP[kind], "Type of image")
    h["SWCREATE"] = ("MaxIm DL Version 6.50 (bandersnake simulation)", "Name of software")
    if kind in ("flat", "science"):
        ra = sexagesimal(frame["ra_deg"], hours=True, plus=False)
        dec = sexagesimal(frame["dec_deg"], precision=1)
        h[kw["ra"]] = (ra, "[hms J2000] Target right ascension")
        h[kw["dec"]] = (dec, "[dms +N J2000] Target declination")
        for key, value in (("OBJCTRA", ra), ("OBJCTDEC", dec)):
            if key not in h:
                h[key] = (value, "Nominal J2000 position of the image centre")
        h[kw["airmass"]] = (round(float(frame["airmass"]), 6), "Airmass (multiple of zenithal airmass)")
    h["SITELAT"] = (sexagesimal(site["latitude_deg"], plus=False, precision=0), "Latitude of the imaging location")
    h["SITELONG"] = (sexagesimal(site["longitude_deg"], plus=False, precision=0), "Longitude of the imaging location")
    h["JD"] = (float(frame["jd_start"]), "Julian Date at start of exposure")
    if kw.get("jd") and kw["jd"] != "JD":
        h[kw["jd"]] = (float(frame["jd_start"]), "Julian Date at start of exposure")
    h[kw["object"]] = (cfg.target if kind == "science" else "", "Target object name")
    h["TELESCOP"] = (cfg.telescope, "Telescope name")
    h["INSTRUME"] = (instrument.get("instrume") or instrument["name"], "Detector instrument name")
    h["OBSERVAT"] = (site.get("name") or "", "Observatory name")
    h["HISTORY"] = f"Simulated by bandersnake.simulate (seed {cfg.seed}); truth kept outside the raw tree"
    return h


def write_raw(path, data, hdr, compresslevel=6):
    """Write a uint16 image as BITPIX 16 / BZERO 32768 (atomic; gzipped when ``path`` ends in .gz).

    Parameters
    ----------
    path : str or Path
    data : ndarray, uint16
        Raw ADU.
    hdr : astropy.io.fits.Header
    compresslevel : int
        gzip level of ``.gz`` files (6: ~5x faster than 9 for ~3 % larger files).
    """
    hdu = fits.PrimaryHDU(data=data, header=hdr)  # uint16 -> BITPIX 16, BZERO 32768
    with atomic_path(path) as tmp:
        if str(path).endswith(".gz"):
            # mtime=0 and the final name in the gzip header keep the file byte-reproducible.
            with open(tmp, "wb") as raw, gzip.GzipFile(filename=Path(path).name[:-3], mode="wb", fileobj=raw,
                                                      compresslevel=compresslevel, mtime=0) as fh:
                hdu.writeto(fh)
        else:
            hdu.writeto(tmp, overwrite=True)
        os.chmod(tmp, 0o644)  # raw files are read by everyone (mkstemp makes them 0600)
