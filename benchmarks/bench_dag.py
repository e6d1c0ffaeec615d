"""DAG scale: time `snakemake -n` on N simulated nights x M science frames (goal: <= 20 s for 100 x 1000).

Frames are header-only (1x1 pixel) FITS files with MaxIm-style headers; each night's inventory is
written directly (same table the inventory rule writes) and is newer than its raw frames, so
the DAG goes past the inventory checkpoint to every master, photometry and publish job.

    .venv/bin/python benchmarks/bench_dag.py                 # 100 nights x 1000 frames
    .venv/bin/python benchmarks/bench_dag.py --nights 10 --frames 100 --keep /tmp/dag
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "tests"))

import _nights  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.time import Time  # noqa: E402
from bandersnake.config import load_instrument  # noqa: E402
from bandersnake.ingest.inventory import build_inventory, write_lists  # noqa: E402

CALIB = dict(bias=5, dark=5, flat=4)  # per night; flats at dusk and at dawn


def _template(kind):
    """Bytes of a header-only frame of ``kind`` and the offset of its DATE-OBS value."""
    tmp = Path(tempfile.mkdtemp())
    folder = _nights.write_night(tmp, date="20250101", n_bias=1, n_dark=1, n_flat=1, n_science=1,
                                 header_only=True)
    path = next(folder.glob(f"*_{kind}.fits"))
    data = path.read_bytes()
    shutil.rmtree(tmp)
    return data


def write_raw_night(raw_root, date, n_science, templates):
    """Header-only raw night: one template per type, DATE-OBS rewritten in place (fast)."""
    folder = Path(raw_root) / _nights.INSTRUMENT / "images" / date
    folder.mkdir(parents=True, exist_ok=True)
    day0 = Time(f"{date[:4]}-{date[4:6]}-{date[6:]}T00:00:00", scale="utc").jd
    plan = ([("bias", 22.5 + i / 600) for i in range(CALIB["bias"])]
            + [("dark", 22.6 + i / 100) for i in range(CALIB["dark"])]
            + [("flat", 23.2 + i / 100) for i in range(CALIB["flat"])]
            + [("science", 25.0 + i * 0.01) for i in range(n_science)]
            + [("flat", 33.7 + i / 100) for i in range(CALIB["flat"])])
    isots = Time([day0 + h / 24 for _, h in plan], format="jd", scale="utc").isot
    for i, ((kind, _), isot) in enumerate(zip(plan, isots)):
        data = templates[kind]
        start = data.index(b"DATE-OBS= '") + 11
        data = data[:start] + isot[:22].encode() + data[start + 22:]
        (folder / f"{_nights.INSTRUMENT}_{date}_{i:05d}_{kind}.fits").write_bytes(data)
    return folder


def make_tree(base, n_nights, n_science):
    """Raw tree, config files and inventories for ``n_nights`` nights; returns the --config items."""
    cfg = _nights.write_config(base)
    instrument = load_instrument(base / "instruments", _nights.INSTRUMENT)
    templates = {k: _template(k) for k in ("bias", "dark", "flat", "science")}
    dates = [f"{2024 + (d // 365)}{1 + (d % 365) // 28:02d}{1 + (d % 365) % 28:02d}" for d in range(n_nights)]
    for date in dates:
        folder = write_raw_night(base / "raw", date, n_science, templates)
        paths = sorted(str(p.relative_to(base)) for p in folder.iterdir())
        cwd = os.getcwd()
        os.chdir(base)  # inventory paths are as found under raw_root (relative here)
        try:
            table = build_inventory(paths, instrument, check_pixels=False)  # 1x1 header-only frames
            calib = Path("work") / f"{_nights.INSTRUMENT}_{date}" / "calib"
            calib.mkdir(parents=True, exist_ok=True)
            table.write(calib / "inventory.ecsv", format="ascii.ecsv", overwrite=True)
            write_lists(table, calib / "lists", "1")
        finally:
            os.chdir(cwd)
    return cfg


def workflow_copy(base):
    """The workflow to time: the repository's, or (while some rule scripts do not exist yet) a
    copy in ``base/wf`` with empty stand-ins for them (a dry run reads them, never runs them)."""
    rules = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    scripts = {line.split('"')[1] for line in rules.splitlines() if line.strip().startswith('"../workflow/scripts/')}
    missing = [s for s in scripts if not (ROOT / "rules" / s).resolve().exists()]
    if not missing:
        return ROOT / "Snakefile", []
    wf = base / "wf"
    shutil.rmtree(wf, ignore_errors=True)
    wf.mkdir(parents=True)
    for item in ("Snakefile", "rules", "config", "profiles"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wf / item)
    (wf / "workflow").mkdir()
    (wf / "workflow" / "bandersnake").symlink_to(ROOT / "workflow" / "bandersnake")
    shutil.copytree(ROOT / "workflow" / "scripts", wf / "workflow" / "scripts")
    for script in missing:
        (wf / "rules" / script).resolve().write_text("# stand-in for the DAG benchmark\n")
    return wf / "Snakefile", sorted(Path(s).name for s in missing)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=100)
    parser.add_argument("--frames", type=int, default=1000, help="science frames per night")
    parser.add_argument("--keep", help="build the tree here and keep it (reused if present)")
    args = parser.parse_args(argv)
    base = Path(args.keep or tempfile.mkdtemp(prefix="bench_dag_"))
    t0 = time.perf_counter()
    if not (base / "work").exists():
        base.mkdir(parents=True, exist_ok=True)
        cfg = make_tree(base, args.nights, args.frames)
    else:
        cfg = _nights.write_config(base)
    t_setup = time.perf_counter() - t0
    snakefile, stand_ins = workflow_copy(base)
    if stand_ins:
        print(f"rule scripts not written yet, empty stand-ins used: {', '.join(stand_ins)}")
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe), "-s", str(snakefile), "-n", "--quiet", "rules", "--cores", "2",
           "--config"] + [f"{k}={v}" for k, v in cfg.items()]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "workflow"))
    # Snakemake's own start-up (imports, plugin discovery), part of every run; with SLURM installed
    # but its controller down, the SLURM plugin alone adds ~9 s here (docs/scale.md).
    t0 = time.perf_counter()
    subprocess.run([str(exe), "--version"], env=env, capture_output=True, check=True)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"snakemake -n failed ({proc.returncode})")
    n_files = sum(1 for _ in (base / "raw").rglob("*.fits"))
    jobs = [ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if ln.startswith("total")]
    print(f"setup {t_setup:.1f} s; {args.nights} nights x {args.frames} science frames "
          f"({n_files} raw files): snakemake -n {seconds:.1f} s ({jobs[-1].split()[-1] if jobs else '?'} jobs; "
          f"snakemake --version alone {startup:.1f} s); load average {os.getloadavg()[0]:.2f}")
    print(proc.stdout[-1500:])
    if not args.keep:
        shutil.rmtree(base)
    return seconds


if __name__ == "__main__":
    main()
