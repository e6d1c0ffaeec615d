"""The night summary: what went in, what was rejected and why, which calibrations (and fallbacks)
were used, and how many frames and stars each target's photometry flagged."""

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .fitsio import write_text
from .inventory import read_inventory, summarize

log = logging.getLogger(__name__)

MASTER_KEYS = ("CALTYPE", "FILTER", "NCOMBINE", "BUNIT", "FALLBACK", "RDNOISE", "DARKCUR")


def describe_master(path):
    """One line per master: its type, inputs, units and fallback, from its header."""
    header = fits.getheader(path)
    parts = [f"{k}={header[k]}" for k in MASTER_KEYS if k in header]
    return f"{Path(path).name}: " + ", ".join(parts)


FLAG_NAMES = {1: "tracking lost", 2: "off chip", 4: "saturated", 8: "bad pixel", 16: "NaN",
              32: "corrupt frame", 64: "re-acquired"}


def describe_table(path):
    """Rows of a centroid or photometry table and, per flag bit, the stars flagged in how many frames."""
    table = Table.read(path)
    line = f"{Path(path).name}: {len(table)} frames"
    if "flag" in table.colnames and len(table):
        flags = np.atleast_2d(np.asarray(table["flag"]).T).T
        parts = []
        for bit, name in FLAG_NAMES.items():
            frames_per_star = ((flags & bit) > 0).sum(axis=0)
            stars = {i: int(n) for i, n in enumerate(frames_per_star) if n}
            if stars:
                parts.append(f"{name}: " + " ".join(f"star{i}x{n}" for i, n in stars.items()))
        if parts:
            line += " (" + "; ".join(parts) + ")"
    return line


def night_summary(night, products, out, without_positions=()):
    """Write the night's summary text to ``out`` and return it.

    Parameters
    ----------
    night : str
        Night id.
    products : list of str
        The night's products (inventory, masters, tables); other files are listed by name.
    out : str
        Output text file.
    without_positions : list of str
        Science targets with no entry in targets.yaml (no photometry was made for them).
    """
    lines = [f"bandersnake night summary: {night}", ""]
    inventories = [p for p in products if str(p).endswith("inventory.ecsv")]
    if inventories:
        lines += ["Frames"] + ["  " + s for s in summarize(read_inventory(inventories[0]))] + [""]
    masters = [p for p in products if Path(p).name.startswith(("master_", "bad_pixel_map"))]
    if masters:
        lines += ["Calibrations"] + ["  " + describe_master(p) for p in masters] + [""]
    tables = [p for p in products if Path(p).name.startswith(("centroids", "photometry_aper"))
              and Path(p).suffix == ".fits"]
    if tables:
        lines += ["Targets"] + [f"  {Path(p).parent.parent.name}/{describe_table(p)}" for p in tables] + [""]
    from .calibrated import describe_products

    frame_products = describe_products(products)
    if frame_products:
        lines += ["Calibrated frames, astrometry, KBMOD"] + ["  " + s for s in frame_products] + [""]
    for target in without_positions:
        lines.append(f"  {target}: no entry in targets.yaml, so no photometry; add its star positions to get it")
    text = "\n".join(lines) + "\n"
    write_text(text, out)
    log.info("night summary written to %s", out)
    return text
