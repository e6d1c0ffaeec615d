"""One tile job: the reference cells of a tile -> band-combined, PSF-convolved template tile.

Steps (all on the tile's supersampled grid, ``k`` x ``k`` pixels per coarse pixel, over the tile
plus a margin):

1. every overlapping cell's needed section is read (only that section); isolated masked
   pixels (>= 6 good neighbours of 8) are interpolated from their neighbours
   (:func:`.drizzle.fill_isolated`), every other masked pixel and NaN is dropped; the section
   is drizzled with exact overlaps (:func:`.drizzle.drizzle_add`);
2. per band, overlapping cells are averaged where they overlap (drizzle's weighted mean: flux of
   the good fine pixels over their area; a cell covering a supersampled pixel only partly counts
   only where no cell covers it fully, see :func:`_add_cell`); a supersampled pixel with *no* good fine pixel is
   filled with the band's fill level (the median of the band's well-covered supersampled pixels
   in this tile, i.e. the local sky, or 0 with ``fill: zero``) - a masked star is replaced by sky,
   never by its neighbours' light;
3. bands are summed with their weights, the sum is convolved with the PSF (moment-corrected,
   :func:`.psf.convolve_moments`);
4. the result is binned onto the coarse pixels at each configured offset (:mod:`.offsets`).

The tile file holds, per offset, the template (reference units per coarse pixel), its
COVERAGE (PSF-weighted fraction of good reference data) and MASK, and the supersampled
convolved image (SUPER) that the gather step uses to refine the offset.
"""

import logging
import resource
import time

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..errors import FrameError
from ..fitsio import image_hdu_index, write_fits
from . import geometry
from .drizzle import drizzle_add, fill_isolated, mesh_nodes
from .offsets import bin_offset, offset_margin
from .psf import convolve_moments, convolve_plain

log = logging.getLogger(__name__)

#: MASK bits of the templates.
NO_REFERENCE = 1  # no good reference pixel inside the coarse pixel
LOW_COVERAGE = 2  # PSF-weighted good-reference fraction below min_coverage (part is fill)
OUTSIDE = 4  # outside the coarse frame's science region (difference image only)


def ps1_flux(data, header):
    """PS1 stack pixels to linear flux per second (BSOFTEN/BOFFSET asinh coding, / EXPTIME).

    Images without the PS1 keys are returned unchanged.
    """
    if "BSOFTEN" not in header or "BOFFSET" not in header:
        return data
    a = 2.5 / np.log(10.0)
    flux = float(header["BOFFSET"]) + float(header["BSOFTEN"]) * 2.0 * np.sinh(data / a)
    exptime = float(header.get("EXPTIME", 1.0) or 1.0)
    return flux / exptime


def _cutout(hdu, section):
    """A section of an image HDU, reading only that part of the file.

    Uncompressed, unscaled images are memory-mapped and sliced (fast); compressed or scaled
    ones go through ``hdu.section``, which decompresses only the tiles it needs.
    """
    cx0, cx1, cy0, cy1 = section
    scaled = hdu.header.get("BSCALE", 1) != 1 or hdu.header.get("BZERO", 0) != 0
    if isinstance(hdu, fits.CompImageHDU) or scaled:
        return np.array(hdu.section[cy0:cy1, cx0:cx1])
    return np.array(hdu.data[cy0:cy1, cx0:cx1])


