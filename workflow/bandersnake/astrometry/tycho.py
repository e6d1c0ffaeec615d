"""Real Tycho-2 stars from astrometry.net index files, and synthetic frames of real star fields.

Layout of an astrometry.net index file (checked on Debian's ``astrometry-data-tycho2-*`` files,
``/usr/share/astrometry/index-tycho2-NN.littleendian.fits``; ``build-astrometry-index`` 0.75):

* the extensions are binary tables whose single column is a raw byte string (``TFORM 12A``);
  the bytes are *native-endian* (the primary header's ``ENDIAN`` card; the Debian files are
  little-endian, hence their name), so they are read with numpy at the data offset, not with
  astropy's column decoding (which would strip NUL bytes);
* ``kdtree_data_stars``: ``NSTARS`` x 3 ``uint32``, the unit vector (x, y, z) of each star,
  quantised as ``xyz = low + u32 / scale``;
* ``kdtree_range_stars``: 7 ``float64``: low[3], high[3], scale (here low = -1, high = 1,
  scale = 2^32 / 2, i.e. 0.1 mas quantisation);
* ``MAG_VT`` (a proper big-endian FITS ``1E`` column, ``AN_FILE = 'TAGALONG'``): Tycho V_T
  magnitude of each star, same order as the kd-tree data.

RA = atan2(y, x), Dec = asin(z), ICRS at epoch J2000 (Tycho-2 positions). Each index file holds a
sky-uniformised subset of Tycho-2 (series 09 the densest, 723k stars), so a field is built from
the union of several files with duplicates removed.
"""

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ..errors import BandersnakeError

DEFAULT_INDEX_DIR = Path("/usr/share/astrometry")


@dataclass(frozen=True)
class StarList:
    """Stars of a field: RA, Dec (deg, ICRS J2000) and V_T magnitude."""

    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray

    def __len__(self):
        return len(self.ra)


def index_files(index_dir=DEFAULT_INDEX_DIR, scales=None):
    """Astrometry.net index files in ``index_dir``, sorted by name.

    Parameters
    ----------
    index_dir : str or Path
    scales : iterable of int, optional
        Keep only files whose name holds one of these two-digit scale numbers
        (``index-tycho2-09...`` or ``index-4109.fits`` both give 9).
    """
    paths = sorted(Path(index_dir).glob("index-*.fits"))
    if scales is None:
        return paths
    wanted = {int(s) for s in scales}
    return [p for p in paths if _scale_number(p) in wanted]


def _scale_number(path):
    """The index scale number (9 for ``index-tycho2-09...`` or ``index-4109.fits``), else None."""
    name = Path(path).name
    m = re.match(r"index-tycho2-(\d+)", name) or re.match(r"index-\d\d(\d\d)", name)
    return int(m.group(1)) if m else None


def _raw_column(path, hdul, name, dtype):
    """Raw native-endian bytes of the single-column table ``name`` as an array of ``dtype``."""
    for hdu in hdul[1:]:
        if getattr(hdu, "columns", None) is not None and hdu.columns.names == [name]:
            nbytes = hdu.header["NAXIS1"] * hdu.header["NAXIS2"]
            offset = hdu.fileinfo()["datLoc"]
            return np.fromfile(path, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=offset)
    raise BandersnakeError(f"{path}: no '{name}' extension (not an astrometry.net index file?)")


@functools.lru_cache(maxsize=16)
def read_index_stars(path):
    """All stars of one astrometry.net index file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    StarList
        RA, Dec in deg; magnitude from the ``MAG_VT`` tag-along column (NaN if absent).
    """
    path = str(path)
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            endian = str(hdul[0].header.get("ENDIAN", "04:03:02:01"))
            order = "<" if endian.startswith("04:03:02:01") else ">"
            rng = _raw_column(path, hdul, "kdtree_range_stars", order + "f8")
            data = _raw_column(path, hdul, "kdtree_data_stars", order + "u4").reshape(-1, 3)
            mag = None
            for hdu in hdul[1:]:
                cols = getattr(hdu, "columns", None)
                if cols is not None and "MAG_VT" in cols.names:
                    mag = np.asarray(hdu.data["MAG_VT"], dtype=np.float32)
    except OSError as err:
        raise BandersnakeError(f"{path}: cannot read index file ({err})") from None
    xyz = rng[:3] + data / rng[6]
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1, 1)))
    if mag is None or len(mag) != len(ra):
        mag = np.full(len(ra), np.nan, dtype=np.float32)
    return StarList(ra, dec, mag)


