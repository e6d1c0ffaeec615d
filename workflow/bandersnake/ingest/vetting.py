"""Pixel checks of raw frames in the inventory: empty, NaN-filled, saturated and duplicate frames.

The header checks of :func:`bandersnake.ingest.inventory.frame_record` cannot see a frame whose
readout failed (every pixel 0, or one value), a frame of NaNs, a frame saturated everywhere (dome
lights, the Sun), or the same exposure saved twice. Each of these entered the light curve before
(three such frames mid-night flipped the best aperture and moved the fitted T0 by 13 s; a copy of
a frame counted twice). Here every frame the header checks accept has its pixels read once, in
the same opening of the file as its header (:func:`vet_hdu`):

* ``data_digest``: SHA-256 of the stored pixel values (before BZERO/BSCALE), shape and type, so a
  copy under another name, or compressed, is recognised whatever its header says;
* rejected with a reason: no finite pixel or more than :data:`MAX_NONFINITE_FRACTION` NaN/Inf;
  every pixel the same value (all-zero readouts included); at least
  :data:`MAX_SATURATED_FRACTION` of the pixels at or above the instrument's ``saturation_adu``;
* duplicates (:func:`reject_duplicates`): the same pixels, or the same type, target and
  ``DATE-OBS``; the twin kept is named in the reason. The kept one is the oldest file
  (modification time: a copy made later is the duplicate), then the one with the shortest name,
  then the first in alphabetical order (``a.fits`` rather than ``a (copy).fits`` or ``a.fits.gz``
  when ``cp -p`` kept the time).
"""

import hashlib
import warnings

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import FrameError

#: More than this fraction of NaN/Inf pixels: the frame is rejected ("NaN-filled").
MAX_NONFINITE_FRACTION = 0.5
#: At least this fraction of pixels at or above saturation: the frame is rejected.
MAX_SATURATED_FRACTION = 0.5


def stored_pixels(hdu, path):
    """Stored pixel array of an open image HDU (``do_not_scale_image_data=True``) and its scaling.

    Returns
    -------
    data : ndarray
        As stored (integers for integer BITPIX; floats for compressed or float images).
    bzero, bscale : float
        Physical value = ``bzero + bscale * data`` (ADU).

    Raises
    ------
    FrameError
        The pixels cannot be read or are not a 2-D image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (AstropyUserWarning, VerifyWarning, RuntimeWarning))
            data = np.asarray(hdu.data)
            header = hdu.header
            compressed = isinstance(hdu, fits.CompImageHDU)
            bzero = 0.0 if compressed else float(header.get("BZERO", 0.0))
            bscale = 1.0 if compressed else float(header.get("BSCALE", 1.0))
    except Exception as err:  # astropy raises many types on corrupt files
        raise FrameError(path, f"unreadable pixels ({type(err).__name__}: {err})") from None
    if data.ndim != 2 or data.size == 0:
        raise FrameError(path, f"image is {data.ndim}-D with {data.size} pixels, expected a 2-D image")
    if not (np.isfinite(bzero) and np.isfinite(bscale)) or bscale == 0:
        raise FrameError(path, f"invalid scaling BZERO={bzero} BSCALE={bscale}")
    return data, bzero, bscale


def pixel_digest(data):
    """SHA-256 (128 bit kept) of the stored pixels, their shape and type: equal for equal frames.

    SHA-256 rather than BLAKE2b: CPUs with SHA extensions hash it ~1.8x faster (1.2 vs 2.2 ms
    per 1024x1024 16-bit frame here), and every raw frame of a night is hashed.
    """
    digest = hashlib.sha256()
    arr = np.ascontiguousarray(data)
    digest.update(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.view(np.uint8).reshape(-1))
    return digest.hexdigest()[:32]


def pixel_problem(data, bzero, bscale, saturation_adu):
    """Why a frame's pixels are unusable, or None.

    Parameters
    ----------
    data : ndarray
        Stored pixels.
    bzero, bscale : float
        Scaling to ADU.
    saturation_adu : float
        The instrument's saturation level (ADU).
    """
    n = data.size
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        n_finite = int(finite.sum())
        if n_finite == 0:
            return "NaN-filled image (no finite pixel)"
        if n - n_finite > MAX_NONFINITE_FRACTION * n:
            return f"NaN-filled image ({n - n_finite} of {n} pixels NaN or Inf)"
        values = data[finite] if n_finite < n else data
    else:
        values = data
    lo, hi = values.min(), values.max()
    if lo == hi:
        value = bzero + bscale * float(lo)
        return "all-zero image" if value == 0 else f"constant image (every pixel {value:g} ADU)"
    if saturation_adu is not None and np.isfinite(saturation_adu) and bscale > 0:
        threshold = (float(saturation_adu) - bzero) / bscale
        # Counted only when some pixel reaches it (most frames: none does, no pass needed).
        n_sat = int(np.count_nonzero(values >= threshold)) if hi >= threshold else 0
        if n_sat >= MAX_SATURATED_FRACTION * n:
            return f"saturated image ({100.0 * n_sat / n:.0f}% of pixels >= saturation_adu {saturation_adu:g} ADU)"
    return None


def vet_hdu(hdu, path, instrument):
    """Digest of an open image HDU's stored pixels; :class:`FrameError` when they are unusable.

    Parameters
    ----------
    hdu : astropy.io.fits ImageHDU or CompImageHDU
        Opened with ``do_not_scale_image_data=True``.
    path : str
        The file, named in errors.
    instrument : dict
        Validated instrument configuration (``saturation_adu``).

    Returns
    -------
    str
        :func:`pixel_digest` of the pixels.
    """
    data, bzero, bscale = stored_pixels(hdu, path)
    problem = pixel_problem(data, bzero, bscale, instrument.get("saturation_adu"))
    if problem:
        raise FrameError(path, problem)
    return pixel_digest(data)


def _keep_order(row):
    # Oldest file first (a copy made later is the duplicate), then shortest name, then alphabetical.
    mtime = row.get("file_mtime_ns", -1)
    return (mtime if mtime is not None and mtime >= 0 else float("inf"), len(row["file"]), row["file"], row["path"])


def reject_duplicates(rows):
    """Reject every accepted frame that repeats another: same pixels, or same type, target and
    ``DATE-OBS``. The reason names the twin kept (oldest, then shortest file name, then alphabetical).

    Parameters
    ----------
    rows : list of dict
        Inventory rows (modified in place).

    Returns
    -------
    int
        Frames rejected as duplicates.
    """
    n = 0
    for key, what in ((lambda r: r.get("data_digest") or None, "same pixels"),
                      (lambda r: (r["type"], r["target"], r["date_obs"]) if r["date_obs"] else None,
                       "same type, target and DATE-OBS")):
        groups = {}
        for row in rows:
            k = key(row) if row["accepted"] else None
            if k is not None:
                groups.setdefault(k, []).append(row)
        for group in groups.values():
            if len(group) < 2:
                continue
            kept, *others = sorted(group, key=_keep_order)
            for row in others:
                row["accepted"], row["reason"] = False, f"duplicate of {kept['file']} ({what})"
                n += 1
    return n
