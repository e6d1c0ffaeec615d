"""Shared set-up: the package on the path, work-tree path helpers and wildcard constraints; then
the configuration and night discovery (rules/common/). Input functions of a stage are in
rules/common/<stage>.smk."""

import os
import sys
from functools import lru_cache
from pathlib import Path


def cancel_scheduler_timers():
    """Cancel the pending re-evaluation timers of Snakemake's job scheduler (threading.Timer,
    non-daemon, created after each scheduling round): called when the workflow has ended, so
    the process exits at once instead of waiting up to the rate limiter's timespan (1 s).
    """
    import threading

    for thread in threading.enumerate():
        function = getattr(thread, "function", None)
        if isinstance(thread, threading.Timer) and "JobScheduler" in getattr(
            function, "__qualname__", ""
        ):
            thread.cancel()


# Jobs import the package from the source tree, also on cluster nodes and in conda envs.
PACKAGE_DIR = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, PACKAGE_DIR)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (PACKAGE_DIR, os.environ.get("PYTHONPATH", "")) if p
    )
)

from bandersnake import config as bconfig
from bandersnake import preflight
from bandersnake.errors import ConfigError
from bandersnake.params import Digested, DigestedList
from bandersnake.ingest.inventory import (
    dark_plan,
    exposure_times,
    exptime_tag,
    list_files,
    list_files_exptime,
    raw_files,
    raw_fingerprint,
    read_inventory,
    sanitize_name,
)


def _shipped(key):
    """A relative config path missing from the working directory is taken from the workflow's own
    directory, so runs from another directory (``snakemake -d``) still find the shipped files.
    """
    path = Path(config[key])
    if not path.is_absolute() and not path.exists():
        shipped = Path(workflow.basedir) / path
        if shipped.exists():
            config[key] = str(shipped)


def _stop(problems):
    """Stop before any job runs: the problems, one line each, no traceback."""
    sys.exit(preflight.format_problems(problems))


# --config reads a nested key's value as a string ('processing={"fork_server": false}' gives
# "false"): such strings become the booleans and numbers the schemas ask for.
bconfig.coerce_command_line_scalars(config, "config.schema.yaml")
if isinstance(config.get("night_defaults"), dict):
    bconfig.coerce_command_line_scalars(config["night_defaults"], "night.schema.yaml")
# Checked before anything else: one line per problem naming the file and the key (a schema
# error from snakemake's validate() prints the whole schema).
_problems = preflight.schema_problems(
    config, "config.schema.yaml", "config (config.yaml and --config)"
)
if _problems:
    _stop(_problems)
bconfig.validate(config, "config.schema.yaml", "config")  # fills in the defaults

for _key in ("instruments_dir", "nights_dir", "targets_file", "master_flats_file"):
    _shipped(_key)

WORK = config["work_dir"].rstrip("/")
RESULTS = config["results_dir"].rstrip("/")
NIGHT_RE = r"[A-Za-z0-9-]+_[0-9]{8}"
NAME_RE = r"[A-Za-z0-9+._-]+"


wildcard_constraints:
    night=NIGHT_RE,
    exptime=r"[0-9]+(\.[0-9]+)?",
    target=NAME_RE,
    filter=NAME_RE,
    aper=r"[0-9]+",


def work(path):
    """Path in the work tree, where every product is built and can be requested."""
    return f"{WORK}/{path}"


def logs(path):
    """Log file of a job, kept in the night's work tree and published with it."""
    return f"{WORK}/{path}"


def bench(path):
    """Benchmark (runtime, memory) file of a heavy job."""
    return f"{WORK}/{path}"


include: "common/preflight.smk"
include: "common/configuration.smk"
include: "common/nights.smk"
include: "common/calibration.smk"
include: "common/placement.smk"
include: "common/photometry.smk"
include: "common/calibrated.smk"
include: "common/analysis.smk"
include: "common/transit.smk"
include: "common/stack.smk"
include: "common/templates.smk"
