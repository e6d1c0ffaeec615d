"""Mutated raw frames for fuzzing the inventory and the night (issue 17, item 9).

:func:`mutate` turns one valid raw FITS file into a damaged variant of a named kind: truncation,
bit flips in the header or the data, a wrong BITPIX, NaN/Inf pixels, missing or mistyped
keywords, odd extensions (image in an extension, a table only, a cube, several images), garbage
bytes, broken compression, empty/constant/saturated pixels and copies. Every variant is written
under a new name; the source is never modified. Used by ``tests/test_fuzz.py`` (a sample of ~100)
and ``benchmarks/fuzz_night.py`` (1000 in one night, then the whole workflow).
"""

import gzip
import io

import numpy as np
from astropy.io import fits

#: Mutation kinds, in the order :func:`plan` cycles through them.
KINDS = (
    "truncate_header", "truncate_data", "header_bitflip", "data_bitflip", "wrong_bitpix",
    "nan_inf", "missing_keyword", "mistyped_keyword", "image_in_extension", "table_only", "cube",
    "two_images", "garbage", "empty_file", "gzip_truncated", "all_zero", "all_nan", "saturated",
    "copy", "naxis_mismatch",
)
KEYWORDS = ("DATE-OBS", "EXPTIME", "OBJECT", "IMAGETYP", "FILTER", "NAXIS1", "BITPIX", "SIMPLE", "END")
MISTYPED = {"EXPTIME": ["thirty", -5.0, float("nan"), True, "1e999", ""], "DATE-OBS": [20250602, "2025-13-45T25:61:00",
            "yesterday", "", "2025-06-02 04:10", "2025-06-02T04:10:00+0900"],
            "OBJECT": [42, "", "   "], "IMAGETYP": [1, "Light Frame\x00", "LIGHT FRAME "], "FILTER": [3.5, ""]}


def _header_bytes(raw):
    """Length of the primary header in the FITS byte string (to the 2880 block after END)."""
    for block in range(0, len(raw), 2880):
        chunk = raw[block:block + 2880]
        for card in range(0, len(chunk), 80):
            if chunk[card:card + 8] == b"END     ":
                return block + 2880
    return len(raw)


def _hdul_bytes(hdul):
    buf = io.BytesIO()
    hdul.writeto(buf, output_verify="silentfix")
    return buf.getvalue()


def _set_card(raw, keyword, value_text):
    """Replace the value of a header card in place (bytes), keeping the 80-column layout."""
    header_end = _header_bytes(raw)
    out = bytearray(raw)
    for pos in range(0, header_end, 80):
        if out[pos:pos + 8].decode("ascii", "replace").rstrip() == keyword:
            card = f"{keyword:8s}= {value_text:>20s}".ljust(80)[:80]
            out[pos:pos + 80] = card.encode("ascii", "replace")
            break
    return bytes(out)


