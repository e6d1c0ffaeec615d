"""One target and filter stacked over several nights (``results/stacks/<TARGET>_<FILTER>/``).

The nights' stack images (rate e-/s, ERR, MASK) are resampled onto one grid, ``fieldcenter`` /
``out_size`` when given (then every night is already on it and the resampling is an identity),
otherwise the first night's grid, and combined like frames (:mod:`bandersnake.stack.combine`):
inverse-variance weights, clipped mean or median. Then sources, ePSF, zero point and limits as
for a night (:func:`bandersnake.stack.measure.measure_stack`).
"""

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from ..errors import BandersnakeError
from ..fitsio import atomic_path, write_fits
from . import combine as C
from . import grid as G
from .build import DEFAULTS, image_hdul, parse_fieldcenter
from .measure import measure_stack

log = logging.getLogger(__name__)


def _read(path):
    with fits.open(path, memmap=False) as h:
        return (h[0].header.copy(), np.asarray(h["SCI"].data, np.float32), np.asarray(h["ERR"].data, np.float32),
                np.asarray(h["MASK"].data, np.uint8), WCS(h["SCI"].header))


def combine_nights(paths, out_image, settings=None, memory_mb=1024):
    """Combine the nights' stack images ``paths`` into one stack image (SCI/ERR/MASK/NCOMB).

    Returns
    -------
    astropy.table.Table
        One row per night: ``file``, ``ncombine``, ``exptime`` (s), ``mjd_mid`` (d), ``weight``.
    """
    s = dict(DEFAULTS, **(settings or {}))
    if not paths:
        raise BandersnakeError(f"{out_image}: no night stack to combine")
    first = _read(paths[0])
    centre = parse_fieldcenter(s.get("fieldcenter"))
    if centre is None and not s.get("out_size"):
        wcs, shape = first[4].celestial, first[1].shape
    else:
        centre = centre or tuple(first[4].celestial.wcs.crval)
        scale = s.get("pixel_scale_arcsec") or G.pixel_scale_arcsec(first[4])
        size = s.get("out_size")
        if size:
            nx, ny = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
            shape = (ny, nx)
        else:
            shape = first[1].shape
        wcs = G.tangent_grid(centre[0], centre[1], scale, shape)
    rows, headers = [], []
    with C.FrameCube(len(paths), shape, C.scratch_dir_for(out_image)) as cube:
        for i, p in enumerate(paths):
            hdr, sci, err, mask, w = _read(p)
            var = err.astype(np.float32) ** 2
            sci2, var2, mask2 = G.resample_frame(sci, var, mask, w, wcs, shape, order=s["interpolation"])
            cube.put(i, sci2, var2, mask2)
            headers.append(hdr)
            rows.append((Path(p).parent.parent.parent.name + "/" + Path(p).name, int(hdr.get("NCOMBINE", 0)),
                         float(hdr.get("EXPTIME", math.nan)), float(hdr.get("MJD-MID", math.nan)),
                         float(cube.weights[i])))
        sci, err, mask, ncomb = C.combine_cube(cube, s["method"], s["clip_sigma"], memory_mb, s["grow"])
    h = fits.Header()
    h.update(wcs.to_header(relax=True))
    for key in ("OBJECT", "FILTER", "BINNING"):
        if key in headers[0]:
            h[key] = headers[0][key]
    h["BUNIT"] = ("electron/s", "SCI and ERR in e-/s")
    h["NNIGHTS"] = (len(paths), "nights combined")
    h["NCOMBINE"] = (int(sum(r[1] for r in rows)), "frames combined, all nights")
    texp = float(np.nansum([r[2] for r in rows]))
    h["EXPTIME"] = (texp, "[s] total exposure time, all nights")
    mjd = np.array([r[3] for r in rows])
    w = np.array([r[2] for r in rows])
    if np.isfinite(mjd).all():
        m = float(np.sum(mjd * w) / np.sum(w))
        h["MJD-MID"] = (m, "[d] exposure-weighted mid-time, MJD UTC")
        h["DATE-MID"] = (Time(m, format="mjd", scale="utc").isot, "[UTC] exposure-weighted mid-time")
    for key in ("RADISP", "DEDISP", "ALIGNRMS"):
        vals = np.array([float(x.get(key, math.nan)) for x in headers])
        vals = vals[np.isfinite(vals)]
        if vals.size:
            h[key] = (round(float(np.sqrt(np.mean(vals ** 2))), 5), f"RMS over the nights' {key}")
    fw = [float(x.get("PSFFWHM", x.get("FWHMMED", math.nan))) for x in headers]
    h["FWHMMED"] = (round(float(np.nanmedian(fw)), 3), "[px] median of the nights' FWHM")
    h["STKMETH"] = (s["method"], "combination of the nights")
    for r in rows:
        h["HISTORY"] = f"night stack {r[0]} t={r[2]:g}s w={r[4]:.4g}"
    write_fits(image_hdul(h, wcs, sci, err, mask, ncomb), out_image)
    t = Table(rows=rows, names=("file", "ncombine", "exptime", "mjd_mid", "weight"),
              dtype=("U300", "i4", "f8", "f8", "f8"))
    t["exptime"].unit, t["mjd_mid"].unit = "s", "d"
    return t


def stack_nights(paths, out_stack, out_table, epsf_png=None, zp_png=None, settings=None, catalogue_settings=None,
                 memory_mb=1024, title=""):
    """Stack one target and filter over the nights' stacks ``paths`` and measure it.

    Parameters
    ----------
    paths : list of str
        The nights' ``<TARGET>_<FILTER>_stk.fits`` (their image extensions are used).
    out_stack, out_table : str
        The product (as a night's) and the table of the nights used (ECSV).
    """
    s = dict(DEFAULTS, **(settings or {}))
    with tempfile.TemporaryDirectory(dir=C.scratch_dir_for(out_stack)) as tmp:
        image = Path(tmp) / "image.fits"
        t = combine_nights(sorted(paths), image, s, memory_mb)
        h = measure_stack(image, out_stack, epsf_png, zp_png, s, catalogue_settings, title)
    t.meta.update(ZPTMAG=h["ZPTMAG"], M5SIGMA=h["M5SIGMA"], NNIGHTS=len(paths))
    with atomic_path(out_table) as tmpf:
        t.write(tmpf, format="ascii.ecsv", overwrite=True)
    return h
