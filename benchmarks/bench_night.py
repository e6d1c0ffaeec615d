"""End-to-end wall time of one simulated night through `snakemake`, cold and warm (issue 22).

Builds, from scratch, in ``--dir`` (a temporary folder by default):

1. a simulated raw night (default: 300 science + 61 calibration frames of 1024x1024 -- 21 bias,
   20 dark, 10 dusk + 10 dawn flats --, 12 stars, a transit), with its truth;
2. a fresh copy of the project (the files git tracks, as in a fresh clone: no ``__pycache__``,
   so no compiled numba code), and an empty ``HOME`` (no matplotlib font cache, no astropy or
   numba user caches);
3. **set-up**: the copy's ``make warm`` step (what ``make setup`` runs after installing the
   packages: compiles the numba code into the copy's ``__pycache__``), timed apart;
4. **cold**: the night's first run (``snakemake --cores N results/<night>/``);
5. **warm**: the same night again after deleting every product (``work/``, ``results/``,
   ``.snakemake/``);
6. **rerun**: one raw science frame replaced (rewritten), then ``snakemake`` again.

For each run it prints the total wall time (the ``snakemake`` process, start-up included) and
every job's wall time, from the start and end times Snakemake records for each output
(``.snakemake/metadata``), with the summed time per rule and the critical path, and the CPU time
of all its processes. Each run starts its own fork server (``bandersnake.forkserver``) in a fresh
folder, so none of an earlier run is reused; its CPU time and its workers' (the ``forkserver:``
lines of the job logs) are counted. Usage::

    .venv/bin/python benchmarks/bench_night.py                      # 300 science frames
    .venv/bin/python benchmarks/bench_night.py --science 939 --exptime 10 --skip-cold   # 1000 frames
    .venv/bin/python benchmarks/bench_night.py --dir /tmp/bn --keep        # reuse raw night later

The project copy uses the Python environment of the interpreter running this script (its
``bin/snakemake``), as ``make setup`` would have installed it.
"""

import argparse
import base64
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

NIGHT_DATE = "20251215"
NIGHT = f"SPIRIT2_{NIGHT_DATE}"


def simulate(raw_root, truth_dir, args):
    """Simulated raw night and its truth (skipped when the truth is already there)."""
    from bandersnake.config import load_instrument
    from bandersnake.sim.night import demo_config, simulate_night

    if (Path(truth_dir) / "truth.yaml").exists():
        print(f"raw night: reusing {raw_root}")
        return
    inst_dir = Path(truth_dir).parent / "instruments"
    inst = load_instrument(inst_dir, "SPIRIT2")
    cfg = demo_config(shape=(args.shape, args.shape), n_science=args.science, n_bias=args.bias,
                      n_dark=args.dark, n_flat_dusk=args.flats, n_flat_dawn=args.flats, gzip_every=0,
                      science_exptime_s=args.exptime)
    t = time.perf_counter()
    simulate_night(raw_root, truth_dir, cfg, inst)
    print(f"raw night simulated in {time.perf_counter() - t:.1f} s")


def write_configs(base, shape):
    """Instrument (square chip), targets and night settings (star 0, transit) of the simulated night."""
    inst = yaml.safe_load((ROOT / "config" / "instruments" / "SPIRIT2.yaml").read_text())
    inst["shape"] = [shape, shape]
    (base / "instruments").mkdir(parents=True, exist_ok=True)
    (base / "instruments" / "SPIRIT2.yaml").write_text(yaml.safe_dump(inst))


def night_settings(base):
    truth = yaml.safe_load((base / "truth" / "truth.yaml").read_text())
    targets = yaml.safe_load((base / "truth" / "targets.yaml").read_text())["targets"]
    name, entries = next(iter(targets.items()))
    x, y = entries[0]["all_star_positions"][0]
    nights = base / "nights"
    nights.mkdir(exist_ok=True)
    tr = truth["transit"]
    (nights / f"{NIGHT}.yaml").write_text(yaml.safe_dump({
        "centroid_settings": {"star0_positions": {name: [x, y]}},
        "analysis_settings": {"transit": {name: {"t0": tr["t0_bjd_tdb"], "period": tr["period_d"]}}},
    }))


def fresh_copy(dest, root=ROOT):
    """The tracked files of the project at ``root`` (working-tree contents), as a fresh clone has them."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout
    for rel in files.decode().split("\0"):
        if not rel or not (root / rel).is_file():
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, out)


def clean_env(home):
    """Environment of a user who never ran the project: empty HOME and caches, no NUMBA_CACHE_DIR."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NUMBA_", "MPL", "XDG_", "ASTROPY_", "PYTHON"))}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd, cwd, env, log, server_dir=None, job_logs=None):
    """Run ``cmd``; return its wall time and the CPU time (user + sys) of it and all its processes:
    on a shared machine the CPU time moves much less with the load than the wall time.

    With ``server_dir`` (a fresh folder) the run starts its own fork server there (none is
    running when it starts); its CPU time (the imports) and its workers' (from the ``forkserver:``
    lines of the job logs under ``job_logs`` written during the run: workers are not children of
    this process) are added, and the server is stopped afterwards.
    """
    if server_dir is not None:
        env = dict(env, BANDERSNAKE_FORKSERVER_DIR=str(server_dir))
        server_dir.mkdir(parents=True, mode=0o700)
    t, c, since = time.perf_counter(), _children_cpu(), time.time()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - t, _children_cpu() - c
    if proc.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed (exit {proc.returncode}); see {log}")
    if server_dir is not None:
        cpu += stop_servers(server_dir) + sum(w["cpu"] for w in worker_usage(job_logs, since).values())
    return wall, cpu


