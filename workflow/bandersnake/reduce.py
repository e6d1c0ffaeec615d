"""Calibrate science frames: masters in memory, raw frames in, SCI/ERR/MASK (e-) out.

The per-pixel arithmetic is :func:`bandersnake.kernel.calib_pixel`, shared with the streaming
kernel (see that module for the formula). SCI and ERR are stored as float32, as
docs/ARCHITECTURE.md specifies; the streaming kernel rounds its calibrated pixels through
float32 the same way, so both paths measure identical values. The rounding (relative 6e-8 per
pixel, random) is four orders of magnitude below the photon noise of any unsaturated star.

Calibrated frame (multi-extension FITS): primary header = raw header + provenance (``RAWFILE``,
``CALBIAS``, ``CALDARK``, ``CALFLAT``, ``CALBPM``, ``GAIN``, ``RDNOISE``, ``SATURATE``);
``SCI`` float32 e-, ``ERR`` float32 1-sigma e-, ``MASK`` uint8 (1 bad pixel, interpolated;
4 saturated; 8 within ``grow`` px of a bad pixel; 2, cosmic ray, is left to
``bandersnake.cosmics``).
"""

import logging
import math
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from . import timing
from .aperture import MASK_BAD, MASK_NEAR_BAD
from .errors import CalibrationMissing, ConfigError, FrameError
from .fitsio import image_hdu_index, read_image, write_fits

log = logging.getLogger(__name__)

_FITS_SUFFIXES = (".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fits", ".fit", ".fts")
_STRUCTURAL = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE",
               "BLANK", "PCOUNT", "GCOUNT", "XTENSION", "CHECKSUM", "DATASUM")


@dataclass
class Calibration:
    """Master calibrations of a night held in memory (float32 ADU, ADU/s, normalised flat).

    Attributes
    ----------
    bias, dark, flat : 2-D float32 arrays
        Master bias (ADU), dark rate (ADU/s), flat (median 1); invalid pixels replaced by
        neutral values and marked bad in ``static_mask``.
    static_mask : 2-D uint8 array
        ``MASK_BAD`` (bad-pixel map, invalid flat/bias/dark) and ``MASK_NEAR_BAD`` bits.
    gain : float
        e-/ADU.
    read_noise : float
        e- (master bias ``RDNOISE`` when present, else the instrument file's).
    saturation_adu : float
        Raw level at and above which a pixel is saturated (ADU).
    paths : dict
        Files the masters came from (for headers).
    """

    bias: np.ndarray
    dark: np.ndarray
    flat: np.ndarray
    static_mask: np.ndarray
    gain: float
    read_noise: float
    saturation_adu: float
    paths: dict = field(default_factory=dict)
    grow: int = 1

    @property
    def shape(self):
        return self.bias.shape

    def header_cards(self):
        """Provenance cards for product headers."""
        cards = [("GAIN", self.gain, "[e-/ADU] gain applied"),
                 ("RDNOISE", self.read_noise, "[e-] read noise"),
                 ("SATURATE", self.saturation_adu, "[ADU] raw saturation level")]
        for key, name in (("CALBIAS", "bias"), ("CALDARK", "dark"), ("CALFLAT", "flat"), ("CALBPM", "bpm")):
            cards.append((key, Path(self.paths[name]).name if self.paths.get(name) else "none",
                          f"master {name}"))
        return cards


