"""Coarse frame, reference cells, tiles and the cell <-> tile mapping.

Pixel coordinates are 0-based with the centre of the first pixel at (0, 0) (astropy's
``origin=0``), ``x`` the column. A tile is a rectangle of coarse pixels ``[x0, x1) x [y0, y1)``;
its *extended* region adds ``margin`` coarse pixels on every side (light from there reaches the
tile through the PSF and the sub-pixel offsets). The supersampled grid of a tile has ``k`` x ``k``
pixels per coarse pixel over the extended region, with continuous coordinates

    s = (x - (x0 - margin) + 0.5) * k,    t = (y - (y0 - margin) + 0.5) * k.
"""

import glob
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from ..errors import BandersnakeError, FrameError
from ..fitsio import image_hdu_index

log = logging.getLogger(__name__)

#: TESS frame header keys carried over to every product.
CARRY_KEYS = ("SECTOR", "CAMERA", "CCD", "TELESCOP", "INSTRUME", "DATE-OBS", "DATE-END", "TSTART", "TSTOP")
_BAND_KEYS = ("FILTER", "FILTERID", "FPA.FILTER", "HIERARCH FPA.FILTER", "BAND")


def _quiet_wcs(header):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    if not wcs.has_celestial:
        raise ValueError("no celestial WCS")
    return wcs


@dataclass
class Frame:
    """The coarse frame's geometry: path, shape (ny, nx), WCS, science region, header keys."""

    path: str
    shape: tuple
    wcs: WCS
    region: tuple  # x0, x1, y0, y1 (science pixels, end exclusive)
    hdu: int
    carry: dict

    @property
    def pixel_scale_arcsec(self):
        """Mean pixel scale (arcsec/px) at the centre of the science region."""
        x0, x1, y0, y1 = self.region
        xc, yc = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        c = self.wcs.pixel_to_world([xc, xc + 1, xc], [yc, yc, yc + 1])
        return float(0.5 * (c[0].separation(c[1]).arcsec + c[0].separation(c[2]).arcsec))


def _science_region(header, shape):
    """Science pixels of a TESS FFI (SCCSA/SCCED/SCIROWS/SCIROWE, 1-based) or the whole image."""
    ny, nx = shape
    keys = ("SCCSA", "SCCED", "SCIROWS", "SCIROWE")
    if all(k in header for k in keys):
        x0, x1 = int(header["SCCSA"]) - 1, int(header["SCCED"])
        y0, y1 = int(header["SCIROWS"]) - 1, int(header["SCIROWE"])
        if 0 <= x0 < x1 <= nx and 0 <= y0 < y1 <= ny:
            return x0, x1, y0, y1
    return 0, nx, 0, ny


def read_frame(path):
    """Geometry of the coarse frame (its first 2-D image HDU and that HDU's WCS).

    Raises
    ------
    FrameError
        When the file cannot be read, holds no 2-D image, or its WCS has no celestial part.
    """
    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            idx = image_hdu_index(hdul, 0)
            if idx is None:
                raise FrameError(path, "no 2-D image HDU")
            header = hdul[idx].header.copy()
            primary = hdul[0].header.copy()
    except (OSError, ValueError) as err:
        raise FrameError(path, f"unreadable coarse frame ({err})") from err
    try:
        wcs = _quiet_wcs(header)
    except Exception as err:  # astropy raises many types on bad WCS cards
        raise FrameError(path, f"coarse frame has no usable celestial WCS ({err})") from err
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    carry = {}
    for key in CARRY_KEYS:
        for h in (header, primary):
            if key in h:
                carry[key] = h[key]
                break
    return Frame(str(path), shape, wcs, _science_region(header, shape), idx, carry)