def read_section(path, section, mask_path=None, ignore_mask_bits=(), mask_hdu=None):
    """Data and good-pixel map of a fine-pixel section of a reference image.

    Parameters
    ----------
    path : str
    section : tuple of int
        ``(cx0, cx1, cy0, cy1)``, end exclusive.
    mask_path : str or None
        Companion bitmask file; else the file's own ``MASK`` extension when present.
    ignore_mask_bits : sequence of int
        Bit numbers (0 = value 1) that do not exclude a pixel.

    Returns
    -------
    data : ndarray float32
        Flux per fine pixel (PS1 asinh coding undone).
    good : ndarray bool
        Finite and no mask bit outside ``ignore_mask_bits``.
    """
    cx0, cx1, cy0, cy1 = section
    try:
        with fits.open(path, memmap=True) as hdul:
            idx = image_hdu_index(hdul, 0)
            if idx is None:
                raise FrameError(path, "no 2-D image HDU")
            hdu = hdul[idx]
            data = _cutout(hdu, section).astype(np.float32, copy=False)
            data = ps1_flux(data, hdu.header)
            mask = None
            if mask_path is None:
                midx = next((i for i, h in enumerate(hdul) if h.name == "MASK"), None)
                if midx is not None:
                    mask = _cutout(hdul[midx], section)
    except (OSError, ValueError, TypeError) as err:
        raise FrameError(path, f"unreadable reference image ({err})") from err
    if mask_path is not None:
        try:
            with fits.open(mask_path, memmap=True) as hdul:
                mask = _cutout(hdul[image_hdu_index(hdul, 0)], section)
        except (OSError, ValueError, TypeError) as err:
            raise FrameError(mask_path, f"unreadable mask ({err})") from err
    good = np.isfinite(data)
    if mask is not None:
        if mask.dtype.kind not in "iu":
            raise FrameError(mask_path or path, f"mask is not an integer bitmask ({mask.dtype})")
        ignore = 0
        for bit in ignore_mask_bits:
            ignore |= 1 << int(bit)
        # signed masks viewed as unsigned of the same size and byte order: every bit counts, sign too
        bits = mask.view(mask.dtype.str.replace("i", "u")) if mask.dtype.kind == "i" else mask
        keep = np.array(~ignore & np.iinfo(bits.dtype).max, dtype=bits.dtype)
        good &= (bits & keep) == 0
    return data, good


def corner_mesh(cell_wcs, frame_wcs, section, origin, k, step):
    """Supersampled coordinates (s, t) of a section's fine-pixel corners on a mesh of nodes.

    Parameters
    ----------
    section : tuple
        ``(cx0, cx1, cy0, cy1)``.
    origin : tuple of float
        Coarse coordinates ``(X0, Y0)`` of the supersampled grid's first pixel edge.
    step : int
        Fine corners between mesh nodes.
    """
    cx0, cx1, cy0, cy1 = section
    jn = mesh_nodes(cx1 - cx0, step)
    im = mesh_nodes(cy1 - cy0, step)
    jj, ii = np.meshgrid(jn, im)
    X, Y = geometry.fine_to_coarse(cell_wcs, frame_wcs, cx0 + jj - 0.5, cy0 + ii - 0.5)
    return (X - origin[0]) * k, (Y - origin[1]) * k


#: A cell's supersampled pixel counts fully in an overlap only when the cell covers this much of it.
FULL = 0.999
#: Weight of a partly covered supersampled pixel relative to a fully covered one in an overlap.
PARTIAL_WEIGHT = 1e-3


def _add_cell(data, good, mesh_s, mesh_t, step, flux, area, mom_s, mom_t, cover):
    """Drizzle one cell section and add it to a band's accumulators, weighting overlaps.

    Where cells overlap, a supersampled pixel that one cell covers only partly (its edge, the rim
    of a masked area) would bias the mean towards the light of the covered part; it is weighted
    ``PARTIAL_WEIGHT`` x its coverage, so a cell covering the pixel fully wins. Where no cell
    covers fully, the partial ones are averaged (coverage-weighted) as drizzle does.
    """
    nv, nu = flux.shape
    u0 = max(int(np.floor(np.nanmin(mesh_s))) - 1, 0)
    u1 = min(int(np.ceil(np.nanmax(mesh_s))) + 1, nu)
    v0 = max(int(np.floor(np.nanmin(mesh_t))) - 1, 0)
    v1 = min(int(np.ceil(np.nanmax(mesh_t))) + 1, nv)
    if u0 >= u1 or v0 >= v1:
        return
    shape = (v1 - v0, u1 - u0)
    f = np.zeros(shape)
    a = np.zeros(shape)
    ms = np.zeros(shape)
    mt = np.zeros(shape)
    drizzle_add(data, good, mesh_s - u0, mesh_t - v0, step, f, a, ms, mt)
    w = np.where(a >= FULL, 1.0, PARTIAL_WEIGHT)
    sl = (slice(v0, v1), slice(u0, u1))
    flux[sl] += w * f
    area[sl] += w * a
    mom_s[sl] += w * ms
    mom_t[sl] += w * mt
    cover[sl] += a


