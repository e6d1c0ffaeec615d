"""Batch runs over many nights: one Snakemake run, a per-night status table after every batch.

``bandersnake-batch`` wraps ``snakemake``: it runs every night (listed with ``--nights`` or
discovered in the raw tree) with ``--keep-going --rerun-incomplete``, streams Snakemake's output,
and writes ``results/batch_status.tsv`` whatever happened (success, failed jobs, Ctrl-C/SIGTERM):
one row per night with its status, the first failing rule and that job's log. A batch killed
with SIGKILL leaves Snakemake's lock behind; the next batch sees that the recorded batch
process is gone, unlocks and resumes (``--rerun-incomplete`` redoes the interrupted jobs).

Statuses: ``success`` (published), ``warning`` (published, but the data of a target made its
light-curve analysis impossible: ``note`` names the target and why, ``log`` is that job's log;
the calibrations, centroids and photometry are published as usual), ``failed`` (a job of the
night failed: ``rule``, ``log``),
``interrupted`` (the batch stopped before the night was done), ``not built`` (no job failed
but the night was not published, e.g. the DAG could not be built: see ``note``), and for
``--dry-run`` ``up to date`` or ``pending`` (``rule`` lists the jobs that would run).
"""

import argparse
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .config import discover_nights, instrument_layout, instrument_names, load_yaml
from .errors import BandersnakeError
from .fitsio import write_text

log = logging.getLogger(__name__)

NIGHT_RE = re.compile(r"(?<![A-Za-z0-9-])([A-Za-z0-9-]+_[0-9]{8})(?![0-9])")
WORKFLOW_DIR = Path(__file__).resolve().parents[2]
STATUS_COLUMNS = ("night", "status", "rule", "log", "note")
PID_FILE = Path(".snakemake") / "bandersnake-batch.pid"


# ------------------------------------------------------------------ reading Snakemake's output
def _night_of(text):
    match = NIGHT_RE.search(text or "")
    return match.group(1) if match else ""


def parse_errors(text):
    """Failed jobs in Snakemake's output: one dict per ``Error in rule <rule>:`` block.

    Parameters
    ----------
    text : str
        Snakemake's stderr (or its ``.snakemake/log/*.log``).

    Returns
    -------
    list of dict
        ``rule``, ``night`` (from ``wildcards: night=``, else the log or output path),
        ``log`` (the job's log file, or ``''``), ``message``.
    """
    errors = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\s*Error in rule ([A-Za-z0-9_]+):", line)
        if not match:
            continue
        fields = {}
        for body in lines[i + 1:i + 40]:
            m = re.match(r"\s{4}([a-z-]+): (.*)", body)
            if not m:
                if body.strip() and not body.startswith(" "):
                    break
                continue
            fields.setdefault(m.group(1), m.group(2))
        log_path = fields.get("log", "").split(" (check log", 1)[0].strip()
        night = ""
        wildcards = fields.get("wildcards", "")
        m = re.search(r"\bnight=([^,\s]+)", wildcards)
        if m:
            night = m.group(1)
        night = night or _night_of(log_path) or _night_of(fields.get("output", ""))
        errors.append(dict(rule=match.group(1), night=night, log=log_path,
                           message=fields.get("message", "")))
    return errors


def parse_planned_jobs(text):
    """``{night: [rule, ...]}`` of the jobs a dry run lists (``rule``/``localrule`` blocks)."""
    planned = {}
    rule = None
    for line in text.splitlines():
        m = re.match(r"(?:local)?(?:rule|checkpoint) ([A-Za-z0-9_]+):\s*$", line.strip())
        if m:
            rule = m.group(1)
            continue
        if rule and line.strip().startswith(("wildcards:", "output:")):
            night = _night_of(line)
            if night:
                rules = planned.setdefault(night, [])
                if rule not in rules:
                    rules.append(rule)
                rule = None
    return planned