def tile_grid(region, tile_px):
    """Tiles covering the science region, row-major from the lower-left corner.

    Parameters
    ----------
    region : tuple of int
        ``(x0, x1, y0, y1)`` science pixels, end exclusive.
    tile_px : int
        Tile side (coarse px); the last row/column of tiles may be smaller.

    Returns
    -------
    list of dict
        ``name`` (``x0000_y0256``), ``x0, x1, y0, y1``.
    """
    x0, x1, y0, y1 = region
    tiles = []
    for ty in range(y0, y1, tile_px):
        for tx in range(x0, x1, tile_px):
            tiles.append(
                dict(name=f"x{tx:04d}_y{ty:04d}", x0=tx, x1=min(tx + tile_px, x1), y0=ty, y1=min(ty + tile_px, y1))
            )
    return tiles


def tile_by_name(region, tile_px, name):
    """The tile dictionary called ``name``."""
    for tile in tile_grid(region, tile_px):
        if tile["name"] == name:
            return tile
    raise BandersnakeError(f"no tile {name} in region {region} with tile_px {tile_px}")


# ------------------------------------------------------------------ reference cells
@dataclass
class Cell:
    """One reference image: path, band, shape (ny, nx), WCS, HDU, companion mask path."""

    path: str
    name: str
    band: str
    shape: tuple
    wcs: WCS
    hdu: int
    mask_path: str | None
    mask_hdu: int | None


def cell_name(path):
    """Cell name from its file name: the PS1 ``skycell.PPPP.CCC`` when present, else the stem."""
    base = Path(path).name
    m = re.search(r"skycell\.\d+\.\d+", base)
    if m:
        return m.group(0)
    return re.sub(r"\.fits(\.fz|\.gz)?$", "", base)


def band_of(header, path, bands):
    """Band of a reference: FILTER-like header keys (``r.00000`` -> ``r``), else a file-name token.

    Parameters
    ----------
    bands : collection of str
        The configured band names; empty: every reference is band ``all``.
    """
    if not bands:
        return "all"
    for key in _BAND_KEYS:
        value = header.get(key)
        if value is not None:
            value = str(value).strip().split(".")[0]
            if value in bands:
                return value
    tokens = re.split(r"[._\-]", Path(path).name)
    for token in tokens:
        if token in bands:
            return token
    return None


def _mask_companion(path, mask_suffix):
    if not mask_suffix:
        return None
    stem = re.sub(r"\.fits(\.fz|\.gz)?$", "", str(path))
    candidate = stem + mask_suffix
    return candidate if Path(candidate).exists() else None


def expand_references(references, mask_suffix=None):
    """Reference image paths from a glob, a list of globs, or a list of paths (sorted, masks left out)."""
    patterns = [references] if isinstance(references, str) else list(references or [])
    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(str(pattern)))
        if not found and not glob.has_magic(str(pattern)):
            raise FrameError(pattern, "reference image not found")
        paths.extend(found)
    if mask_suffix:
        paths = [p for p in paths if not p.endswith(mask_suffix)]
    return sorted(dict.fromkeys(paths))


def _header_from_row(row):
    """FITS header from a reference-table row holding WCS cards (Syndiff's skycell_wcs.csv)."""
    header = fits.Header()
    for key in row.colnames:
        value = row[key]
        if key.upper() in ("NAME", "RA", "DEC", "PATH"):
            continue
        if np.ma.is_masked(value):
            continue
        header[key.upper()] = value.item() if hasattr(value, "item") else value
    return header