def _fill_level(flux, area):
    well = area >= 0.99
    if well.sum() < 16:
        return 0.0
    return float(np.median(flux[well] / area[well]))


def peak_rss_mb():
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def supersampled_tile(frame, rows, cells_by_path, tile, margin, k, band_weights, psf, *,
                      ignore_mask_bits=(), fill="median", mesh_step=32):
    """Band-combined, PSF-convolved supersampled image of a tile's extended region.

    Parameters
    ----------
    frame : geometry.Frame
    rows : astropy Table
        The mapping rows of this tile.
    cells_by_path : dict
        ``path -> geometry.Cell``.
    tile : dict
        ``x0, x1, y0, y1``.
    margin : int
        Coarse pixels drizzled around the tile.
    k : int
    band_weights : dict
        ``band -> weight`` (``{"all": 1}`` for a single band).
    psf : psf.PSFKernel
    fill : {"median", "zero"}

    Returns
    -------
    conv : ndarray
        Flux per supersampled pixel (reference units) after the PSF.
    cov : ndarray
        PSF-convolved fraction of good reference data (weights of the bands).
    good_frac : ndarray
        Unconvolved fraction of good reference data (0 where no good fine pixel fell).
    stats : dict
    """
    nu = (tile["x1"] - tile["x0"] + 2 * margin) * k
    nv = (tile["y1"] - tile["y0"] + 2 * margin) * k
    origin = (tile["x0"] - margin - 0.5, tile["y0"] - margin - 0.5)
    total = np.zeros((nv, nu))
    mom_s = np.zeros((nv, nu))
    mom_t = np.zeros((nv, nu))
    good_frac = np.zeros((nv, nu))
    wsum = sum(band_weights.values())
    stats = dict(n_cells=0, n_fine=0, n_interp=0, fill={})
    for band, weight in band_weights.items():
        brows = rows[rows["band"] == band]
        if len(brows) == 0:
            log.warning("tile %s: no reference of band %s", tile["name"], band)
        flux = np.zeros((nv, nu))
        area = np.zeros((nv, nu))
        ms = np.zeros((nv, nu))
        mt = np.zeros((nv, nu))
        cover = np.zeros((nv, nu))  # unweighted good area (supersampled px)
        for row in brows:
            cell = cells_by_path[row["path"]]
            section = (int(row["cx0"]), int(row["cx1"]), int(row["cy0"]), int(row["cy1"]))
            try:
                data, good = read_section(cell.path, section, cell.mask_path, ignore_mask_bits)
            except FrameError as err:
                log.warning("tile %s: reference skipped: %s", tile["name"], err)
                continue
            stats["n_interp"] += fill_isolated(data, good)
            mesh_s, mesh_t = corner_mesh(cell.wcs, frame.wcs, section, origin, k, mesh_step)
            _add_cell(data, good, mesh_s, mesh_t, mesh_step, flux, area, ms, mt, cover)
            stats["n_cells"] += 1
            stats["n_fine"] += data.size
            del data, good
        level = _fill_level(flux, area) if fill == "median" else 0.0
        stats["fill"][band] = level
        has = area > 0
        inv = np.where(has, 1.0 / np.where(has, area, 1.0), 0.0)
        frac = weight / wsum if wsum else 0.0
        total += weight * np.where(has, flux * inv, level)
        mom_s += weight * ms * inv
        mom_t += weight * mt * inv
        good_frac += frac * np.minimum(cover, 1.0)
        del flux, area, ms, mt, has, inv, cover
    conv = convolve_moments(total, mom_s, mom_t, psf)
    cov = convolve_plain(good_frac, psf)
    return conv, cov, good_frac, stats