# ------------------------------------------------------------------ the status table
def analysis_failures(paths):
    """Targets of published nights whose light-curve analysis was not possible.

    Parameters
    ----------
    paths : list of Path
        A night's targets; directories (``results/<night>``) are searched for
        ``<target>/photometry/differential.fits`` marked ``ANASTAT = 'FAILED'``.

    Returns
    -------
    list of dict
        ``target``, ``reason``, ``log`` (the differential job's published log, or ``''``).
    """
    from astropy.io import fits

    out = []
    for root in paths:
        if not Path(root).is_dir():
            continue
        for product in sorted(Path(root).glob("*/photometry/differential.fits")):
            try:
                header = fits.getheader(product, 0)
            except Exception as err:  # a status table must be written whatever the products hold
                log.warning("%s: unreadable (%s)", product, err)
                continue
            if str(header.get("ANASTAT", "")).strip().upper() != "FAILED":
                continue
            target = product.parent.parent.name
            job_log = Path(root) / "logs" / f"differential_{target}.log"
            out.append(dict(target=target, reason=str(header.get("ANAWHY", "")),
                            log=str(job_log) if job_log.exists() else ""))
    return out


def night_status(nights, errors, targets, started, returncode, interrupted, dry_run=False,
                 planned=None, note=""):
    """One status row per night (see the module docstring for the statuses).

    Parameters
    ----------
    nights : list of str
    errors : list of dict
        From :func:`parse_errors`.
    targets : callable
        ``targets(night)`` -> the night's target paths (``results/<night>`` by default).
    started : float
        Batch start (epoch seconds): after an interruption, only targets written since count.
    returncode : int
        Snakemake's exit status.
    interrupted : bool
        The batch was stopped by a signal.
    dry_run : bool
    planned : dict, optional
        From :func:`parse_planned_jobs` (dry runs).
    note : str
        Batch-level problem recorded for nights with no better explanation.

    Returns
    -------
    list of dict
        Keys :data:`STATUS_COLUMNS`.
    """
    rows = []
    first_error = {}
    for err in errors:
        first_error.setdefault(err["night"], err)
    for night in nights:
        row = dict(night=night, status="", rule="", log="", note="")
        paths = [Path(t) for t in targets(night)]
        built = all(p.exists() for p in paths)
        if dry_run:
            rules = (planned or {}).get(night, [])
            row["status"] = "pending" if rules else "up to date"
            row["rule"] = ",".join(rules)
        elif night in first_error:
            err = first_error[night]
            row.update(status="failed", rule=err["rule"], log=err["log"],
                       note=f"{sum(e['night'] == night for e in errors)} failed job(s)")
        elif returncode == 0 and not interrupted:
            row["status"] = "success"
        elif built and (not interrupted or min(p.stat().st_mtime for p in paths) >= started):
            # keep-going ran every job of a night no failure blocked.
            row["status"] = "success"
        elif interrupted:
            row["status"] = "interrupted"
            row["note"] = "rerun the same command to resume"
        else:
            row["status"] = "not built"
            row["note"] = note or "no job of this night failed; see the Snakemake log"
        if row["status"] == "success":
            failures = analysis_failures(paths)
            if failures:
                row.update(status="warning", rule="differential", log=failures[0]["log"],
                           note="; ".join(f"{f['target']}: analysis not possible: {f['reason']}" for f in failures))
        rows.append(row)
    return rows