def load_calibration(masters, instrument, grow=1):
    """Read the masters of a night into a :class:`Calibration`.

    Parameters
    ----------
    masters : dict
        Paths ``bias``, ``dark``, ``flat`` and optionally ``bpm`` (bad-pixel map, uint8 bits);
        ``dark`` and ``bpm`` may be None (no dark current / no known bad pixels).
    instrument : dict
        Instrument configuration (``gain_e_per_adu``, ``read_noise_e``, ``saturation_adu``).
    grow : int
        Pixels within this Chebyshev distance of a bad pixel get ``MASK_NEAR_BAD``.

    Raises
    ------
    CalibrationMissing
        No bias or flat given.
    FrameError
        A master is unreadable or its shape differs from the bias.
    """
    from scipy import ndimage

    for need in ("bias", "flat"):
        if not masters.get(need):
            raise CalibrationMissing(f"no master {need} given to the science calibration")
    bias, bias_hdr = read_image(masters["bias"])
    shape = bias.shape
    flat, _ = read_image(masters["flat"], expected_shape=shape)
    if masters.get("dark"):
        dark, _ = read_image(masters["dark"], expected_shape=shape)
    else:
        dark = np.zeros(shape, np.float32)
    if masters.get("bpm"):
        bpm, _ = read_image(masters["bpm"], expected_shape=shape, dtype=np.float32)
        bpm = np.nan_to_num(bpm, nan=1.0) != 0
    else:
        bpm = np.zeros(shape, bool)
    invalid = ~np.isfinite(bias) | ~np.isfinite(dark) | ~np.isfinite(flat) | (flat <= 0)
    bad = bpm | invalid
    if invalid.any():
        log.info("%d pixel(s) with invalid master values (NaN, flat <= 0) treated as bad", int(invalid.sum()))
    near = np.zeros(shape, bool)
    if grow > 0 and bad.any():
        near = ndimage.binary_dilation(bad, structure=np.ones((3, 3), bool), iterations=grow) & ~bad
    static = (bad * MASK_BAD | near * MASK_NEAR_BAD).astype(np.uint8)
    rn = bias_hdr.get("RDNOISE")
    try:
        rn = float(rn)
    except (TypeError, ValueError):
        rn = math.nan
    if not (math.isfinite(rn) and rn > 0):
        rn = float(instrument["read_noise_e"])
    clean = lambda a, v: np.ascontiguousarray(np.where(bad, v, a), dtype=np.float32)
    return Calibration(bias=clean(bias, 0.0), dark=clean(dark, 0.0), flat=clean(flat, 1.0),
                       static_mask=static, gain=float(instrument["gain_e_per_adu"]), read_noise=rn,
                       saturation_adu=float(instrument["saturation_adu"]),
                       paths={k: (str(v) if v else None) for k, v in masters.items()}, grow=grow)


@dataclass
class RawFrame:
    """A raw science frame ready for the kernel.

    ``data`` is float32 ADU (exact for 16-bit cameras), trimmed; ``offset`` is the
    overscan level (ADU) to subtract; times in JD (UTC) at mid-exposure; angles in deg.
    """

    path: str
    data: np.ndarray
    offset: float
    header: fits.Header
    exptime: float
    jd_mid: float
    ra: float
    dec: float
    airmass: float


def header_fields(header, instrument, path):
    """Exposure time (s), mid-exposure JD (UTC), pointing RA/Dec (deg), header airmass of a frame.

    Raises
    ------
    FrameError
        No usable exposure time or date.
    """
    key = (instrument.get("keywords") or {}).get("exptime") or "EXPTIME"
    try:
        exptime = float(header[key])
    except (KeyError, TypeError, ValueError):
        raise FrameError(path, f"no usable exposure time in {key}") from None
    if not math.isfinite(exptime) or exptime < 0:
        raise FrameError(path, f"{key}={exptime} is not a valid exposure time")
    jd = timing.jd_mid_utc(header, instrument, exptime)
    if not math.isfinite(jd):
        raise FrameError(path, "no usable observation date (DATE-OBS)")
    ra, dec = timing.header_coords(header, instrument)
    return exptime, jd, ra, dec, timing.header_airmass(header, instrument)


def _as_float32(a):
    # One dtype for the kernel (one numba specialization); float32 holds 16-bit ADU exactly.
    return np.asarray(a, dtype=np.float32)