def build_tile(frame_path, mapping_path, psf_path, tile_name, out, *, k, band_weights, offsets,
               ignore_mask_bits=(), fill="median", min_coverage=0.9, mask_suffix=None,
               reference_table=None, mesh_step=32):
    """Tile job: write the template tile file ``out`` (see module docstring).

    Parameters
    ----------
    frame_path, mapping_path, psf_path : str
        Coarse frame, ``mapping.ecsv``, PSF kernel file (:func:`.build.write_psf`).
    tile_name : str
    out : str
    k : int
        Supersampling factor.
    band_weights : dict or None
    offsets : list of (dx, dy)
        Coarse pixels.
    min_coverage : float
        Below this PSF-weighted good-reference fraction a pixel gets MASK bit LOW_COVERAGE.
    """
    from .build import read_psf  # local: build imports this module

    t0 = time.perf_counter()
    frame = geometry.read_frame(frame_path)
    mapping = Table.read(mapping_path, format="ascii.ecsv")
    tile_px = int(mapping.meta["tile_px"])
    margin = int(mapping.meta["margin"])
    tile = geometry.tile_by_name(frame.region, tile_px, tile_name)
    rows = geometry.tile_references(mapping, tile_name)
    weights = dict(band_weights) if band_weights else {"all": 1.0}
    paths = sorted(set(rows["path"]))
    cells = geometry.read_cells(paths, set(weights) - {"all"}, mask_suffix, reference_table)
    cells_by_path = {c.path: c for c in cells}
    rows = rows[[p in cells_by_path for p in rows["path"]]] if len(rows) else rows
    psf = read_psf(psf_path)
    conv, cov, good_frac, stats = supersampled_tile(
        frame, rows, cells_by_path, tile, margin, k, weights, psf,
        ignore_mask_bits=ignore_mask_bits, fill=fill, mesh_step=mesh_step,
    )
    m_off = offset_margin(offsets)
    crop = (margin - m_off) * k
    if crop > 0:
        conv = conv[crop:-crop, crop:-crop]
        cov = cov[crop:-crop, crop:-crop]
        good_frac = good_frac[crop:-crop, crop:-crop]
    shape = (tile["y1"] - tile["y0"], tile["x1"] - tile["x0"])
    sci = np.empty((len(offsets),) + shape, np.float32)
    covc = np.empty_like(sci)
    mask = np.zeros((len(offsets),) + shape, np.uint8)
    for i, (dx, dy) in enumerate(offsets):
        sci[i] = bin_offset(conv, k, m_off, shape, dx, dy)
        covc[i] = bin_offset(cov, k, m_off, shape, dx, dy) / k**2
        raw = bin_offset(good_frac, k, m_off, shape, dx, dy)
        mask[i] |= np.where(raw <= 0, NO_REFERENCE, 0).astype(np.uint8)
        mask[i] |= np.where(covc[i] < min_coverage, LOW_COVERAGE, 0).astype(np.uint8)
    header = fits.Header()
    header["TILE"] = tile_name
    for key in ("x0", "x1", "y0", "y1"):
        header[f"TILE{key.upper()}"] = tile[key]
    header["SUPERK"] = (k, "supersampled pixels per coarse pixel (per axis)")
    header["OFFMARG"] = (m_off, "coarse px of SUPER around the tile")
    header["NCELLS"] = (stats["n_cells"], "reference sections drizzled")
    header["NFINE"] = (stats["n_fine"], "reference pixels read")
    header["NINTERP"] = (stats["n_interp"], "isolated masked ref. pixels interpolated")
    for band, level in stats["fill"].items():
        header[f"FILL_{band[:3].upper()}"] = (level, f"fill of band {band[:8]} (ref. units/super px)")
    header["PEAKMB"] = (round(peak_rss_mb(), 1), "peak RSS of the tile job (MB)")
    header["RUNTIME"] = (round(time.perf_counter() - t0, 2), "s")
    hdus = [
        fits.PrimaryHDU(header=header),
        fits.ImageHDU(sci, name="SCI"),
        fits.ImageHDU(covc, name="COVERAGE"),
        fits.ImageHDU(mask, name="MASK"),
        fits.ImageHDU(conv.astype(np.float32), name="SUPER"),
        fits.BinTableHDU(Table(np.array(offsets, float), names=("dx", "dy")), name="OFFSETS"),
    ]
    write_fits(fits.HDUList(hdus), out)
    log.info("tile %s: %d sections, %.3g reference px, %.1f s, peak %.0f MB", tile_name,
             stats["n_cells"], stats["n_fine"], time.perf_counter() - t0, peak_rss_mb())
    return out