def format_status(rows):
    """TSV text of the status rows (header line first)."""
    clean = lambda v: str(v).replace("\t", " ").replace("\n", " ")  # noqa: E731
    lines = ["\t".join(STATUS_COLUMNS)]
    lines += ["\t".join(clean(r[c]) for c in STATUS_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def read_status(path):
    """Rows of a status table written by :func:`format_status`."""
    text = Path(path).read_text().splitlines()
    header = text[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in text[1:] if line]


# ------------------------------------------------------------------ configuration and nights
def _config_overrides(snakemake_args):
    """``--config k=v`` items and ``--configfile`` paths among the arguments passed to Snakemake."""
    items, files, mode = {}, [], None
    for arg in snakemake_args:
        if arg in ("--config", "-C"):
            mode = "config"
        elif arg == "--configfile" or arg == "--configfiles":
            mode = "file"
        elif arg.startswith("-"):
            mode = None
        elif mode == "config" and "=" in arg:
            key, value = arg.split("=", 1)
            items[key] = yaml.safe_load(value)
        elif mode == "file":
            files.append(arg)
    return items, files


def workflow_config(snakemake_args=(), workflow_dir=WORKFLOW_DIR):
    """The config Snakemake will see: config/config.yaml, ``--configfile`` files, ``--config`` items."""
    config = load_yaml(Path(workflow_dir) / "config" / "config.yaml")
    items, files = _config_overrides(snakemake_args)
    for f in files:
        config.update(load_yaml(f))
    config.update(items)
    return config


def batch_nights(config, workflow_dir=WORKFLOW_DIR):
    """Nights a batch covers: ``config['nights']``, else every night found in the raw tree."""
    if config.get("nights"):
        return list(config["nights"])
    instruments = config.get("instruments") or instrument_names(_instruments_dir(config, workflow_dir))
    layout = config.get("raw_layout", "{raw_root}/{inst}/images/{date}")
    inst_dir = _instruments_dir(config, workflow_dir)
    # Instruments may carry their own layout (ASTEP's date folders).
    layouts = {inst: instrument_layout(load_yaml(inst_dir / f"{inst}.yaml"), layout)
               for inst in instruments if (inst_dir / f"{inst}.yaml").exists()}
    return discover_nights(layout, config["raw_root"], instruments, layouts=layouts)


def _instruments_dir(config, workflow_dir):
    path = Path(config.get("instruments_dir", "config/instruments"))
    return path if path.is_absolute() or path.exists() else Path(workflow_dir) / path


# ------------------------------------------------------------------ stale lock of a killed batch
def _alive(pid):
    """True if ``pid`` runs; a killed process not yet reaped by its new parent (zombie) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def claim_directory(snakemake_base):
    """Unlock the directory if the previous batch was killed (its processes are gone).

    The PID file holds ``<batch pid> <snakemake pid>``, written by :func:`record_pids`.

    Raises
    ------
    BandersnakeError
        When another batch (or the Snakemake it started) is still running in this directory.
    """
    if not PID_FILE.exists():
        return
    try:
        pids = [int(p) for p in PID_FILE.read_text().split()]
    except ValueError:
        pids = []
    running = [p for p in pids if p != os.getpid() and _alive(p)]
    if running:
        raise BandersnakeError(f"another bandersnake-batch (pids {running}) is running in {os.getcwd()}")
    log.warning("previous batch (pids %s) did not finish: unlocking the directory and resuming", pids)
    subprocess.run(snakemake_base + ["--unlock"], capture_output=True, text=True)


def record_pids(snakemake_pid):
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    write_text(f"{os.getpid()} {snakemake_pid}\n", PID_FILE)


def release_directory():
    try:
        if int(PID_FILE.read_text().split()[0]) == os.getpid():  # not a newer batch's file
            PID_FILE.unlink()
    except (FileNotFoundError, ValueError, IndexError):
        pass


# ------------------------------------------------------------------ running a batch
def run_batch(snakemake_args=(), nights=None, dry_run=False, status_path=None, snakefile=None,
              targets=None, echo=sys.stderr):
    """Run Snakemake on the batch's nights and write the status table.

    Parameters
    ----------
    snakemake_args : sequence of str
        Passed to Snakemake (``--cores 16``, ``--profile profiles/slurm``, ``--config ...``).
    nights : list of str, optional
        Nights to build; default: ``nights`` in the config, else every night in the raw tree.
    dry_run : bool
        Only list what would run (``pending`` / ``up to date`` per night).
    status_path : str or Path, optional
        Default ``<results_dir>/batch_status.tsv``.
    snakefile : str or Path, optional
        Default: the workflow's ``Snakefile``.
    targets : list of str, optional
        Per-night target templates with ``{night}``, ``{results}`` and ``{work}``; default
        ``["{results}/{night}"]`` (the published night). E.g. ``work/{night}/calib/master_bias.fits``
        to batch one stage.
    echo : file, optional
        Where Snakemake's output is streamed (``None``: silent).

    Returns
    -------
    returncode : int
        Snakemake's exit status (130 / 143 when interrupted).
    rows : list of dict
    """
    snakefile = Path(snakefile or WORKFLOW_DIR / "Snakefile")
    config = workflow_config(snakemake_args, snakefile.parent)
    nights = list(nights) if nights else batch_nights(config, snakefile.parent)
    results_dir = config.get("results_dir", "results")
    status_path = Path(status_path or Path(results_dir) / "batch_status.tsv")
    base = [sys.executable, "-m", "snakemake", "-s", str(snakefile)]
    cmd = base + ["--keep-going", "--rerun-incomplete"] + list(snakemake_args)
    if dry_run:
        cmd += ["--dry-run"]
    templates = list(targets or ["{results}/{night}"])
    work_dir = config.get("work_dir", "work")

    def night_targets(night):
        return [t.format(night=night, results=results_dir, work=work_dir) for t in templates]

    cmd += ["--"] + [t for n in nights for t in night_targets(n)]
    if not nights:
        raise BandersnakeError("no nights to run: none listed and none found in the raw tree")
    if not dry_run:
        claim_directory(base + list(snakemake_args))
    started = time.time()
    interrupted = []
    # Own session: a terminal's Ctrl-C reaches Snakemake once, through forward() below.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if not dry_run:
        record_pids(proc.pid)

    def forward(signum, _frame):
        # Snakemake cancels its jobs (scancel on SLURM) on SIGINT/SIGTERM; the table follows.
        interrupted.append(signum)
        proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if echo is not None:
                echo.write(line)
        returncode = proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    text = "".join(output)
    note = ""
    if returncode:
        # The last error line explains nights no failed job accounts for (e.g. a DAG error).
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errs = [ln for ln in lines if re.search(r"(Error|Exception)\b", ln)]
        note = (errs or lines or [""])[-1][:300]
    rows = night_status(nights, parse_errors(text), night_targets, started, returncode,
                        bool(interrupted), dry_run=dry_run,
                        planned=parse_planned_jobs(text) if dry_run else None, note=note)
    write_text(format_status(rows), status_path)
    if not dry_run:
        release_directory()
    if echo is not None:
        counts = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        echo.write(f"bandersnake-batch: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; "
                   f"status table {status_path}\n")
    if interrupted and not returncode:
        returncode = 128 + interrupted[0]
    return returncode, rows


def main(argv=None):
    """``bandersnake-batch [--nights N ...] [--dry-run] [--status PATH] [snakemake args ...]``."""
    parser = argparse.ArgumentParser(
        prog="bandersnake-batch",
        description="Run every night (keep going past failures) and write a per-night status table. "
                    "Unknown arguments go to snakemake, e.g. --cores 16, --profile profiles/slurm, "
                    "--config raw_root=/nas/Observations. Rerun the same command to resume.")
    parser.add_argument("--nights", nargs="+", help="nights <INST>_<YYYYMMDD> (default: config/raw tree)")
    parser.add_argument("--dry-run", "-n", action="store_true", help="list what would run per night")
    parser.add_argument("--status", help="status table (default <results_dir>/batch_status.tsv)")
    parser.add_argument("--target", action="append", dest="targets",
                        help="per-night target template, repeatable (default {results}/{night}), "
                             "e.g. work/{night}/calib/master_bias.fits")
    parser.add_argument("--snakefile", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="bandersnake-batch: %(message)s")
    try:
        code, _ = run_batch(rest, nights=args.nights, dry_run=args.dry_run, status_path=args.status,
                            snakefile=args.snakefile, targets=args.targets)
    except BandersnakeError as err:
        print(f"bandersnake-batch: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
