"""Per-file inventory records kept between runs, so a rerun reads only the files that changed.

Replacing one raw frame of a 361-frame night used to re-open, re-hash and re-check all 361
files (about 1.4 s of the inventory job, more from a NAS). The records that
:func:`bandersnake.ingest.inventory.frame_record` made are kept beside the inventory, in
``inventory_records.json`` (not a product: the inventory is), each under the file's identity:

* path, size (bytes), modification time (ns), status-change time (ns) and inode. Rewriting,
  replacing, renaming, ``touch`` or ``cp -p`` over a file all change at least the status-change
  time, which no user tool can set, so a changed file is never taken for the one recorded;
* the settings a record depends on: the instrument configuration, the expected shape, whether
  pixels were checked, and :data:`RECORD_VERSION` (raised when the record's logic changes).

Only the per-file records are kept; everything that depends on the night as a whole
(duplicates, the common shape, discarded first frames, dusk/dawn sessions) is recomputed on
every run. A missing, unreadable or stale cache is simply rebuilt.
"""

import json
import logging
import os

from .. import __version__
from ..fitsio import write_text
from ..params import content_digest

log = logging.getLogger(__name__)

#: Raised whenever :func:`~bandersnake.ingest.inventory.frame_record` changes what it records.
RECORD_VERSION = 1


def file_identity(path):
    """``"size:mtime_ns:ctime_ns:inode"`` of ``path``, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def settings_digest(instrument, expected_shape, check_pixels):
    """Digest of everything besides the file itself that a record depends on."""
    return content_digest([RECORD_VERSION, __version__, instrument,
                           list(expected_shape) if expected_shape is not None else None, bool(check_pixels)])


def load_records(path, settings):
    """Records kept by :func:`save_records` with the same ``settings``: ``{raw path: (identity, row)}``.

    Returns an empty dict when there is no cache, it cannot be read, or it was made with other
    settings.
    """
    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path) as fh:
            data = json.load(fh)
        if data.get("settings") != settings:
            log.info("inventory: kept records made with other settings, every file is read")
            return {}
        return {p: (entry["identity"], entry["row"]) for p, entry in data["records"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.info("inventory: kept records unreadable (%s), every file is read", err)
        return {}


def save_records(path, settings, records):
    """Write ``{raw path: (identity, row)}`` atomically (rows: JSON-serialisable dicts)."""
    if path is None:
        return
    data = {"settings": settings,
            "records": {p: {"identity": ident, "row": row} for p, (ident, row) in records.items()
                        if ident is not None}}
    write_text(json.dumps(data, default=_plain), path)


def _plain(value):
    # numpy scalars in rows (from header values) -> Python numbers.
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