def read_cells(paths, bands, mask_suffix=None, reference_table=None):
    """Open the headers of the reference images (or take them from ``reference_table``).

    Parameters
    ----------
    paths : list of str
    bands : collection of str
        Configured bands; a reference of another band is left out (logged).
    mask_suffix : str or None
        Companion mask file suffix (PS1: ``.mask.fits``); else a ``MASK`` extension is used.
    reference_table : str or None
        CSV with a ``NAME`` column and the WCS cards (NAXIS1/2, CRVAL, CRPIX, CD or PC/CDELT,
        CTYPE) of each cell, matched to a path by the cell name: no reference header is opened.

    Returns
    -------
    list of Cell
        Unreadable references are skipped with a warning naming the file.
    """
    table = None
    if reference_table:
        table = Table.read(reference_table, format="ascii.csv")
        names = {str(n): i for i, n in enumerate(table["NAME"])}
    cells = []
    for path in paths:
        name = cell_name(path)
        try:
            if table is not None and name in names:
                header = _header_from_row(table[names[name]])
                idx, mask_hdu = None, None
            else:
                with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
                    idx = image_hdu_index(hdul, 0)
                    if idx is None:
                        raise FrameError(path, "no 2-D image HDU")
                    header = hdul[idx].header.copy()
                    for key in _BAND_KEYS:
                        if key not in header and key in hdul[0].header:
                            header[key] = hdul[0].header[key]
                    mask_hdu = next((i for i, h in enumerate(hdul) if h.name == "MASK"), None)
            wcs = _quiet_wcs(header)
            shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        except FrameError as err:
            log.warning("reference skipped: %s", err)
            continue
        except Exception as err:  # bad WCS, truncated file...
            log.warning("reference skipped: %s: %s", path, err)
            continue
        band = band_of(header, path, bands)
        if band is None:
            log.info("reference %s: band not among %s, left out", path, sorted(bands))
            continue
        cells.append(Cell(str(path), name, band, shape, wcs, idx, _mask_companion(path, mask_suffix), mask_hdu))
    return cells


# ------------------------------------------------------------------ coordinate transforms
def fine_to_coarse(cell_wcs, frame_wcs, x, y):
    """Coarse-frame pixel coordinates of fine (reference) pixel coordinates (0-based, via the sky)."""
    ra, dec = cell_wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, Y = frame_wcs.all_world2pix(ra, dec, 0, quiet=True, maxiter=50, tolerance=1e-6)
    return X, Y


def coarse_to_fine(frame_wcs, cell_wcs, X, Y):
    """Fine (reference) pixel coordinates of coarse-frame pixel coordinates (0-based, via the sky)."""
    ra, dec = frame_wcs.all_pix2world(np.asarray(X, float), np.asarray(Y, float), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = cell_wcs.all_world2pix(ra, dec, 0, quiet=True, maxiter=50, tolerance=1e-6)
    return x, y


def _rect_border(x0, x1, y0, y1, n=16):
    """Points along the border of a rectangle (pixel edges, counter-clockwise)."""
    t = np.linspace(0, 1, n, endpoint=False)
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full(n, x1), x1 - (x1 - x0) * t, np.full(n, x0)])
    ys = np.concatenate([np.full(n, y0), y0 + (y1 - y0) * t, np.full(n, y1), y1 - (y1 - y0) * t])
    return xs, ys


def _clip_polygon(xs, ys, x0, x1, y0, y1):
    """Polygon clipped to a rectangle (Sutherland-Hodgman); returns the clipped polygon's area."""
    poly = list(zip(xs, ys))
    for axis, bound, above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        out = []
        if not poly:
            break
        prev = poly[-1]
        for cur in poly:
            cin = cur[axis] >= bound if above else cur[axis] <= bound
            pin = prev[axis] >= bound if above else prev[axis] <= bound
            if cin != pin:
                f = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append((prev[0] + f * (cur[0] - prev[0]), prev[1] + f * (cur[1] - prev[1])))
            if cin:
                out.append(cur)
            prev = cur
        poly = out
    if len(poly) < 3:
        return 0.0
    p = np.array(poly)
    return 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1)))


def _near(cell, frame):
    """Cheap sky-distance test: can the cell overlap the frame at all?"""
    ny, nx = frame.shape
    fc = frame.wcs.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
    fr = frame.wcs.pixel_to_world(0, 0).separation(fc)
    cny, cnx = cell.shape
    cc = cell.wcs.pixel_to_world((cnx - 1) / 2, (cny - 1) / 2)
    cr = cell.wcs.pixel_to_world(0, 0).separation(cc)
    return cc.separation(fc) < 1.2 * (fr + cr)