def stop_servers(server_dir):
    """CPU time (s) of the fork servers of ``server_dir`` (from /proc), which are then stopped."""
    total = 0.0
    for pid_file in server_dir.glob("*.pid"):
        pid = int(pid_file.read_text())
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            os.kill(pid, signal.SIGTERM)
        except (OSError, IndexError, ValueError):
            continue
    return total


def worker_usage(logs_dir, since=0.0):
    """``{log name: {"cpu": s, "rss": MB}}`` of the fork-server workers whose job logs under
    ``logs_dir`` were written after ``since`` (their ``forkserver:`` lines)."""
    out = {}
    for f in sorted(Path(logs_dir).glob("*.log")) if logs_dir else []:
        if f.stat().st_mtime < since:
            continue
        m = re.search(r"^forkserver: worker \d+: ([\d.]+) CPU-s .*max RSS (\d+) MB", f.read_text(), re.M)
        if m:
            out[f.stem] = {"cpu": float(m.group(1)), "rss": float(m.group(2))}
    return out


def job_times(run_dir):
    """``[(rule, start, end)]`` of every job of the last run, from Snakemake's output metadata."""
    jobs = {}
    for f in (run_dir / ".snakemake" / "metadata").glob("*"):
        try:
            meta = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("starttime") and meta.get("endtime"):
            # One record per output file: a job's outputs share its hash.
            key = (meta["rule"], meta.get("job_hash") or round(meta["starttime"], 1))
            start, end = jobs.get(key, (meta["starttime"], meta["endtime"]))
            jobs[key] = (min(start, meta["starttime"]), max(end, meta["endtime"]))
    return sorted(((r, s, e) for (r, _), (s, e) in jobs.items()), key=lambda j: j[1])


def report(label, timing, jobs, since):
    """Print the run's total and its jobs (only those started after ``since``)."""
    wall, cpu = timing
    jobs = [j for j in jobs if j[1] >= since]
    print(f"\n== {label}: {wall:.2f} s wall (snakemake process), {cpu:.2f} s CPU (all its processes), "
          f"{len(jobs)} jobs")
    if not jobs:
        return {"wall": wall, "cpu": cpu, "jobs": 0}
    t0 = min(s for _, s, _ in jobs)
    per_rule = defaultdict(float)
    for rule, s, e in jobs:
        print(f"   {rule:26s} {s - t0:7.2f} -> {e - t0:7.2f}   {e - s:6.2f} s")
        per_rule[rule] += e - s
    busy = sum(e - s for _, s, e in jobs)
    span = max(e for _, _, e in jobs) - t0
    print(f"   jobs span {span:.2f} s (first job start to last job end), job time summed {busy:.2f} s, "
          f"outside jobs (start-up, DAG, scheduling) {wall - span:.2f} s")
    print("   per rule: " + ", ".join(f"{r} {t:.2f}" for r, t in sorted(per_rule.items(), key=lambda kv: -kv[1])))
    return {"wall": wall, "cpu": cpu, "jobs": len(jobs), "span": span, "busy": busy, "per_rule": dict(per_rule)}


def job_benchmarks(run_dir):
    """Snakemake's ``benchmark:`` records of the night's heavy jobs: wall (s), CPU (s), max RSS (MB)."""
    rows = []
    for f in sorted((run_dir / "work" / NIGHT / "benchmarks").glob("*.tsv")):
        lines = f.read_text().splitlines()
        if len(lines) < 2:
            continue
        rec = dict(zip(lines[0].split("\t"), lines[1].split("\t")))
        try:
            rows.append((f.stem, float(rec["s"]), float(rec.get("cpu_time", "nan")),
                         float(rec.get("max_rss", "nan"))))
        except ValueError:
            continue
    if rows:
        print("   benchmark: records (wall s / CPU s / max RSS MB; with the fork server the job's own "
              "process only): " + ", ".join(f"{n} {w:.2f}/{c:.2f}/{m:.0f}" for n, w, c, m in rows))
    workers = worker_usage(run_dir / "work" / NIGHT / "logs")
    if workers:
        print("   fork-server workers (CPU s / max RSS MB, from the job logs): "
              + ", ".join(f"{n} {u['cpu']:.2f}/{u['rss']:.0f}" for n, u in workers.items()))
    return rows


