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
import re
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from ..ingest import timing
from ..photometry.aperture import MASK_BAD, MASK_NEAR_BAD
from ..errors import CalibrationMissing, ConfigError, FrameError
from ..fitsio import image_hdu_index, read_image, write_fits
from ..staging import local_path

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
    skipped: tuple = ()

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
        cards.append(("CALSKIP", ",".join(self.skipped) or "none", "calibrations skipped"))
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
    for need in ("bias", "flat"):
        if not masters.get(need):
            raise CalibrationMissing(f"no master {need} given to the science calibration")
    # Read side by side (file reads and most numpy passes release the GIL): ~40 % less time.
    names = [k for k in ("bias", "flat", "dark", "bpm") if masters.get(k)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(_read_master, masters[k]) for k in names}
    bias, bias_hdr = futures["bias"].result()     # problems reported in this order, the bias's first
    shape = bias.shape
    read = {}
    skipped = ["bias"] if bias_hdr.get("CALSKIP") else []
    for k in names[1:]:
        read[k], hdr = futures[k].result()
        if hdr.get("CALSKIP"):
            skipped.append(k)
        if read[k].shape != shape:
            raise FrameError(masters[k], f"shape {read[k].shape} differs from expected {shape}")
    flat = read["flat"]
    dark = read["dark"] if "dark" in read else np.zeros(shape, np.float32)
    bpm = read["bpm"] != 0 if "bpm" in read else np.zeros(shape, bool)     # NaN counts as bad too
    invalid = ~np.isfinite(bias) | ~np.isfinite(dark) | ~np.isfinite(flat) | (flat <= 0)
    bad = bpm | invalid
    if invalid.any():
        log.info("%d pixel(s) with invalid master values (NaN, flat <= 0) treated as bad", int(invalid.sum()))
    bad_index = np.flatnonzero(bad)     # once: a full-frame scan costs ~2 ms at 1k x 1k
    near = near_bad(bad, grow, bad_index)
    static = np.zeros(shape, np.uint8)
    static[bad] = MASK_BAD
    static[near] |= MASK_NEAR_BAD
    rn = bias_hdr.get("RDNOISE")
    try:
        rn = float(rn)
    except (TypeError, ValueError):
        rn = math.nan
    if not (math.isfinite(rn) and rn > 0):
        rn = float(instrument["read_noise_e"])
    def clean(a, v):
        # The arrays were read here (no one else holds them): fixed in place, not copied.
        a = np.ascontiguousarray(a, dtype=np.float32)
        a.reshape(-1)[bad_index] = v
        return a

    return Calibration(bias=clean(bias, 0.0), dark=clean(dark, 0.0), flat=clean(flat, 1.0),
                       static_mask=static, gain=float(instrument["gain_e_per_adu"]), read_noise=rn,
                       saturation_adu=float(instrument["saturation_adu"]),
                       paths={k: (str(v) if v else None) for k, v in masters.items()}, grow=grow,
                       skipped=tuple(k for k in ("bias", "dark", "flat") if k in skipped))


def near_bad(bad, grow, bad_index=None):
    """Pixels within Chebyshev distance ``grow`` of a bad pixel, bad pixels excluded (bool).

    Same as ``scipy.ndimage.binary_dilation(bad, np.ones((3, 3)), iterations=grow) & ~bad``,
    computed around the (few) bad pixels rather than over the whole frame (~10 ms at 1k x 1k).
    ``bad_index``: ``np.flatnonzero(bad)`` when the caller has it.
    """
    near = np.zeros(bad.shape, bool)
    if bad_index is None:
        bad_index = np.flatnonzero(bad)
    if grow <= 0 or bad_index.size == 0:
        return near
    if bad_index.size * (2 * grow + 1) ** 2 > bad.size // 4:
        from scipy import ndimage  # only here: 0.16 s of import the usual few bad pixels never need

        return ndimage.binary_dilation(bad, structure=np.ones((3, 3), bool), iterations=grow) & ~bad
    ny, nx = bad.shape
    ys, xs = np.divmod(bad_index, nx)
    for dy in range(-grow, grow + 1):
        yy = np.clip(ys + dy, 0, ny - 1)    # a clipped offset stays within the square of the pixel
        for dx in range(-grow, grow + 1):
            near[yy, np.clip(xs + dx, 0, nx - 1)] = True
    return near & ~bad