def cell_section(cell, frame, rect, pad=2):
    """Fine-pixel section of ``cell`` needed for a coarse rectangle (pixel edges ``x0, x1, y0, y1``).

    Returns
    -------
    tuple of int or None
        ``(cx0, cx1, cy0, cy1)`` (end exclusive, clipped to the cell), or None when they do not overlap.
    """
    X, Y = _rect_border(*rect)
    x, y = coarse_to_fine(frame.wcs, cell.wcs, X, Y)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    cny, cnx = cell.shape
    cx0 = max(int(math.floor(x.min() + 0.5)) - pad, 0)
    cx1 = min(int(math.floor(x.max() + 0.5)) + pad + 1, cnx)
    cy0 = max(int(math.floor(y.min() + 0.5)) - pad, 0)
    cy1 = min(int(math.floor(y.max() + 0.5)) + pad + 1, cny)
    if cx0 >= cx1 or cy0 >= cy1:
        return None
    return cx0, cx1, cy0, cy1


def cell_footprint(cell, frame, n=32):
    """Outline of the cell's pixel edges in coarse pixel coordinates (arrays X, Y)."""
    cny, cnx = cell.shape
    x, y = _rect_border(-0.5, cnx - 0.5, -0.5, cny - 0.5, n)
    return fine_to_coarse(cell.wcs, frame.wcs, x, y)


def build_mapping(frame, cells, tile_px, margin):
    """Which cells cover which tiles: one row per (cell, tile) pair that overlap.

    Parameters
    ----------
    frame : Frame
    cells : list of Cell
    tile_px : int
    margin : int
        Coarse pixels around each tile whose reference light is needed (PSF + offsets).

    Returns
    -------
    astropy.table.Table
        ``cell``, ``path``, ``band``, ``tile``, ``tile_x0, tile_x1, tile_y0, tile_y1`` (coarse px,
        end exclusive), ``cover`` (fraction of the extended tile's area inside the cell),
        ``cx0, cx1, cy0, cy1`` (fine-pixel section of the cell read by the tile's job).
    """
    tiles = tile_grid(frame.region, tile_px)
    rows = []
    for cell in cells:
        if not _near(cell, frame):
            continue
        FX, FY = cell_footprint(cell, frame)
        if not (np.all(np.isfinite(FX)) and np.all(np.isfinite(FY))):
            continue
        for tile in tiles:
            rect = (tile["x0"] - margin - 0.5, tile["x1"] + margin - 0.5,
                    tile["y0"] - margin - 0.5, tile["y1"] + margin - 0.5)
            if FX.max() < rect[0] or FX.min() > rect[1] or FY.max() < rect[2] or FY.min() > rect[3]:
                continue
            cover = _clip_polygon(FX, FY, *rect) / ((rect[1] - rect[0]) * (rect[3] - rect[2]))
            if cover <= 0:
                continue
            section = cell_section(cell, frame, rect)
            if section is None:
                continue
            rows.append((cell.name, cell.path, cell.band, tile["name"], tile["x0"], tile["x1"],
                         tile["y0"], tile["y1"], cover, *section))
    names = ("cell", "path", "band", "tile", "tile_x0", "tile_x1", "tile_y0", "tile_y1", "cover",
             "cx0", "cx1", "cy0", "cy1")
    dtypes = ("U64", "U1024", "U16", "U16", "i4", "i4", "i4", "i4", "f8", "i4", "i4", "i4", "i4")
    table = Table(rows=rows or None, names=names, dtype=dtypes)
    for col in ("tile_x0", "tile_x1", "tile_y0", "tile_y1"):
        table[col].unit = u.pix
    table.meta.update(frame=frame.path, tile_px=tile_px, margin=margin, n_tiles=len(tiles),
                      region=list(frame.region))
    table["cover"].description = "fraction of the extended tile (tile + margin) inside the cell"
    return table


def tile_references(mapping, tile_name):
    """Rows of the mapping for one tile."""
    return mapping[mapping["tile"] == tile_name]
