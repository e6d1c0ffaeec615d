"""profiles/slurm on a real single-node SLURM cluster (slurmctld + slurmd + slurmdbd/MariaDB).

The cluster is started by ../shared/tools/slurm/start_slurm.sh (installs the Debian packages on a
fresh machine, ~20 s when they are present) and always stopped by stop_slurm.sh, whatever
happened. The same tiny night is built locally and through `snakemake --profile profiles/slurm`;
the products must be equal.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_snakemake, snakemake_cmd
import _nights

SLURM_TOOLS = ROOT.parent / "shared" / "tools" / "slurm"
NIGHT = f"{_nights.INSTRUMENT}_20251215"
# The CI cluster's partition and account (created by start_slurm.sh); a user's come from
# BANDERSNAKE_SLURM_PARTITION / BANDERSNAKE_SLURM_ACCOUNT in the same way.
CI_PARTITION, CI_ACCOUNT = "debug", "ciacct"
SLURM_CONF_FILES = [Path("/etc/slurm/slurm.conf"), Path("/etc/slurm/slurmdbd.conf")]

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _run(cmd, timeout, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster for the module; stopped in `finally` even if start fails."""
    if not (SLURM_TOOLS / "start_slurm.sh").exists():
        pytest.skip(f"SLURM CI scripts not available at {SLURM_TOOLS}")
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root")
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        pytest.skip("no slurm-wlm and no apt-get to install it")
    pytest.importorskip("snakemake_executor_plugin_slurm")
    run_dir = tmp_path_factory.mktemp("slurm-ci")
    env = dict(os.environ, SLURM_CI_DIR=str(run_dir), SLURM_CI_PARTITION=CI_PARTITION,
               SLURM_CI_ACCOUNT=CI_ACCOUNT)
    saved_conf = {p: (p.read_bytes(), p.stat()) if p.exists() else None for p in SLURM_CONF_FILES}
    try:
        # A cold start with package installation takes minutes; with packages present ~20 s.
        start = _run(["bash", str(SLURM_TOOLS / "start_slurm.sh")], timeout=900, env=env)
        if start.returncode != 0:
            pytest.fail(f"start_slurm.sh failed:\n{start.stdout[-3000:]}\n{start.stderr[-3000:]}")
        yield env
    finally:
        stop = _run(["bash", str(SLURM_TOOLS / "stop_slurm.sh")], timeout=300, env=env)
        print(stop.stdout[-2000:], stop.stderr[-2000:], file=sys.stderr)
        _restore(saved_conf)


def _restore(saved_conf):
    """Put /etc/slurm back as it was. A slurm.conf left naming a controller that is no longer
    running costs every later `snakemake` process ~9 s: the SLURM executor plugin runs
    `scontrol show config` when it is loaded, which retries the dead controller."""
    for path, saved in saved_conf.items():
        if saved is None:
            path.unlink(missing_ok=True)
        elif not path.exists() or path.read_bytes() != saved[0]:
            content, stat = saved
            path.write_bytes(content)
            os.chown(path, stat.st_uid, stat.st_gid)
            os.chmod(path, stat.st_mode)


def _night(run_dir):
    run_dir.mkdir()
    _nights.write_night(run_dir / "raw")
    return _nights.write_config(run_dir)


def test_profile_sizes_every_rule():
    """Every rule of the workflow has a runtime and memory limit in the SLURM profile."""
    import yaml

    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    rules = set()
    for smk in (ROOT / "rules").glob("*.smk"):
        for line in smk.read_text().splitlines():
            if line.startswith(("rule ", "checkpoint ")):
                rules.add(line.split()[1].rstrip(":"))
    local_only = {"simulate_demo", "stage_raw"}
    missing = sorted(r for r in rules - local_only if r not in profile["set-resources"])
    assert not missing, f"rules without SLURM limits in profiles/slurm: {missing}"
    for rule, res in profile["set-resources"].items():
        assert res["runtime"] > 0 and res["mem_mb"] > 0, rule


def test_slurm_run_equals_local_run(slurm_cluster, tmp_path):
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    cfg = _night(local_dir)
    _night(slurm_dir)
    targets = _nights.night_targets(ROOT, NIGHT)
    run_snakemake(local_dir, targets, config=cfg)

    env = dict(slurm_cluster, PYTHONPATH=str(ROOT / "workflow"),
               BANDERSNAKE_SLURM_PARTITION=CI_PARTITION, BANDERSNAKE_SLURM_ACCOUNT=CI_ACCOUNT)
    cmd = (["timeout", "-k", "20", "900"] + snakemake_cmd()
           + ["-s", str(ROOT / "Snakefile"), "--profile", str(ROOT / "profiles" / "slurm"),
              # a 1-node CI cluster answers at once: poll after 2 s, not 40 s
              "--slurm-init-seconds-before-status-checks", "2", "--max-status-checks-per-second", "2",
              "--jobs", "4", "--config"] + [f"{k}={v}" for k, v in cfg.items()] + ["--"] + targets)
    # `timeout -k`: with accounting broken the plugin waits forever and ignores SIGTERM.
    proc = _run(cmd, timeout=960, cwd=slurm_dir, env=env)
    assert proc.returncode == 0, f"slurm run failed ({proc.returncode}):\n{proc.stderr[-6000:]}"

    # Every job of the workflow went through sbatch and is in the accounting DB.
    jobs = _run(["sacct", "-n", "-X", "-P", "-o", "JobName,State,Partition,Account", "-S", "now-1hour"],
                timeout=60).stdout.split()
    ours = [j.split("|") for j in jobs if "|" in j]
    assert any(state == "COMPLETED" and part == CI_PARTITION and acct == CI_ACCOUNT
               for _, state, part, acct in ours), f"no completed job in sacct: {ours}"
    # The profile's `groups:` (issue 22): the inventory checkpoint, then every other job of the
    # night in one group job -- two submissions, however many jobs the night has.
    submitted = proc.stderr.count("has been submitted with SLURM jobid")
    finished = proc.stderr.count("Finished jobid")
    assert submitted == 2 and finished > submitted, (
        f"{submitted} sbatch submissions for {finished} jobs:\n{proc.stderr[-3000:]}")

    compared = _nights.assert_same_products(local_dir, slurm_dir, targets)
    assert any(p.endswith("inventory.ecsv") for p in compared)