def _read_master(path, expected_shape=None):
    """Master image (float32) and header: :func:`_read_primary_fast` when it applies, else
    :func:`bandersnake.fitsio.read_image` (same values, and its errors for broken files)."""
    fast = None
    if str(path).lower().endswith(_UNCOMPRESSED):
        try:
            fast = _read_primary_fast(path, bytes_ok=True)
        except (OSError, FrameError):
            fast = None
    if fast is None:
        return read_image(path, expected_shape=expected_shape, dtype=np.float32)
    raw, code, header, _ = fast
    data = decode_raw(raw, code)
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise FrameError(path, f"shape {data.shape} differs from expected {tuple(expected_shape)}")
    if not np.isfinite(data).any():
        raise FrameError(path, "image has no finite pixel")
    return data, header


class RawFrame:
    """A raw science frame ready for the kernel.

    ``raw`` holds the pixels as the kernel reads them (``code``, see
    :func:`bandersnake.kernel.raw_value`): the file's big-endian 16-bit integers as they lie in
    the data unit (``RAW_BE_U16``/``RAW_BE_I16``; for an uncompressed file, a read-only memory
    map of it, so only the pages the kernel touches are read), or float32 ADU
    (``RAW_NATIVE``), trimmed; ``data`` decodes the whole frame to float32 ADU (exact for
    16-bit cameras) on demand. ``offset`` is the overscan level (ADU) to subtract; times in JD
    (UTC) at mid-exposure; angles in deg. ``header`` is the ``astropy.io.fits.Header``, built on
    first access from the header's cards (:class:`FastHeader`) when the file was read directly.
    """

    __slots__ = ("path", "raw", "offset", "_header", "exptime", "jd_mid", "ra", "dec", "airmass", "code",
                 "_buffer")

    def __init__(self, path, raw, offset, header, exptime, jd_mid, ra, dec, airmass, code=0):
        self.path = path
        self.raw = raw
        self.offset = offset
        self._header = header
        self.exptime = exptime
        self.jd_mid = jd_mid
        self.ra = ra
        self.dec = dec
        self.airmass = airmass
        self.code = code
        self._buffer = None

    def release(self):
        """Give the pixel buffer back to its :class:`BufferPool` (``raw`` is then unusable)."""
        if self._buffer is not None:
            pool, buf = self._buffer
            self._buffer = None
            self.raw = None
            pool.give(buf)

    @property
    def header(self):
        """The primary header (``astropy.io.fits.Header``)."""
        if isinstance(self._header, FastHeader):
            self._header = self._header.full()
        return self._header

    @property
    def data(self):
        """The frame as float32 ADU (decoded from ``raw``; a view when ``raw`` is float32)."""
        return decode_raw(self.raw, self.code)


class BufferPool:
    """Byte buffers recycled from frame to frame (thread-safe).

    A fresh 2 MB array costs a page fault per 4 kB page at its first write (~5 us each on a
    VM: ~1 ms per frame); a recycled one is already mapped. At most ``keep`` buffers are kept.
    """

    def __init__(self, keep=16):
        self.keep = keep
        self._free = []
        self._lock = threading.Lock()

    def take(self, nbytes):
        """A uint8 buffer of ``nbytes`` (recycled when one of that size is free)."""
        with self._lock:
            for k, buf in enumerate(self._free):
                if buf.nbytes == nbytes:
                    return self._free.pop(k)
        return np.empty(nbytes, np.uint8)

    def give(self, buf):
        """Return a buffer taken from :meth:`take`."""
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)