def read_raw(path, instrument, expected_shape=None):
    """Read a raw science frame as float32 ADU (the kernel calibrates the pixels it needs).

    Parameters
    ----------
    path : str
    instrument : dict
        ``image_extension``, ``shape``, ``overscan_section``, ``trim_section``, keywords.
    expected_shape : tuple, optional
        Shape after trimming (the masters' shape).

    Returns
    -------
    RawFrame

    Raises
    ------
    FrameError
        Unreadable/corrupt file, no 2-D image, wrong shape, no finite pixel, no exposure time
        or date.
    """
    from .calib import parse_section

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (AstropyUserWarning, VerifyWarning))
            with fits.open(path, memmap=False) as hdul:
                idx = image_hdu_index(hdul, instrument.get("image_extension", 0))
                if idx is None:
                    raise FrameError(path, "no 2-D image HDU")
                data = hdul[idx].data
                data = None if data is None else _as_float32(data)
                header = hdul[idx].header.copy()
                if idx != 0:
                    for card in hdul[0].header.cards:
                        if card.keyword not in header and card.keyword not in _STRUCTURAL:
                            header.append(card)
    except FrameError:
        raise
    except FileNotFoundError:
        raise FrameError(path, "file not found") from None
    except Exception as err:  # truncated / corrupt files surface as OSError, ValueError, zlib/gzip errors
        raise FrameError(path, f"unreadable FITS data ({type(err).__name__}: {err})") from None
    if data is None or data.ndim != 2:
        raise FrameError(path, "no image data" if data is None else f"image is {data.ndim}-D, expected 2-D")
    raw_shape = instrument.get("shape")
    if raw_shape and tuple(data.shape) != tuple(raw_shape):
        raise FrameError(path, f"shape {data.shape} differs from the instrument's {tuple(raw_shape)}")
    # Subsampled check first: a full isfinite pass only for frames that look empty.
    if not (np.isfinite(data[::31, ::29]).any() or np.isfinite(data).any()):
        raise FrameError(path, "image has no finite pixel")
    offset = 0.0
    try:
        if instrument.get("overscan_section"):
            rows, cols = parse_section(instrument["overscan_section"])
            region = np.asarray(data[rows, cols], np.float64)
            if region.size == 0:
                raise ConfigError(f"overscan_section {instrument['overscan_section']} is outside the frame")
            axis = 0 if region.shape[1] > region.shape[0] else 1
            offset = float(np.median(region, axis=axis).mean())  # as calib.overscan_and_trim 'constant'
        if instrument.get("trim_section"):
            rows, cols = parse_section(instrument["trim_section"])
            data = np.ascontiguousarray(data[rows, cols])
    except ConfigError as err:
        raise FrameError(path, str(err)) from None
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise FrameError(path, f"shape {data.shape} differs from the masters' {tuple(expected_shape)}")
    exptime, jd, ra, dec, am = header_fields(header, instrument, path)
    return RawFrame(str(path), data, offset, header, exptime, jd, ra, dec, am)


def calibrate_frame(frame, cal):
    """Calibrate a whole raw frame.

    Returns
    -------
    sci, err : 2-D float32 arrays
        e-.
    mask : 2-D uint8 array
    """
    from .kernel import calibrate_full

    sci = np.empty(frame.data.shape, np.float32)
    err = np.empty(frame.data.shape, np.float32)
    msk = np.empty(frame.data.shape, np.uint8)
    calibrate_full(frame.data, cal.bias, cal.dark, cal.flat, cal.static_mask, float(frame.offset),
                   float(frame.exptime), cal.gain, cal.read_noise ** 2, cal.saturation_adu, sci, err, msk)
    return sci, err, msk


def reduced_name(raw_path):
    """File name of the calibrated frame of ``raw_path``: the raw stem + ``.fits``."""
    name = Path(raw_path).name
    for suffix in _FITS_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] + ".fits"
    return name + ".fits"