def _unit_vector(ra_deg, dec_deg):
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def stars_in_cone(ra_deg, dec_deg, radius_deg, index_dir=DEFAULT_INDEX_DIR, scales=None, mag_limit=None):
    """Tycho-2 stars within ``radius_deg`` of (``ra_deg``, ``dec_deg``), union of the index files.

    Duplicates (the same star in several index files) are removed on a 0.5 arcsec grid.

    Parameters
    ----------
    ra_deg, dec_deg, radius_deg : float
        Cone centre and radius (deg).
    index_dir : str or Path
    scales : iterable of int, optional
        Index scale numbers to use (default: all files found).
    mag_limit : float, optional
        Keep stars with V_T <= mag_limit.

    Returns
    -------
    StarList
        Sorted by magnitude, brightest first.
    """
    files = index_files(index_dir, scales)
    if not files:
        raise BandersnakeError(f"{index_dir}: no astrometry.net index files (index-*.fits)")
    centre = _unit_vector(ra_deg, dec_deg)
    cos_r = np.cos(np.radians(radius_deg))
    ras, decs, mags = [], [], []
    for f in files:
        s = read_index_stars(f)
        band = np.nonzero(np.abs(s.dec - dec_deg) <= radius_deg)[0]  # cheap pre-cut before the exact test
        keep = band[_unit_vector(s.ra[band], s.dec[band]) @ centre >= cos_r]
        ras.append(s.ra[keep]), decs.append(s.dec[keep]), mags.append(s.mag[keep])
    ra, dec, mag = np.concatenate(ras), np.concatenate(decs), np.concatenate(mags)
    # Same star in two files decodes to the same quantised vector: dedupe on a 0.5" grid.
    key = np.round(np.stack([ra * np.cos(np.radians(dec)), dec], axis=1) * 7200).astype(np.int64)
    _, first = np.unique(key, axis=0, return_index=True)
    ra, dec, mag = ra[first], dec[first], mag[first]
    if mag_limit is not None:
        keep = ~(mag > mag_limit)
        ra, dec, mag = ra[keep], dec[keep], mag[keep]
    order = np.argsort(np.where(np.isfinite(mag), mag, 99.0), kind="stable")
    return StarList(ra[order], dec[order], mag[order])


def tan_wcs(ra_deg, dec_deg, scale_arcsec, shape, rotation_deg=0.0, flip_x=True):
    """A TAN WCS centred on the image.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Sky position of the image centre (deg).
    scale_arcsec : float
        Pixel scale (arcsec/px).
    shape : tuple of int
        ``(ny, nx)``.
    rotation_deg : float
        Position angle of the +y axis, east of north (deg).
    flip_x : bool
        True for the usual sky orientation (east to the left, i.e. RA decreasing with x).

    Returns
    -------
    astropy.wcs.WCS
    """
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_deg, dec_deg]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]  # FITS 1-based centre
    s = scale_arcsec / 3600.0
    t = np.radians(rotation_deg)
    sx = -s if flip_x else s
    w.wcs.cd = np.array([[sx * np.cos(t), s * np.sin(t)], [-sx * np.sin(t), s * np.cos(t)]])
    w.pixel_shape = (nx, ny)
    return w