def decode_raw(raw, code):
    """Float32 ADU of an array stored as ``code`` (``bandersnake.kernel.RAW_*``)."""
    from ..photometry.kernel import RAW_BE_I16, RAW_BE_U16

    if code == RAW_BE_U16:
        return (raw.byteswap() ^ np.uint16(0x8000)).astype(np.float32)
    if code == RAW_BE_I16:
        return raw.byteswap().view(np.int16).astype(np.float32)
    return _as_float32(raw)


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
    jd = _jd_mid_utc(header, instrument, exptime)
    if not math.isfinite(jd):
        raise FrameError(path, "no usable observation date (DATE-OBS)")
    ra, dec = timing.header_coords(header, instrument)
    return exptime, jd, ra, dec, timing.header_airmass(header, instrument)


_ISO_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d(?:\.\d*)?)")


def _jd_mid_utc(header, instrument, exptime):
    """:func:`bandersnake.timing.jd_mid_utc`, with a fast path for a plain ISO ``DATE-OBS``.

    ``astropy.time.Time`` costs ~60 us per frame (as much as the kernel spends on a star);
    ERFA's ``dtf2d``, which it uses for the same conversion (leap seconds included), ~6 us.
    Any other form of date (a zone suffix, local time with ``utc_offset_hours``, a date plus a
    time keyword, JD/MJD) goes to :func:`bandersnake.ingest.timing.jd_mid_utc`, which picks the
    same source as the inventory.
    """
    import erfa

    key = timing._kw(instrument, "date_obs", "DATE-OBS")
    date = header.get(key)
    m = _ISO_DATE.fullmatch(date.strip()) if isinstance(date, str) else None
    if m is None or instrument.get("utc_offset_hours"):
        return timing.jd_mid_utc(header, instrument, exptime)
    try:
        d1, d2 = erfa.dtf2d("UTC", int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), float(m[6]))
    except (ValueError, erfa.ErfaError):
        return timing.jd_mid_utc(header, instrument, exptime)
    return float(d1 + d2) + timing._exposure_shift_days(instrument, exptime)


def _as_float32(a):
    # One dtype for the kernel (one numba specialization); float32 holds 16-bit ADU exactly.
    return np.asarray(a, dtype=np.float32)


_BLOCK = 2880
_MAX_HEADER_BLOCKS = 200            # 576 000 bytes of header: beyond that, leave it to astropy
_UNCOMPRESSED = (".fits", ".fit", ".fts")


