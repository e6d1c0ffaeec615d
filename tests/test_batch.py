"""bandersnake-batch: status table, keep-going, dry run, resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bandersnake.batch import (format_status, night_status, parse_errors, parse_planned_jobs,
                               read_status, run_batch)
from conftest import ROOT
import _nights

# Snakemake 9.27's report of a failed job (copied from a run): no `wildcards:` line.
ERROR_BLOCK = """\
[Sun Nov 22 03:01:40 2026]
Error in rule inventory:
    message: None
    jobid: 3
    input: raw/TINY/images/20251216/TINY_20251216_00000_bias.fits
    output: work/TINY_20251216/calib/inventory.ecsv, work/TINY_20251216/calib/lists
    log: work/TINY_20251216/logs/inventory.log (check log file(s) for error details)
Logfile work/TINY_20251216/logs/inventory.log:
================================================================================
Error in rule master_flat:
    jobid: 9
    output: work/SPIRIT2_20251215/calib/master_flat_zYJ.fits
    log: work/SPIRIT2_20251215/logs/master_flat_zYJ.log (check log file(s) for error details)
    wildcards: night=SPIRIT2_20251215, filter=zYJ
"""

DRY_RUN = """\
rule master_bias:
    input: raw/a.fits
    output: work/TINY_20251215/calib/master_bias.fits
    jobid: 3
    wildcards: night=TINY_20251215
localrule publish_night:
    output: results/TINY_20251215
    wildcards: night=TINY_20251215
"""


def test_parse_errors_finds_rule_night_and_log():
    errors = parse_errors(ERROR_BLOCK)
    assert errors == [
        dict(rule="inventory", night="TINY_20251216", log="work/TINY_20251216/logs/inventory.log",
             message="None"),
        dict(rule="master_flat", night="SPIRIT2_20251215",
             log="work/SPIRIT2_20251215/logs/master_flat_zYJ.log", message=""),
    ]


def test_parse_planned_jobs():
    assert parse_planned_jobs(DRY_RUN) == {"TINY_20251215": ["master_bias", "publish_night"]}


def test_night_status_rows(tmp_path):
    done = tmp_path / "results" / "A_20250101"
    done.mkdir(parents=True)
    targets = lambda n: [str(tmp_path / "results" / n)]  # noqa: E731
    errors = [dict(rule="master_dark", night="B_20250102", log="work/B/logs/master_dark.log", message="")]
    rows = night_status(["A_20250101", "B_20250102", "C_20250103"], errors, targets, started=0,
                        returncode=1, interrupted=False, note="WorkflowError: x")
    assert [r["status"] for r in rows] == ["success", "failed", "not built"]
    assert rows[1]["rule"] == "master_dark" and rows[1]["log"].endswith("master_dark.log")
    assert rows[2]["note"] == "WorkflowError: x"
    # After an interruption, a night counts only if this batch wrote its targets.
    rows = night_status(["A_20250101"], [], targets, started=time.time() + 60, returncode=1,
                        interrupted=True)
    assert rows[0]["status"] == "interrupted"
    path = tmp_path / "status.tsv"
    path.write_text(format_status(rows))
    assert read_status(path) == rows


# ------------------------------------------------------------------ end to end on tiny nights
def _batch_env():
    return dict(os.environ, PYTHONPATH=str(ROOT / "workflow"))


def _batch_cmd(cfg, *extra):
    targets = [a for t in _nights.night_targets(ROOT, "{night}") for a in ("--target", t)]
    return ([sys.executable, "-m", "bandersnake.batch", "--cores", "2"] + targets + list(extra)
            + ["--config"] + [f"{k}={v}" for k, v in cfg.items()])


def _setup(run_dir, bad_night=False):
    run_dir.mkdir()
    _nights.write_night(run_dir / "raw", date="20251215")
    if bad_night:  # no science frame: its inventory fails
        _nights.write_night(run_dir / "raw", date="20251216", n_science=0, seed=1)
    return _nights.write_config(run_dir)


@pytest.mark.slow
def test_batch_keeps_going_and_reports(tmp_path):
    run_dir = tmp_path / "run"
    cfg = _setup(run_dir, bad_night=True)
    dry = subprocess.run(_batch_cmd(cfg, "--dry-run"), cwd=run_dir, env=_batch_env(),
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    rows = {r["night"]: r for r in read_status(run_dir / "results" / "batch_status.tsv")}
    assert rows["TINY_20251215"]["status"] == "pending" and "inventory" in rows["TINY_20251215"]["rule"]
    assert not (run_dir / "work").exists(), "a dry run wrote products"

    proc = subprocess.run(_batch_cmd(cfg), cwd=run_dir, env=_batch_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0
    rows = {r["night"]: r for r in read_status(run_dir / "results" / "batch_status.tsv")}
    assert rows["TINY_20251215"]["status"] == "success", rows
    bad = rows["TINY_20251216"]
    assert (bad["status"], bad["rule"]) == ("failed", "inventory"), rows
    assert "no usable science frame" in (run_dir / bad["log"]).read_text()
    for target in _nights.night_targets(ROOT, "TINY_20251215"):
        assert (run_dir / target).exists(), target


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_products(tmp_path):
    ref_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    cfg = _setup(ref_dir)
    _setup(killed_dir)
    targets = _nights.night_targets(ROOT, "TINY_20251215")
    ref = subprocess.run(_batch_cmd(cfg), cwd=ref_dir, env=_batch_env(), capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:]

    proc = subprocess.Popen(_batch_cmd(cfg), cwd=killed_dir, env=_batch_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    # Kill in the middle of a job: once the first job's log exists (it is written as the job starts).
    first_log = killed_dir / "work" / "TINY_20251215" / "logs" / "inventory.log"
    deadline = time.time() + 120
    while not first_log.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the batch finished before it could be killed"
    pids = [int(p) for p in (killed_dir / ".snakemake" / "bandersnake-batch.pid").read_text().split()]
    for pid in pids:  # the batch and Snakemake with its jobs (own process group)
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    assert list((killed_dir / ".snakemake" / "locks").iterdir()), "expected the killed run's lock"

    resumed = subprocess.run(_batch_cmd(cfg), cwd=killed_dir, env=_batch_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "did not finish: unlocking" in resumed.stderr
    rows = read_status(killed_dir / "results" / "batch_status.tsv")
    assert [r["status"] for r in rows] == ["success"]
    _nights.assert_same_products(ref_dir, killed_dir, targets)