def _psf_stamp(dx, dy, fwhm_px, psf, beta):
    """Unit-integral PSF sampled at offsets ``dx``, ``dy`` (px) from the star centre."""
    r2 = dx * dx + dy * dy
    if psf == "gaussian":
        sigma = fwhm_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        return np.exp(-0.5 * r2 / sigma**2) / (2.0 * np.pi * sigma**2)
    if psf == "moffat":
        alpha = fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
        return (beta - 1.0) / (np.pi * alpha**2) * (1.0 + r2 / alpha**2) ** (-beta)
    raise ValueError(f"unknown psf {psf!r} (gaussian or moffat)")


def add_stars(image, x, y, flux, fwhm_px=3.0, psf="moffat", beta=3.0, oversample=3):
    """Add point sources to ``image`` in place.

    Parameters
    ----------
    image : ndarray
        2-D image (e-), modified in place.
    x, y : array_like
        0-based pixel centres (px).
    flux : array_like
        Total flux of each star (e-).
    fwhm_px : float
        PSF FWHM (px).
    psf : {'moffat', 'gaussian'}
    beta : float
        Moffat index.
    oversample : int
        Sub-pixel sampling per axis, so the pixel value is the PSF integrated over the pixel.
    """
    ny, nx = image.shape
    half = int(np.ceil(4 * fwhm_px)) + 1
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    for xi, yi, fi in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(flux)):
        x0, y0 = int(round(xi)), int(round(yi))
        xa, xb = max(x0 - half, 0), min(x0 + half + 1, nx)
        ya, yb = max(y0 - half, 0), min(y0 + half + 1, ny)
        if xa >= xb or ya >= yb:
            continue
        gx = np.arange(xa, xb)[None, :, None, None] + sub[None, None, None, :] - xi
        gy = np.arange(ya, yb)[:, None, None, None] + sub[None, None, :, None] - yi
        stamp = _psf_stamp(gx, gy, fwhm_px, psf, beta).mean(axis=(2, 3))
        image[ya:yb, xa:xb] += fi * stamp
    return image


def render_field(wcs, shape, stars, zeropoint_mag=22.0, fwhm_px=3.0, psf="moffat", beta=3.0,
                 sky_e=200.0, read_noise_e=10.0, rng=None, saturation_e=None):
    """Synthetic calibrated frame (e-) of ``stars`` seen through ``wcs``.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Truth WCS.
    shape : tuple of int
        ``(ny, nx)``.
    stars : StarList
    zeropoint_mag : float
        Magnitude giving a total of 1 e- (flux = 10**(-0.4 (mag - zp)) e-).
    fwhm_px, psf, beta
        PSF (see :func:`add_stars`).
    sky_e : float
        Sky level (e-/px).
    read_noise_e : float
        Read noise (e-); Poisson noise is drawn on sky + stars.
    rng : numpy.random.Generator, optional
    saturation_e : float, optional
        Clip pixel values at this level (e-).

    Returns
    -------
    image : ndarray, float32
        Noisy image (e-).
    truth : dict
        ``x``, ``y`` (0-based px), ``flux`` (e-), ``mag`` of the stars that fall on the chip.
    """
    rng = np.random.default_rng(rng)
    ny, nx = shape
    x, y = wcs.all_world2pix(stars.ra, stars.dec, 0)
    mag = np.where(np.isfinite(stars.mag), stars.mag, np.nanmax(stars.mag) if len(stars) else 12.0)
    on = (x > -5) & (x < nx + 4) & (y > -5) & (y < ny + 4) & np.isfinite(x) & np.isfinite(y)
    x, y, mag = x[on], y[on], mag[on]
    flux = 10 ** (-0.4 * (mag - zeropoint_mag))
    model = np.full(shape, float(sky_e))
    add_stars(model, x, y, flux, fwhm_px=fwhm_px, psf=psf, beta=beta)
    image = rng.poisson(model).astype(np.float64) + rng.normal(0.0, read_noise_e, shape)
    if saturation_e is not None:
        image = np.minimum(image, saturation_e)
    inside = (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
    truth = {"x": x[inside], "y": y[inside], "flux": flux[inside], "mag": mag[inside]}
    return image.astype(np.float32), truth