class FastHeader:
    """Values of a FITS header's cards, looked up in its bytes without astropy; :meth:`full`
    gives the ``astropy.io.fits.Header`` of the same bytes.

    A value is parsed on first use, from the first card with that keyword and a value
    indicator: a reader looks up ~15 keywords, and a camera's header may hold hundreds of cards
    (parsing every card cost ~2.6 us each; 15 lookups in 76 / 283 cards now take 42 / 87 us
    against 214 / 752). Values follow the fixed format: quoted strings (``''`` is a quote,
    trailing blanks dropped), ``T``/``F``, integers, floats (``D`` exponents). A card this
    parser does not understand (a string continued on ``CONTINUE`` cards, complex values...), a
    keyword longer than 8 characters, and one found only in a ``HIERARCH`` card go to the full
    header, so lookups always give astropy's values. Keywords are case-insensitive, as in
    astropy.

    Parameters
    ----------
    blob : bytes
        The header blocks.
    end : int, optional
        Offset of the END card in ``blob`` (found when not given).
    """

    __slots__ = ("blob", "_end", "_full", "_values", "_heads", "_first", "_hierarch")

    def __init__(self, blob, end=None):
        self.blob = bytes(blob)
        self._end = _end_card(self.blob, 0) if end is None else end
        if self._end < 0:
            raise ValueError("FITS header without an END card")
        self._full = None
        self._values = {}
        self._heads = None
        self._first = None
        self._hierarch = None

    def full(self):
        """The header as ``astropy.io.fits.Header`` (parsed once)."""
        if self._full is None:
            self._full = fits.Header.fromstring(self.blob.decode("ascii"))
        return self._full

    def _card_index(self, head):
        """Index of the first card beginning with ``head`` (keyword and value indicator, 10 bytes), or -1."""
        if self._first is None:
            blob = self.blob
            self._heads = [blob[k:k + 10] for k in range(0, self._end, 80)]
            # Reversed, so that the first card of a repeated keyword is the one kept.
            self._first = dict(zip(reversed(self._heads), range(len(self._heads) - 1, -1, -1)))
        return self._first.get(head, -1)

    def _in_hierarch(self, key):
        """Whether a ``HIERARCH`` card holds ``key`` (astropy finds ``HIERARCH KEY`` as ``KEY``)."""
        if self._hierarch is None:
            self._hierarch = {self.blob[k * 80 + 8:k * 80 + 80].decode("ascii", "replace").split("=", 1)[0]
                              .strip().upper()
                              for k, head in enumerate(self._heads) if head.startswith(b"HIERARCH")}
        return key in self._hierarch

    def _lookup(self, key):
        """Value of ``key`` (upper case), ``_MISSING`` or ``_UNPARSED`` (ask astropy)."""
        if len(key) > 8 or not key.isascii():
            return _UNPARSED
        k = self._card_index(key.ljust(8).encode("ascii") + b"= ")
        if k < 0:
            return _UNPARSED if self._in_hierarch(key) else _MISSING
        pos = 80 * k
        value = _parse_value(self.blob[pos + 10:pos + 80].decode("ascii", "replace"))
        if isinstance(value, str) and value.endswith("&") and self.blob[pos + 80:pos + 88] == b"CONTINUE":
            return _UNPARSED
        return value

    def _value(self, key):
        key = key.upper()
        value = self._values.get(key, _NOT_LOOKED_UP)
        if value is _NOT_LOOKED_UP:
            value = self._values[key] = self._lookup(key)
        return key, value

    def get(self, key, default=None):
        key, value = self._value(key)
        if value is _UNPARSED:
            return self.full().get(key, default)
        return default if value is _MISSING else value

    def __getitem__(self, key):
        key, value = self._value(key)
        if value is _UNPARSED:
            return self.full()[key]
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key):
        key, value = self._value(key)
        if value is _UNPARSED:
            return key in self.full()
        return value is not _MISSING


_MISSING = object()
_NOT_LOOKED_UP = object()
_UNPARSED = object()
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?")


def _parse_value(field):
    """Value of the part of a fixed-format card after ``= `` (str, bool, int, float, None for
    an undefined value), or ``_UNPARSED``."""
    text = field.lstrip()
    if text.startswith("'"):
        out = []
        k = 1
        while True:
            q = text.find("'", k)
            if q < 0:
                return _UNPARSED
            out.append(text[k:q])
            if text[q + 1:q + 2] == "'":       # '' is a quote inside the string
                out.append("'")
                k = q + 2
                continue
            rest = text[q + 1:].strip()
            if rest and not rest.startswith("/"):
                return _UNPARSED
            return "".join(out).rstrip()
    text = text.split("/", 1)[0].strip()
    if text == "T":
        return True
    if text == "F":
        return False
    if text == "":
        return None
    if not _NUMBER.fullmatch(text):
        return _UNPARSED
    if text.lstrip("+-").isdigit():
        return int(text)
    return float(text.replace("D", "E").replace("d", "e"))