def mutate(raw, kind, rng):
    """A damaged copy of a FITS file's bytes.

    Parameters
    ----------
    raw : bytes
        A valid uncompressed single-HDU FITS file (2-D integer image).
    kind : str
        One of :data:`KINDS`.
    rng : numpy.random.Generator

    Returns
    -------
    data : bytes
        The mutated file.
    detail : str
        What was done (for the report).
    """
    hdr_len = _header_bytes(raw)
    if kind == "truncate_header":
        cut = int(rng.integers(0, hdr_len))
        return raw[:cut], f"cut at byte {cut} (header)"
    if kind == "truncate_data":
        cut = int(rng.integers(hdr_len, len(raw)))
        return raw[:cut], f"cut at byte {cut} of {len(raw)} (data)"
    if kind in ("header_bitflip", "data_bitflip"):
        lo, hi = (0, hdr_len) if kind == "header_bitflip" else (hdr_len, len(raw))
        out = bytearray(raw)
        n = int(rng.integers(1, 9))
        for _ in range(n):
            pos = int(rng.integers(lo, hi))
            out[pos] ^= 1 << int(rng.integers(0, 8))
        return bytes(out), f"{n} bit(s) flipped in the {kind.split('_')[0]}"
    with fits.open(io.BytesIO(raw)) as hdul:
        header = hdul[0].header.copy()
        data = np.asarray(hdul[0].data)
    if kind == "wrong_bitpix":
        value = int(rng.choice([8, 32, -32, -64, 64, 17, 0]))
        return _set_card(raw, "BITPIX", str(value)), f"BITPIX={value}"
    if kind == "naxis_mismatch":
        key = str(rng.choice(["NAXIS1", "NAXIS2", "NAXIS"]))
        value = int(rng.choice([0, 1, 3, data.shape[-1] + 1, 2 * data.shape[0]]))
        return _set_card(raw, key, str(value)), f"{key}={value}"
    if kind == "nan_inf":
        img = data.astype(np.float32)
        frac = float(rng.choice([1e-4, 0.01, 0.3, 0.7]))
        mask = rng.random(img.shape) < frac
        img[mask] = rng.choice([np.nan, np.inf, -np.inf], size=int(mask.sum()))
        h = header.copy()
        for k in ("BZERO", "BSCALE"):
            h.remove(k, ignore_missing=True)
        return _hdul_bytes(fits.HDUList([fits.PrimaryHDU(img, h)])), f"{frac:.2%} NaN/Inf pixels (float32)"
    if kind == "missing_keyword":
        key = str(rng.choice(KEYWORDS))
        if key in ("BITPIX", "SIMPLE", "END", "NAXIS1"):
            out = bytearray(raw)
            for pos in range(0, hdr_len, 80):
                if out[pos:pos + 8].decode("ascii", "replace").rstrip() == key:
                    out[pos:pos + 80] = b" " * 80
                    break
            return bytes(out), f"{key} card blanked"
        h = header.copy()
        h.remove(key, ignore_missing=True)
        return _hdul_bytes(fits.HDUList([fits.PrimaryHDU(data, h)])), f"no {key}"
    if kind == "mistyped_keyword":
        key = str(rng.choice(list(MISTYPED)))
        value = MISTYPED[key][int(rng.integers(0, len(MISTYPED[key])))]
        h = header.copy()
        try:
            h[key] = value
        except ValueError:
            h[key] = str(value).replace("\x00", "")
        return _hdul_bytes(fits.HDUList([fits.PrimaryHDU(data, h)])), f"{key}={value!r}"
    if kind == "image_in_extension":
        primary = fits.PrimaryHDU(header=fits.Header({k: header[k] for k in ("DATE-OBS", "EXPTIME") if k in header}))
        return _hdul_bytes(fits.HDUList([primary, fits.ImageHDU(data, header)])), "image in extension 1"
    if kind == "table_only":
        table = fits.BinTableHDU.from_columns([fits.Column("x", "E", array=np.arange(5, dtype=np.float32))])
        primary = fits.PrimaryHDU(header=fits.Header([c for c in header.cards if c.keyword not in (
            "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "SIMPLE", "EXTEND", "BZERO", "BSCALE")]))
        return _hdul_bytes(fits.HDUList([primary, table])), "a table, no image"
    if kind == "cube":
        h = header.copy()
        for k in ("NAXIS1", "NAXIS2", "NAXIS"):
            h.remove(k, ignore_missing=True)
        return _hdul_bytes(fits.HDUList([fits.PrimaryHDU(np.stack([data, data]), h)])), "3-D cube"
    if kind == "two_images":
        return _hdul_bytes(fits.HDUList([fits.PrimaryHDU(data, header), fits.ImageHDU(data[::2, ::2])])), \
            "a second, smaller image extension"
    if kind == "garbage":
        n = int(rng.integers(1, 20000))
        prefix = b"<html><body>404 Not Found</body></html>" if rng.random() < 0.3 else b""
        return prefix + rng.bytes(n), f"{n} random bytes"
    if kind == "empty_file":
        return b"", "0 bytes"
    if kind == "gzip_truncated":
        packed = gzip.compress(raw)
        cut = int(rng.integers(10, len(packed)))
        return packed[:cut], f"gzip cut at byte {cut} of {len(packed)}"
    if kind in ("all_zero", "all_nan", "saturated"):
        h = header.copy()
        if kind == "all_nan":
            for k in ("BZERO", "BSCALE"):
                h.remove(k, ignore_missing=True)
            img = np.full(data.shape, np.nan, np.float32)
        else:
            img = np.zeros_like(data)
            if kind == "saturated":  # the dome lights on: nearly every pixel at the ceiling
                img = np.where(rng.random(data.shape) < 0.9, np.iinfo(np.uint16).max, data).astype(data.dtype)
        return _hdul_bytes(fits.HDUList([fits.PrimaryHDU(img, h)])), kind.replace("_", " ")
    if kind == "copy":
        return raw, "byte-identical copy"
    raise ValueError(f"unknown mutation kind {kind!r}")


def suffix_for(kind):
    """File suffix of a mutant (compressed kinds keep a ``.fits.gz`` name)."""
    return ".fits.gz" if kind == "gzip_truncated" else ".fits"


def plan(n, rng, kinds=KINDS):
    """``n`` mutation kinds cycling through ``kinds`` in a shuffled order."""
    order = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(order)
    return order


def retimed(raw, seconds, tag):
    """The FITS bytes with DATE-OBS moved by ``seconds`` and corner pixel (0, 0) raised by ``tag`` ADU,
    so a mutant is neither a same-time nor a same-pixel duplicate of another unless made one."""
    from astropy.time import Time, TimeDelta

    with fits.open(io.BytesIO(raw)) as hdul:
        hdul[0].header["DATE-OBS"] = (Time(hdul[0].header["DATE-OBS"], scale="utc")
                                      + TimeDelta(seconds, format="sec")).isot
        data = hdul[0].data.copy()
        data[0, 0] = (int(data[0, 0]) + tag) % 60000
        hdul[0].data = data
        return _hdul_bytes(hdul)


def fuzz_night(sources, out_dir, n, seed=0, kinds=KINDS):
    """Write ``n`` mutants of the ``sources`` frames into ``out_dir``.

    Each mutant starts from a source re-timed by a multiple of 0.5 s with one pixel changed (so only
    the mutation can make it a duplicate), then gets one mutation of :func:`plan`'s kind.

    Parameters
    ----------
    sources : list of path
        Valid uncompressed raw frames (the night's science frames).
    out_dir : path
        Folder receiving ``fuzz_<i>_<kind>.fits[.gz]``.
    n : int
    seed : int

    Returns
    -------
    list of dict
        ``file``, ``kind``, ``detail``, ``source`` per mutant.
    """
    from pathlib import Path

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raws = [Path(s).read_bytes() for s in sources]
    made = []
    for i, kind in enumerate(plan(n, rng, kinds)):
        k = i % len(raws)
        base = retimed(raws[k], 0.5 * (i // len(raws) + 1), i + 1)
        data, detail = (raws[k], "byte-identical copy of the source") if kind == "copy" else mutate(base, kind, rng)
        name = f"fuzz_{i:04d}_{kind}{suffix_for(kind)}"
        (out_dir / name).write_bytes(data)
        made.append(dict(file=name, kind=kind, detail=detail, source=Path(sources[k]).name))
    return made
