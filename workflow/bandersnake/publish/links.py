"""Publish a night's work-tree products into ``results/<night>/`` as hard links.

Snakemake refuses outputs inside another job's ``directory()`` output, so products are built in
``work/<night>/`` and the night folder is the output of the last job, which links them in
(same layout). Hard links cost no space and no time; across file systems files are copied.
"""

import errno
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def link_or_copy(src, dst):
    """Hard-link ``src`` to ``dst``, copying when they are on different file systems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return "linked"
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst)
        return "copied"


def publish_night(products, work_night, out_dir, extra_dirs=("logs",)):
    """Link every product (files, or directories recursively) under ``out_dir``.

    Parameters
    ----------
    products : list of str
        Paths inside ``work_night``.
    work_night : str
        ``work/<night>``: paths are published relative to it.
    out_dir : str
        ``results/<night>`` (created; Snakemake removed any previous one).
    extra_dirs : tuple of str
        Sub-folders of ``work_night`` published whole (the jobs' logs).

    Returns
    -------
    int
        Number of files published.
    """
    work_night, out_dir = Path(work_night), Path(out_dir)
    sources = [Path(p) for p in products] + [work_night / d for d in extra_dirs if (work_night / d).exists()]
    count = 0
    for src in sources:
        files = sorted(f for f in src.rglob("*") if f.is_file()) if src.is_dir() else [src]
        for f in files:
            rel = f.relative_to(work_night)
            how = link_or_copy(f, out_dir / rel)
            log.debug("%s %s", how, rel)
            count += 1
    log.info("published %d files into %s", count, out_dir)
    return count