def _read_primary_fast(path, buffers=None, bytes_ok=False):
    """Read the primary image of an uncompressed FITS file without astropy's data layer.

    The header blocks are read into a :class:`FastHeader` (astropy's header costs ~30 us
    per frame, more with many cards); the data unit is read with one ``readinto`` (no
    scaling, GIL released) into a buffer taken from ``buffers`` (a :class:`BufferPool`) when
    given. 16-bit images stay as the file's big-endian integers, which the kernel decodes pixel
    by pixel (``RAW_BE_U16``/``RAW_BE_I16``); BITPIX -32 is byte-swapped to float32. With
    ``bytes_ok`` (masters: a bad-pixel map), BITPIX 8 is read too, as uint8.

    (A memory map of the file reads only the pages the kernel touches, but on this VM a page
    fault costs ~5 us and an unmap ~70 us: more than copying the whole 2 MB data unit.)

    Returns
    -------
    (raw, code, header, buffer) or None
        ``buffer``: the pool's buffer ``raw`` lies in (give it back when done), or None.
        None when the file is not a plain 2-D primary image of a supported type (the caller
        then reads it with astropy, which also reports what is wrong with it).

    Raises
    ------
    FrameError
        The data unit is shorter than its header says (truncated file).
    """
    from ..photometry.kernel import RAW_BE_I16, RAW_BE_U16, RAW_NATIVE

    with open(path, "rb", buffering=0) as f:
        head = f.read(_BLOCK)
        if len(head) < _BLOCK:
            return None
        end = _end_card(head, 0)
        while end < 0:      # the rest of a long header, four blocks at a time
            if len(head) >= _MAX_HEADER_BLOCKS * _BLOCK:
                return None
            more = f.read(_BLOCK * 4)
            if len(more) < _BLOCK:
                return None
            start = len(head)
            head += more[:len(more) - len(more) % _BLOCK]
            end = _end_card(head, start)
        hdr_len = (end // _BLOCK + 1) * _BLOCK
        try:
            header = FastHeader(head[:hdr_len], end)
        except ValueError:
            return None
        if header.get("SIMPLE") is not True or header.get("NAXIS") != 2 or "BLANK" in header \
                or header.get("ZIMAGE") or header.get("GROUPS"):
            return None
        bitpix = header.get("BITPIX")
        nx, ny = header.get("NAXIS1"), header.get("NAXIS2")
        bzero, bscale = header.get("BZERO", 0), header.get("BSCALE", 1)
        if not (isinstance(nx, int) and isinstance(ny, int) and nx > 0 and ny > 0) or bscale != 1:
            return None
        if bitpix == 16 and bzero in (0, 32768):
            code, dtype = (RAW_BE_U16 if bzero == 32768 else RAW_BE_I16), np.dtype(np.uint16)
        elif bitpix == -32 and bzero == 0:
            code, dtype = RAW_NATIVE, np.dtype(">f4")
        elif bitpix == 8 and bzero == 0 and bytes_ok:
            code, dtype = RAW_NATIVE, np.dtype(np.uint8)
        else:
            return None
        need = nx * ny * dtype.itemsize
        buf = buffers.take(need) if buffers is not None else np.empty(need, np.uint8)
        f.seek(hdr_len)
        got = f.readinto(memoryview(buf))
        while got is not None and 0 < got < need:     # short reads (pipes, network file systems)
            more = f.readinto(memoryview(buf)[got:])
            if not more:
                break
            got += more
    if got is None or got < need:
        if buffers is not None:
            buffers.give(buf)
        raise FrameError(path, f"unreadable FITS data (truncated: data unit has {got or 0} of {need} bytes)")
    raw = buf.view(dtype).reshape(ny, nx)
    if dtype == np.uint8:
        if buffers is not None:
            raw = raw.copy()
            buffers.give(buf)
        buf = None
    elif code == RAW_NATIVE:
        if buffers is not None:
            raw = raw.astype(np.float32)
            buffers.give(buf)
        else:
            # The buffer is this call's own: swap its bytes where they lie rather than into a
            # new array (fresh memory costs a page fault per 4 kB: ~1.5 ms per 4 MB on this VM).
            raw = raw.view(np.uint32).byteswap(inplace=True).view(np.float32)
        buf = None
    return raw, code, header, buf


def _end_card(blob, start):
    """Offset of the END card in header bytes (searched from offset ``start``, a card's), or -1."""
    # bytes.find skips ahead by the needle's last byte: a needle ending in blanks, which fill a
    # header, made it ~5x slower.
    pos = blob.find(b"END", start)
    while pos >= 0 and (pos % 80 or blob[pos + 3:pos + 8] != b"     "):
        pos = blob.find(b"END", pos + 1)
    return pos


def _read_astropy(path, instrument):
    """Image (float32 ADU) and header of the image HDU of any FITS file astropy reads (.gz, .fz...)."""
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
    return data, header


def read_raw(path, instrument, expected_shape=None, buffers=None):
    """Read a raw science frame for the kernel (which calibrates the pixels it needs).

    Uncompressed 16-bit (BZERO 0 or 32768) and float32 primary images are read directly
    (:func:`_read_primary_fast`: ~0.1 ms for a 1024x1024 frame against ~1 ms for astropy's
    scaled read); anything else (.gz, .fz, extensions, BLANK, BSCALE) goes through astropy
    as float32. Both give the same ADU values.

    Parameters
    ----------
    path : str
    instrument : dict
        ``image_extension``, ``shape``, ``overscan_section``, ``trim_section``, keywords.
    expected_shape : tuple, optional
        Shape after trimming (the masters' shape).
    buffers : BufferPool, optional
        Where the data unit is read (directly read files only); call the frame's
        :meth:`RawFrame.release` when done with its pixels.

    Returns
    -------
    RawFrame

    Raises
    ------
    FrameError
        Unreadable/corrupt file, no 2-D image, wrong shape, no finite pixel, no exposure time
        or date.
    """
    from ..photometry.kernel import RAW_NATIVE

    code = RAW_NATIVE
    buf = None
    try:
        # Bytes from the staged copy in staged runs; errors keep naming the raw path.
        src = local_path(path)
        fast = None
        if str(path).lower().endswith(_UNCOMPRESSED) and instrument.get("image_extension", 0) in (0, None):
            fast = _read_primary_fast(src, buffers)
        if fast is not None:
            data, code, header, buf = fast
        else:
            data, header = _read_astropy(src, instrument)
    except FrameError as err:
        raise FrameError(path, err.reason) from None
    except FileNotFoundError:
        raise FrameError(path, "file not found") from None
    except Exception as err:  # truncated / corrupt files surface as OSError, ValueError, zlib/gzip errors
        raise FrameError(path, f"unreadable FITS data ({type(err).__name__}: {err})") from None
    try:
        frame = _raw_frame(path, data, code, header, instrument, expected_shape)
    except FrameError:
        if buffers is not None and buf is not None:
            buffers.give(buf)
        raise
    if buffers is not None and buf is not None:
        if np.may_share_memory(frame.raw, buf):
            frame._buffer = (buffers, buf)
        else:                                           # trimmed: a copy was made
            buffers.give(buf)
    return frame


def _raw_frame(path, data, code, header, instrument, expected_shape):
    from .masters import overscan_line_medians, section_slices
    from ..photometry.kernel import RAW_NATIVE

    if data is None or data.ndim != 2:
        raise FrameError(path, "no image data" if data is None else f"image is {data.ndim}-D, expected 2-D")
    raw_shape = instrument.get("shape")
    if raw_shape and tuple(data.shape) != tuple(raw_shape):
        raise FrameError(path, f"shape {data.shape} differs from the instrument's {tuple(raw_shape)}")
    # Integers are always finite. Subsampled check first: a full pass only for frames that look empty.
    if code == RAW_NATIVE and not (np.isfinite(data[::31, ::29]).any() or np.isfinite(data).any()):
        raise FrameError(path, "image has no finite pixel")
    offset = 0.0
    try:
        if instrument.get("overscan_section"):
            rows, cols = section_slices(instrument["overscan_section"], data.shape, "overscan_section")
            lines, _ = overscan_line_medians(np.asarray(decode_raw(data[rows, cols], code), np.float64))
            offset = float(lines.mean())  # as calib.overscan_and_trim's 'constant' model
        if instrument.get("trim_section"):
            rows, cols = section_slices(instrument["trim_section"], data.shape, "trim_section")
            data = np.ascontiguousarray(data[rows, cols])
    except ConfigError as err:
        raise FrameError(path, str(err)) from None
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise FrameError(path, f"shape {data.shape} differs from the masters' {tuple(expected_shape)}")
    exptime, jd, ra, dec, am = header_fields(header, instrument, path)
    return RawFrame(str(path), data, offset, header, exptime, jd, ra, dec, am, code)


def calibrate_frame(frame, cal):
    """Calibrate a whole raw frame.

    Returns
    -------
    sci, err : 2-D float32 arrays
        e-.
    mask : 2-D uint8 array
    """
    from ..photometry.kernel import calibrate_full

    sci = np.empty(frame.raw.shape, np.float32)
    err = np.empty(frame.raw.shape, np.float32)
    msk = np.empty(frame.raw.shape, np.uint8)
    calibrate_full(frame.raw, frame.code, cal.bias, cal.dark, cal.flat, cal.static_mask, float(frame.offset),
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
    if frame.jd_mid is not None and math.isfinite(frame.jd_mid):
        # Read by later stages (KBMOD) instead of re-interpreting the raw time keywords.
        primary.header["JD_UTC"] = (float(frame.jd_mid), "[d] mid-exposure JD (UTC)")
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

    ``fn`` should return its errors (e.g. a :class:`FrameError`) rather than raise them (an
    exception it raises is raised here, at its item). Items are taken in order by whoever is
    free: the ``workers`` threads work ahead, and when the item due is not done, the calling
    thread computes the next one not started (the item due itself, or a later one) rather than
    wait: a worker on a slow or shared core then costs little more than reading in line.
    """
    items = list(items)
    n = len(items)
    depth = max(1, depth)
    results = [None] * n            # (value, exception) once computed, until yielded
    cond = threading.Condition()
    claimed = 0                     # items [0, claimed) are taken by some thread
    consumed = 0                    # items [0, consumed) are yielded
    closed = False

    def claim():
        """Take the next item not taken, within ``depth`` of the one due (under ``cond``); -1 if none."""
        nonlocal claimed
        if claimed >= min(n, consumed + depth):
            return -1
        claimed += 1
        return claimed - 1

    def compute(k):
        try:
            res = (fn(items[k]), None)
        except BaseException as err:  # re-raised in the consumer, at item k
            res = (None, err)
        with cond:
            results[k] = res
            cond.notify_all()

    def worker():
        while True:
            with cond:
                k = claim()
                while k < 0 and not closed and claimed < n:
                    cond.wait()
                    k = claim()
                if k < 0 or closed:
                    return
            compute(k)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(0, workers))]
    for t in threads:
        t.start()
    try:
        for k in range(n):
            while True:
                with cond:
                    # Item k not done: take the next item not taken (k itself, or a later one)
                    # rather than wait; with none left within depth, k is taken and waited for.
                    mine = claim() if results[k] is None else -1
                    if mine < 0:
                        while results[k] is None:
                            cond.wait()
                        (value, err), results[k] = results[k], None
                        consumed = k + 1
                        cond.notify_all()
                        break
                compute(mine)
            if err is not None:
                raise err
            yield value
    finally:
        with cond:
            closed = True
            cond.notify_all()
        for t in threads:
            t.join()


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


def master_paths(named_inputs):
    """``bias``/``dark``/``flat``/``bpm`` master paths from a rule's named inputs."""
    return {key: named_inputs[key] for key in ("bias", "dark", "flat", "bpm")}
