"""Staging a night's raw frames from slow shared storage (NAS) to a fast local disk (SSD).

The workflow keeps the raw (NAS) paths everywhere: in the inventory, in the rules' declared
inputs (so Snakemake's re-run decisions do not change) and in the products' provenance
(``HISTORY input: <NAS path>``). Only the bytes are read from the staged copy: a heavy job runs
its package call inside :func:`staged_reads`, and :func:`local_path` (called by the FITS readers)
swaps a raw path for its copy in the night's staging folder when one is there.

The staging folder holds the night's frames under their own base names (raw night folders are
flat, see :func:`bandersnake.inventory.raw_files`).
"""

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import BandersnakeError

log = logging.getLogger(__name__)

# raw path (as given, and absolute) -> staged copy; empty outside staged_reads().
_REDIRECT = {}


def stage_frames(paths, out_dir):
    """Copy raw frames into ``out_dir`` (created), all or nothing.

    The copies are made in a temporary sibling folder that is renamed onto ``out_dir`` at the
    end, so a killed copy never leaves a folder that looks complete.

    Parameters
    ----------
    paths : sequence of str or Path
        Raw frames (distinct base names).
    out_dir : str or Path
        Staging folder of the night, e.g. ``/ssd/staging/SPIRIT2_20251215``.

    Returns
    -------
    n_files : int
    n_bytes : int

    Raises
    ------
    BandersnakeError
        When two frames share a base name, a frame is missing, or the copy fails (disk full).
    """
    out_dir = Path(out_dir)
    names = [Path(p).name for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BandersnakeError(f"cannot stage into {out_dir}: several frames named {dupes[0]}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    t0, n_bytes = time.monotonic(), 0
    try:
        for src in paths:
            try:
                shutil.copyfile(src, tmp / Path(src).name)
            except FileNotFoundError:
                raise BandersnakeError(f"{src}: raw frame vanished before it could be staged") from None
            except OSError as err:
                raise BandersnakeError(f"{src}: copy to {out_dir.parent} failed ({err.strerror or err})") from None
            n_bytes += os.path.getsize(tmp / Path(src).name)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.monotonic() - t0
    log.info("staged %d frames (%.1f MB) into %s in %.1f s (%.0f MB/s)", len(names), n_bytes / 1e6,
             out_dir, seconds, n_bytes / 1e6 / max(seconds, 1e-6))
    return len(names), n_bytes


def local_path(path):
    """The staged copy of raw frame ``path`` inside :func:`staged_reads`, else ``path`` itself.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str or Path
        Same type as ``path`` when there is no staged copy.
    """
    if not _REDIRECT:
        return path
    text = str(path)
    return _REDIRECT.get(text) or _REDIRECT.get(os.path.abspath(text)) or path


@contextlib.contextmanager
def staged_reads(staged_dir, frames=None):
    """Within the block, FITS reads of raw frames go to their copies in ``staged_dir``.

    Parameters
    ----------
    staged_dir : str or Path or None
        The night's staging folder; ``None`` (not staging) makes this a no-op.
    frames : sequence of str, optional
        Raw paths that must have a copy (the job's declared frames); a missing copy raises at
        once rather than silently reading from the NAS.

    Raises
    ------
    BandersnakeError
        When a frame in ``frames`` has no copy of the same size in ``staged_dir``.
    """
    if not staged_dir:
        yield
        return
    staged_dir = Path(staged_dir)
    mapping = {}
    for raw in frames or ():
        copy = staged_dir / Path(raw).name
        try:
            same = copy.stat().st_size == os.path.getsize(raw)
        except FileNotFoundError:
            same = False
        if not same:
            raise BandersnakeError(f"{raw}: no complete staged copy in {staged_dir}")
        mapping[str(raw)] = mapping[os.path.abspath(raw)] = str(copy)
    old = dict(_REDIRECT)
    _REDIRECT.update(mapping)
    log.info("reading %d raw frames from the staged copies in %s", len(frames or ()), staged_dir)
    try:
        yield
    finally:
        _REDIRECT.clear()
        _REDIRECT.update(old)


def frames_to_stage(table):
    """Raw paths a night's heavy jobs read: every accepted bias, dark, flat and science frame.

    Parameters
    ----------
    table : astropy.table.Table
        The night's inventory (:func:`bandersnake.inventory.read_inventory`).

    Returns
    -------
    list of str
    """
    keep = [bool(ok) and str(t) in ("bias", "dark", "flat", "science")
            for ok, t in zip(table["accepted"], table["type"])]
    return [str(p) for p, k in zip(table["path"], keep) if k]
