"""ASTEP-style raw files: the ``layout="astep"`` writer of the simulator.

ASTEP users keep a date as ``<data>/YYYY-MM-DD/YYYY-MM-DD-CAMS/`` (science frames, their darks,
biases) and ``YYYY-MM-DD-CAMS_SKYFLAT/`` (sky flats and the darks of the flats' exposure time);
files are named ``YYYY-MM-DD_HH.MM.SS_<KIND>.fits`` with KIND one of SCIENCE, DARK, BIAS, SKYFLAT
(the type is read from the name; ``ACQTYPE`` carries it too). RA/DEC are the pointing in degrees.
Writes go through :func:`bandersnake.sim.maxim.write_raw` (uint16, BITPIX 16 / BZERO 32768).
"""

from astropy.io import fits

from .maxim import write_raw  # noqa: F401  (same uint16 writer)

KIND = {"bias": "BIAS", "dark": "DARK", "flat": "SKYFLAT", "science": "SCIENCE"}


def date_iso(night_date):
    """``YYYYMMDD`` -> ``YYYY-MM-DD``."""
    d = str(night_date)
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


def folder(frame, night_date):
    """Sub-folder of a frame: flats and the flats' darks in ``-CAMS_SKYFLAT``, the rest in ``-CAMS``."""
    base = f"{date_iso(night_date)}-CAMS"
    return f"{base}_SKYFLAT" if frame["kind"] == "flat" or frame.get("folder") == "skyflat" else base


def night_dir(raw_root, night_date):
    """Date folder ``<raw_root>/YYYY-MM-DD``."""
    from pathlib import Path

    return Path(raw_root) / date_iso(night_date)


def filename(kind, start_iso, target="", filt="", compressed=False):
    """``YYYY-MM-DD_HH.MM.SS_<KIND>.fits`` from the exposure start (UTC); ``.gz`` when ``compressed``."""
    day, clock = start_iso[:10], start_iso[11:19].replace(":", ".")
    return f"{day}_{clock}_{KIND[kind]}.fits" + (".gz" if compressed else "")


def header(frame, instrument, cfg):
    """ASTEP-style primary header of one raw frame (see :func:`bandersnake.sim.maxim.header`)."""
    kw = {"object": "OBJECT", "exptime": "EXPTIME", "date_obs": "DATE-OBS", "ra": "RA", "dec": "DEC",
          "airmass": "AIRMASS", "imagetyp": "ACQTYPE"}
    kw.update({k: v for k, v in (instrument.get("keywords") or {}).items() if v and k in kw})
    site = instrument["site"]
    kind = frame["kind"]
    h = fits.Header()
    h[kw["date_obs"]] = (frame["date_obs"], "[UTC] start of exposure")
    h[kw["exptime"]] = (float(frame["exptime"]), "[s] exposure time")
    h[kw["imagetyp"]] = (KIND[kind], "acquisition type")
    h["CCD-TEMP"] = (cfg.ccd_temp_c + frame.get("ccd_temp_offset", 0.0), "[C] CCD temperature")
    if kind in ("flat", "science"):
        h[kw["ra"]] = (round(float(frame["ra_deg"]), 6), "[deg] pointing right ascension (J2000)")
        h[kw["dec"]] = (round(float(frame["dec_deg"]), 6), "[deg] pointing declination (J2000)")
        h[kw["airmass"]] = (round(float(frame["airmass"]), 6), "airmass at start")
    h[kw["object"]] = (cfg.target if kind == "science" else KIND[kind], "target")
    h["TELESCOP"] = (cfg.telescope, "telescope")
    h["INSTRUME"] = (instrument.get("instrume") or instrument["name"], "camera")
    h["OBSERVAT"] = (site.get("name") or "", "observatory")
    h["LATITUDE"] = (float(site["latitude_deg"]), "[deg] site latitude")
    h["LONGITUD"] = (float(site["longitude_deg"]), "[deg] site longitude, east positive")
    h["HISTORY"] = f"Simulated by bandersnake.simulate (seed {cfg.seed}); truth kept outside the raw tree"
    return h
