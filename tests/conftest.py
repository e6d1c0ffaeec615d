"""Shared fixtures: paths, real data location, and a helper that runs the workflow."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ARCSAT_RAW = SHARED_DATA / "xo1b_arcsat_20250602" / "raw"
sys.path.insert(0, str(ROOT / "workflow"))


def snakemake_cmd():
    exe = Path(sys.executable).with_name("snakemake")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


def run_snakemake(workdir, targets=(), config=None, extra=(), check=True, timeout=1800):
    """Run the bandersnake workflow in ``workdir`` (cwd) and return the CompletedProcess."""
    cmd = snakemake_cmd() + ["-s", str(ROOT / "Snakefile"), "--cores", "2"]
    if config:
        cmd += ["--config"] + [f"{k}={v}" for k, v in config.items()]
    cmd += list(extra) + ["--"] + list(targets)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow"))
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture
def arcsat_raw_root(tmp_path):
    """A raw tree <root>/ARCSAT/images/20250602 linking the real ARCSAT night (read-only)."""
    if not ARCSAT_RAW.is_dir():
        pytest.skip(f"real ARCSAT night not available at {ARCSAT_RAW}")
    night_dir = tmp_path / "raw" / "ARCSAT" / "images" / "20250602"
    night_dir.parent.mkdir(parents=True)
    night_dir.symlink_to(ARCSAT_RAW)
    return tmp_path / "raw"


def tree_checksums(root):
    """sha256 and mode of every file under ``root`` (the raw tree must not change)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(path).st_mode)
    return out


def planned_jobs(snakemake_output):
    """Rule names of the jobs a Snakemake run printed (executed, or planned in a dry run)."""
    return re.findall(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):", snakemake_output, flags=re.M)
