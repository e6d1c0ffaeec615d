"""FITS input/output at the edges of the package: safe reads, atomic writes.

Reads turn every way a file can be broken (missing, truncated, not FITS, no image, wrong
shape, NaN-only) into a :class:`~bandersnake.errors.FrameError` naming the file and the
problem. Writes go to a temporary file in the destination directory and are renamed into
place, so a killed job never leaves a half-written product.
"""

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from .errors import FrameError
from .staging import local_path

RAW_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz")


def is_raw_fits_name(name):
    """True when ``name`` has one of the raw-frame suffixes (``.fits``, ``.fits.gz``, ``.fits.fz``, ...)."""
    lower = name.lower()
    return any(lower.endswith(s) for s in RAW_SUFFIXES)


def image_hdu_index(hdul, preferred=0):
    """Index of the first HDU holding a 2-D image, starting at ``preferred``.

    ``.fits.fz`` files keep the image in extension 1 (a compressed image HDU) behind an
    empty primary HDU, so the preferred extension falls through to the next image.
    """
    order = [preferred] + [i for i in range(len(hdul)) if i != preferred]
    for i in order:
        if i < len(hdul):
            hdu = hdul[i]
            if hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
                return i
    return None


@contextlib.contextmanager
def open_image_hdu(path, extension=0, **open_kwargs):
    """Open ``path`` and yield ``(hdul, index, header)`` of its 2-D image HDU.

    ``header`` is a copy of the image HDU's header, with the primary header's cards merged in
    when the image is an extension (.fz). Anything astropy raises while the file is open,
    in the body too, becomes a :class:`FrameError` naming the file.

    Parameters
    ----------
    path : str or Path
    extension : int
        Preferred HDU; the first 2-D image HDU is used if that one holds none.
    **open_kwargs
        Passed to :func:`astropy.io.fits.open` (``memmap=False, lazy_load_hdus=True`` unless given).
    """
    open_kwargs = {"memmap": False, "lazy_load_hdus": True, **open_kwargs}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (AstropyUserWarning, VerifyWarning))
            with fits.open(local_path(path), **open_kwargs) as hdul:
                idx = image_hdu_index(hdul, extension)
                if idx is None:
                    raise FrameError(path, "no 2-D image HDU")
                # A copy only to merge the primary cards into (the header outlives the file anyway).
                header = hdul[idx].header if idx == 0 else hdul[idx].header.copy()
                if idx != 0:
                    for card in hdul[0].header.cards:
                        if card.keyword not in header and card.keyword not in ("SIMPLE", "EXTEND", "NAXIS", "BITPIX"):
                            header.append(card)
                yield hdul, idx, header
    except FrameError:
        raise
    except FileNotFoundError:
        raise FrameError(path, "file not found") from None
    except Exception as err:  # astropy raises OSError/TypeError/ValueError for corrupt files
        raise FrameError(path, f"unreadable FITS ({type(err).__name__}: {err})") from None


def read_header(path, extension=0):
    """Read the header of the image HDU of ``path`` (merging the primary header for .fz).

    Raises
    ------
    FrameError
        When the file is missing, unreadable or holds no 2-D image.
    """
    with open_image_hdu(path, extension) as (_, _, header):
        return header


def read_image(path, extension=0, expected_shape=None, dtype=np.float32):
    """Read the 2-D image of ``path`` as ``dtype`` (ADU, BZERO/BSCALE applied) and its header.

    Parameters
    ----------
    path : str or Path
    extension : int
        Preferred HDU; the first 2-D image HDU is used if that one holds none.
    expected_shape : tuple of int, optional
        ``(ny, nx)``; a different shape raises :class:`FrameError`.

    Returns
    -------
    data : ndarray
        Image in ADU.
    header : astropy.io.fits.Header
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (AstropyUserWarning, VerifyWarning))
            with fits.open(local_path(path), memmap=False) as hdul:
                idx = image_hdu_index(hdul, extension)
                if idx is None:
                    raise FrameError(path, "no 2-D image HDU")
                hdu = hdul[idx]
                data = np.asarray(hdu.data, dtype=dtype)
                header = hdu.header.copy()
    except FrameError:
        raise
    except FileNotFoundError:
        raise FrameError(path, "file not found") from None
    except Exception as err:
        raise FrameError(path, f"unreadable FITS data ({type(err).__name__}: {err})") from None
    if data.ndim != 2:
        raise FrameError(path, f"image is {data.ndim}-D, expected 2-D")
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise FrameError(path, f"shape {data.shape} differs from expected {tuple(expected_shape)}")
    if not np.isfinite(data).any():
        raise FrameError(path, "image has no finite pixel")
    return data, header


def read_table(path, hdu=1, **kwargs):
    """Read a FITS table product (centroids, photometry, precision metrics) with its units.

    The products state electrons as ``TUNITn = 'electron'`` (``'electron/pix'`` for sky
    levels), as astropy's ``CCDData`` writes them; the FITS standard's list of units has no
    electron, so ``Table.read`` warns and leaves those columns with an ``UnrecognizedUnit``.
    Here such units are parsed as astropy's generic unit format does:
    ``read_table(p)["flux"].unit == u.electron``.

    Parameters
    ----------
    path : str or Path
    hdu : int or str
        Table extension (number or EXTNAME).
    **kwargs
        Passed to ``astropy.table.Table.read`` (e.g. ``mask_invalid=False``).

    Returns
    -------
    astropy.table.Table
    """
    table = Table.read(path, hdu=hdu, unit_parse_strict="silent", **kwargs)
    for col in table.itercols():
        if isinstance(col.unit, u.UnrecognizedUnit):
            col.unit = u.Unit(col.unit.to_string(), parse_strict="silent")
    return table


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; products get the usual permissions of the user's umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_fits(hdul_or_hdu, path):
    """Write an HDUList (or single HDU) atomically to ``path``."""
    if not isinstance(hdul_or_hdu, fits.HDUList):
        hdul_or_hdu = fits.HDUList([hdul_or_hdu])
    with atomic_path(path) as tmp:
        hdul_or_hdu.writeto(tmp, overwrite=True, output_verify="silentfix")


def write_text(text, path):
    """Write ``text`` atomically to ``path``."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
