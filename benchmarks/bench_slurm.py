"""A simulated night through ``--profile profiles/slurm`` on a running SLURM cluster (issue 22).

Prints the number of sbatch submissions, each submission's queue wait and run time (from
``sacct``), the night's wall time (the controlling ``snakemake`` process), then the same after one
raw science frame is replaced (what reruns, in how many submissions). ``--ungrouped`` repeats the
night with the same profile minus its ``groups:`` (one submission per job) for comparison.

Needs a cluster that answers ``sinfo`` and ``sacct`` (on this machine: ``start_slurm.sh`` from
``../shared/tools/slurm``, as root; stop it with ``stop_slurm.sh``). The raw night is simulated as
by ``bench_night.py`` (same options), or taken from a folder ``bench_night.py --dir D --keep``
left (``--night-from D``: hard links, D is not changed). The project is a fresh copy of the tree
with its numba code compiled first (``make warm``), as a user's installation would be::

    .venv/bin/python benchmarks/bench_slurm.py --night-from /tmp/bn --dir /tmp/bs --ungrouped
    .venv/bin/python benchmarks/bench_slurm.py --science 40 --dir /tmp/bs-small

``snakemake`` runs under ``timeout -k``: without working accounting the SLURM plugin waits forever
and ignores SIGTERM.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_night as bn  # noqa: E402  (simulation, project copy, job times)

SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
FINISHED = re.compile(r"Finished jobid: \S+ \(Rule: (\w+)\)")


def link_night(src, base):
    """Raw night (hard links: a replaced frame is unlinked first, so ``src`` never changes) and
    the instrument, night and target files of a ``bench_night.py --keep`` folder."""
    if not (base / "raw").exists():
        subprocess.run(["cp", "-al", str(src / "raw"), str(base / "raw")], check=True)
    for sub in ("instruments", "nights"):
        shutil.copytree(src / sub, base / sub, dirs_exist_ok=True)
    (base / "truth").mkdir(exist_ok=True)
    for name in ("targets.yaml", "truth.yaml"):
        shutil.copy2(src / "truth" / name, base / "truth" / name)


def ungrouped_profile(profile_dir, dest):
    """The profile without its ``groups:`` block (one sbatch per job), written to ``dest``."""
    text = (profile_dir / "config.yaml").read_text()
    out, skipping = [], False
    for line in text.splitlines():
        if line.startswith("groups:"):
            skipping = True
            continue
        if skipping and (line.startswith(" ") or not line.strip()):
            continue
        skipping = False
        out.append(line)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text("\n".join(out) + "\n")
    return dest


def sacct_rows(job_ids):
    """``{jobid: {...}}`` from sacct: submit/start/end (epoch s), state, CPUs, memory, comment."""
    if not job_ids:
        return {}
    fmt = "JobID,State,Submit,Start,End,AllocCPUS,ReqMem,Timelimit,Comment%200"
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", fmt],
                         capture_output=True, text=True, timeout=60).stdout
    rows = {}
    for line in out.splitlines():
        jid, state, submit, start, end, cpus, mem, limit, comment = line.split("|", 8)

        def epoch(s):
            try:
                return datetime.fromisoformat(s).timestamp()
            except ValueError:
                return float("nan")

        rows[jid] = {"state": state, "submit": epoch(submit), "start": epoch(start), "end": epoch(end),
                     "cpus": cpus, "mem": mem, "limit": limit, "comment": comment}
    return rows


def run_night(label, cmd, cwd, env, log, timeout):
    """One ``snakemake`` run through SLURM; prints and returns its figures."""
    t0_epoch, t0 = time.time(), time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(["timeout", "-k", "30", str(timeout)] + cmd, cwd=cwd, env=env,
                              stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    text = Path(log).read_text()
    if proc.returncode:
        why = ", timed out" if proc.returncode == 124 else ""
        sys.exit(f"{label}: snakemake failed (exit {proc.returncode}{why}); "
                 f"see {log}")
    subs = SUBMITTED.findall(text)
    rows = sacct_rows([jid for _, jid, _ in subs])
    # Snakemake's metadata keeps the first run's start time for jobs run remotely: count from the log.
    jobs = FINISHED.findall(text)
    print(f"\n== {label}: {wall:.1f} s wall (snakemake process), {len(subs)} sbatch submissions, "
          f"{len(jobs)} Snakemake jobs ({', '.join(sorted(jobs))})")
    print(f"   {'submission':58s} {'submit':>7s} {'start':>7s} {'end':>7s}  {'queued':>6s} {'ran':>6s}  CPUs mem")
    ran = 0.0
    for _, jid, logpath in subs:
        r = rows.get(jid)
        name = Path(logpath).parent.name if "group_" in logpath else Path(logpath).parts[-3]
        name = name if len(name) <= 58 else name[:55] + "..."
        if r is None:
            print(f"   {name:58s} (not in sacct)")
            continue
        ran += r["end"] - r["start"]
        print(f"   {name:58s} {r['submit'] - t0_epoch:7.1f} {r['start'] - t0_epoch:7.1f} "
              f"{r['end'] - t0_epoch:7.1f}  {r['start'] - r['submit']:6.1f} {r['end'] - r['start']:6.1f}  "
              f"{r['cpus']:>4s} {r['mem']} {r['state']}")
    print(f"   time inside SLURM jobs {ran:.1f} s; the rest of the wall time ({wall - ran:.1f} s) is "
          f"snakemake start-up, DAG, queueing and waiting for status polls")
    return {"wall": wall, "submissions": len(subs), "jobs": len(jobs), "in_jobs": ran}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="working folder (default: a temporary one, deleted)")
    ap.add_argument("--night-from", type=Path, default=None,
                    help="a `bench_night.py --dir D --keep` folder whose raw night to use (hard links)")
    ap.add_argument("--science", type=int, default=300)
    ap.add_argument("--bias", type=int, default=21)
    ap.add_argument("--dark", type=int, default=20)
    ap.add_argument("--flats", type=int, default=10)
    ap.add_argument("--shape", type=int, default=1024)
    ap.add_argument("--exptime", type=float, default=30.0)
    ap.add_argument("--partition", default=os.environ.get("BANDERSNAKE_SLURM_PARTITION", "debug"))
    ap.add_argument("--account", default=os.environ.get("BANDERSNAKE_SLURM_ACCOUNT", "ciacct"))
    ap.add_argument("--timeout", type=int, default=1800, help="seconds before snakemake is killed")
    ap.add_argument("--reuse-project", action="store_true", help="keep an earlier run's compiled copy in --dir")
    ap.add_argument("--ungrouped", action="store_true",
                    help="also run the night with the profile minus `groups:` (one submission per job)")
    ap.add_argument("--no-rerun", action="store_true", help="skip the rerun after replacing one frame")
    ap.add_argument("smk_args", nargs="*", help="extra snakemake options (after --), e.g. "
                    "--slurm-init-seconds-before-status-checks 40")
    args = ap.parse_args(argv)

    if subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode != 0:
        sys.exit("no SLURM cluster answers `sinfo`: start one (../shared/tools/slurm/start_slurm.sh, as root)")
    base = (args.dir or Path(tempfile.mkdtemp(prefix="bench_slurm_"))).resolve()
    base.mkdir(parents=True, exist_ok=True)
    print(f"working folder {base}; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    if args.night_from:
        link_night(args.night_from.resolve(), base)
    else:
        bn.write_configs(base, args.shape)
        bn.simulate(base / "raw", base / "truth", args)
        bn.night_settings(base)

    proj, home = base / "project", base / "home"
    if not (args.reuse_project and (proj / "Snakefile").exists()):
        shutil.rmtree(proj, ignore_errors=True)
        bn.fresh_copy(proj)
        env = bn.clean_env(home)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bandersnake.warmup", "--cores", "2"], cwd=proj, check=True,
                       env=dict(env, PYTHONPATH=str(proj / "workflow")), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        print(f"set-up: numba compiled into the copy in {time.perf_counter() - t:.0f} s")
    else:
        bn.fresh_copy(proj)  # same files keep their time stamps: compiled code stays valid
    env = dict(bn.clean_env(home), BANDERSNAKE_SLURM_PARTITION=args.partition,
               BANDERSNAKE_SLURM_ACCOUNT=args.account)
    config = [f"raw_root={base / 'raw'}", f"instruments_dir={base / 'instruments'}",
              f"nights_dir={base / 'nights'}", f"targets_file={base / 'truth' / 'targets.yaml'}",
              f"nights=['{bn.NIGHT}']"]
    profile = proj / "profiles" / "slurm"
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    print(f"profile {profile}: slurm-init-seconds-before-status-checks "
          f"{settings.get('slurm-init-seconds-before-status-checks')}, cores {env.get('BANDERSNAKE_SLURM_CPUS', 2)}; "
          f"extra options {args.smk_args or 'none'}")

    def command(profile_dir, run_dir):
        return ([str(Path(sys.executable).parent / "snakemake"), "-s", str(proj / "Snakefile"), "-d", str(run_dir),
                 "--profile", str(profile_dir), *args.smk_args, "--config", *config, "--", f"results/{bn.NIGHT}"])

    results = {}
    runs = [("grouped", profile, base / "run")]
    if args.ungrouped:
        runs.append(("ungrouped", ungrouped_profile(profile, base / "profile_ungrouped"), base / "run_ungrouped"))
    for label, prof, run_dir in runs:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        results[label] = run_night(f"night, {label} (load {os.getloadavg()[0]:.2f})", command(prof, run_dir),
                                   proj, env, base / f"{label}.log", args.timeout)
    if not args.no_rerun:
        name = bn.replace_one_frame(base / "raw" / "SPIRIT2" / "images" / bn.NIGHT_DATE)
        results["rerun"] = run_night(f"rerun after replacing {name}, grouped (load {os.getloadavg()[0]:.2f})",
                                     command(profile, base / "run"), proj, env, base / "rerun.log",
                                     args.timeout)
    print("\nsummary: " + ", ".join(f"{k} {v['wall']:.1f} s wall, {v['submissions']} submissions, {v['jobs']} jobs"
                                    for k, v in results.items()))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
