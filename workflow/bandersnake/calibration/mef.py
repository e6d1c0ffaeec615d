"""Read the calibrated multi-extension product (SCI e-, ERR e-, MASK uint8) with clear errors.

Used by cosmics, astrometry and kbmod, which operate on the product written by
``bandersnake.reduce`` (see docs/ARCHITECTURE.md, "Calibrated frame").
"""

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import FrameError

MASK_BAD, MASK_CR, MASK_SATURATED, MASK_NEIGHBOUR = 1, 2, 4, 8


@dataclass
class Calibrated:
    """Arrays and headers of one calibrated frame.

    ``sci`` and ``err`` in e- (float32), ``mask`` uint8 bitmask (1 bad, 2 CR, 4 saturated,
    8 neighbour); ``err`` / ``mask`` are None when the file has no such extension (a
    single-image file is accepted as SCI only).
    """

    path: str
    primary: fits.Header
    sci: np.ndarray
    sci_header: fits.Header
    err: np.ndarray | None = None
    mask: np.ndarray | None = None


def read_calibrated(path):
    """Read a calibrated MEF (or a plain single-image FITS, taken as SCI).

    Raises
    ------
    FrameError
        Missing/unreadable file, no image, or extensions of different shapes.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (AstropyUserWarning, VerifyWarning))
            with fits.open(path, memmap=False) as hdul:
                names = [h.name.upper() for h in hdul]
                if "SCI" in names:
                    sci_hdu = hdul["SCI"]
                else:
                    sci_hdu = next((h for h in hdul if h.is_image and h.header.get("NAXIS", 0) == 2), None)
                    if sci_hdu is None:
                        raise FrameError(path, "no SCI extension and no 2-D image")
                sci = np.asarray(sci_hdu.data, dtype=np.float32)
                sci_header = sci_hdu.header.copy()
                primary = hdul[0].header.copy()
                err = np.asarray(hdul["ERR"].data, dtype=np.float32) if "ERR" in names else None
                mask = np.asarray(hdul["MASK"].data, dtype=np.uint8) if "MASK" in names else None
    except FrameError:
        raise
    except FileNotFoundError:
        raise FrameError(path, "file not found") from None
    except Exception as err_:  # corrupt/truncated FITS surfaces as OSError/TypeError/ValueError
        raise FrameError(path, f"unreadable calibrated frame ({type(err_).__name__}: {err_})") from None
    if sci.ndim != 2:
        raise FrameError(path, f"SCI is {sci.ndim}-D, expected 2-D")
    for name, arr in (("ERR", err), ("MASK", mask)):
        if arr is not None and arr.shape != sci.shape:
            raise FrameError(path, f"{name} shape {arr.shape} differs from SCI {sci.shape}")
    if not np.isfinite(sci).any():
        raise FrameError(path, "SCI has no finite pixel")
    return Calibrated(str(path), primary, sci, sci_header, err, mask)