def replace_one_frame(raw_dir):
    """Rewrite one science frame (same pixels, new file): the night's inventory sees a change."""
    frames = sorted(p for p in raw_dir.iterdir() if "SIM-1b" in p.name or "Light" in p.name)
    frame = frames[len(frames) // 2]
    data = frame.read_bytes()
    frame.unlink()
    frame.write_bytes(data)
    return frame.name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--science", type=int, default=300)
    ap.add_argument("--bias", type=int, default=21)
    ap.add_argument("--dark", type=int, default=20)
    ap.add_argument("--flats", type=int, default=10, help="flats per twilight (dusk and dawn)")
    ap.add_argument("--shape", type=int, default=1024)
    ap.add_argument("--exptime", type=float, default=30.0,
                    help="science exposure (s); 10 fits a 1000-frame night in the target's hours above 20 deg")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep --dir (raw night reused next time)")
    ap.add_argument("--skip-cold", action="store_true", help="warm the copy first, time warm and rerun only")
    ap.add_argument("--warm-runs", type=int, default=1)
    ap.add_argument("--reuse-project", action="store_true",
                    help="keep the copy (and its compiled code) of an earlier run in --dir: warm runs only")
    ap.add_argument("--project", type=Path, default=ROOT,
                    help="project tree to copy and time (default: this one; e.g. a worktree of main for an A/B)")
    args = ap.parse_args(argv)

    base = args.dir or Path(tempfile.mkdtemp(prefix="bench_night_"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"working folder {base}; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, "
          f"--cores {args.cores}")
    write_configs(base, args.shape)
    simulate(base / "raw", base / "truth", args)
    night_settings(base)

    proj = base / "project"
    reuse = args.reuse_project and (proj / "Snakefile").exists()
    if not reuse:
        shutil.rmtree(proj, ignore_errors=True)
        shutil.rmtree(base / "home", ignore_errors=True)
    # Over an existing copy: files keep their time stamps (copy2), so its compiled code stays valid.
    fresh_copy(proj, args.project.resolve())
    env = clean_env(base / "home")
    bin_dir = Path(sys.executable).parent
    run_dir = base / "run"
    config = [f"raw_root={base / 'raw'}", f"instruments_dir={base / 'instruments'}",
              f"nights_dir={base / 'nights'}", f"targets_file={base / 'truth' / 'targets.yaml'}",
              f"nights=['{NIGHT}']"]
    smk = [str(bin_dir / "snakemake"), "-s", str(proj / "Snakefile"), "-d", str(run_dir),
           "--cores", str(args.cores), "--config", *config, "--", f"results/{NIGHT}"]
    n_frames = args.science + args.bias + args.dark + 2 * args.flats
    print(f"night {NIGHT}: {n_frames} frames of {args.shape}x{args.shape} ({args.science} science)")

    def servers(label):
        """A fresh fork-server folder per run: no server of an earlier run is reused."""
        folder = base / "forkservers" / label
        shutil.rmtree(folder, ignore_errors=True)
        return folder, run_dir / "work" / NIGHT / "logs"

    def fresh_run_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()

    results = {}
    t = time.perf_counter()
    setup = run([str(bin_dir / "python"), "-m", "bandersnake.warmup", "--cores", str(args.cores)],
                proj, dict(env, PYTHONPATH=str(proj / "workflow")), base / "warmup.log") \
        if (proj / "workflow" / "bandersnake" / "warmup.py").exists() and not reuse else None
    print(f"\n== set-up (make warm: numba compiled into the copy): "
          + (f"{setup[0]:.1f} s wall, {setup[1]:.1f} s CPU" if setup is not None
             else "skipped, copy reused" if reuse else "no warm-up step in this tree"))
    if not args.skip_cold:
        fresh_run_dir()
        t = time.time()
        wall = run(smk, proj, env, base / "cold.log", *servers("cold"))
        results["cold"] = report("cold (first night after set-up)", wall, job_times(run_dir), t)
        job_benchmarks(run_dir)
    for i in range(args.warm_runs):
        fresh_run_dir()
        t = time.time()
        wall = run(smk, proj, env, base / f"warm{i}.log", *servers(f"warm{i}"))
        results[f"warm{i}"] = report(f"warm run {i + 1}", wall, job_times(run_dir), t)
        job_benchmarks(run_dir)
    name = replace_one_frame(base / "raw" / "SPIRIT2" / "images" / NIGHT_DATE)
    t = time.time()
    wall = run(smk, proj, env, base / "rerun.log", *servers("rerun"))
    results["rerun"] = report(f"rerun after replacing {name}", wall, job_times(run_dir), t)
    job_benchmarks(run_dir)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    print("summary (wall / CPU): " + ", ".join(f"{k} {v['wall']:.1f} / {v['cpu']:.1f} s" for k, v in results.items())
          + (f", set-up {setup[0]:.1f} / {setup[1]:.1f} s" if setup is not None else ""))
    if not args.keep and args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