def calibrated_hdul(frame, sci, err, msk, cal):
    """HDUList of a calibrated frame (primary = raw header + provenance; SCI, ERR, MASK)."""
    primary = fits.PrimaryHDU()
    for card in frame.header.cards:
        if card.keyword not in _STRUCTURAL and card.keyword not in ("COMMENT", ""):
            primary.header.append(card, end=True)
    primary.header["RAWFILE"] = (Path(frame.path).name, "raw frame")
    primary.header["RAWPATH"] = str(frame.path)   # long paths continue on CONTINUE cards
    primary.header["OVERSCAN"] = (frame.offset, "[ADU] overscan level subtracted")
    for key, value, comment in cal.header_cards():
        primary.header[key] = (value, comment)
    primary.header["BUNIT"] = ("electron", "SCI and ERR in e-")
    primary.header["HISTORY"] = "bandersnake.reduce: sci = ((raw - overscan - bias) * gain - dark * t * gain) / flat"
    primary.header["HISTORY"] = "bad pixels: mean of usable 8 neighbours; MASK 1 bad 4 saturated 8 near bad"
    for name in ("bias", "dark", "flat", "bpm"):
        if cal.paths.get(name):
            primary.header["HISTORY"] = f"{name}: {cal.paths[name]}"
    hs = fits.ImageHDU(sci, name="SCI")
    hs.header["BUNIT"] = "electron"
    he = fits.ImageHDU(err, name="ERR")
    he.header["BUNIT"] = "electron"
    hm = fits.ImageHDU(msk, name="MASK")
    hm.header["COMMENT"] = "bits: 1 bad pixel, 2 cosmic ray, 4 saturated, 8 near a bad pixel"
    return fits.HDUList([primary, hs, he, hm])


def write_calibrated(path, frame, sci, err, msk, cal):
    """Write a calibrated frame atomically."""
    write_fits(calibrated_hdul(frame, sci, err, msk, cal), path)


def prefetch(fn, items, workers=1, depth=4):
    """Yield ``fn(item)`` in order while up to ``depth`` later items are computed in threads.

    ``fn`` should return its errors (e.g. a :class:`FrameError`) rather than raise them.
    """
    items = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = deque(pool.submit(fn, it) for it in islice(items, depth))
        while pending:
            fut = pending.popleft()
            nxt = next(items, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield fut.result()


def reduce_frames(science_paths, masters, instrument, out_dir, threads=1, grow=1):
    """Calibrate science frames into ``out_dir`` (one SCI/ERR/MASK file per frame).

    A frame that cannot be read or calibrated is logged and skipped (the night goes on).

    Parameters
    ----------
    science_paths : list of str
        Raw frames.
    masters : dict or Calibration
        Paths ``bias``, ``dark``, ``flat``, ``bpm`` (see :func:`load_calibration`).
    instrument : dict
    out_dir : str or Path
        Folder of the calibrated frames, named by :func:`reduced_name`.
    threads : int
        Threads of the calibration (numba) and of file reading/writing.

    Returns
    -------
    list of dict
        One per input: ``path``, ``reduced`` (path or None), ``reason`` ('' when reduced).
    """
    import numba

    cal = masters if isinstance(masters, Calibration) else load_calibration(masters, instrument, grow)
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def load(path):
        try:
            return read_raw(path, instrument, cal.shape)
        except FrameError as err:
            return err

    report = [None] * len(science_paths)
    writes = deque()
    with ThreadPoolExecutor(max_workers=1) as writer:
        for k, (path, item) in enumerate(zip(science_paths, prefetch(load, science_paths,
                                                                     workers=max(1, threads - 1)))):
            if isinstance(item, FrameError):
                log.warning("frame skipped: %s", item)
                report[k] = {"path": str(path), "reduced": None, "reason": item.reason}
                continue
            sci, err, msk = calibrate_frame(item, cal)
            dest = out_dir / reduced_name(path)
            writes.append((k, path, dest, writer.submit(write_calibrated, dest, item, sci, err, msk, cal)))
            while len(writes) > 2:
                k0, *rest = writes.popleft()
                report[k0] = _finish_write(*rest)
        while writes:
            k0, *rest = writes.popleft()
            report[k0] = _finish_write(*rest)
    n_ok = sum(r["reduced"] is not None for r in report)
    log.info("calibrated %d of %d science frames into %s", n_ok, len(report), out_dir)
    return report


def _finish_write(path, dest, fut):
    try:
        fut.result()
    except OSError as err:
        log.warning("could not write %s: %s", dest, err)
        return {"path": str(path), "reduced": None, "reason": f"write failed: {err}"}
    return {"path": str(path), "reduced": str(dest), "reason": ""}
