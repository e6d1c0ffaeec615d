"""Fuzz one night (issue 17, item 9): N mutated frames added to a simulated night, then the inventory
and the whole workflow. Counts how each mutation kind ended (accepted / rejected, the reasons),
exceptions raised by the inventory (must be 0) and whether the night builds (snakemake exit 0).

    .venv/bin/python benchmarks/fuzz_night.py                  # 1000 mutants, whole workflow
    .venv/bin/python benchmarks/fuzz_night.py --n 200 --no-workflow --keep /tmp/fuzz
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "tests"))

from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402

from _analysis_night import NIGHT, make_analysis_night  # noqa: E402
from bandersnake.config import load_instrument  # noqa: E402
from bandersnake.ingest.inventory import build_inventory, raw_files  # noqa: E402
from bandersnake.sim import fuzz  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="mutated frames (default 1000)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--no-workflow", action="store_true", help="inventory only")
    ap.add_argument("--keep", help="work in this folder and keep it")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fuzz_night_"))
    if root.exists() and args.keep:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    night = make_analysis_night(root)
    raw = root / "raw" / "SPIRIT2" / "images" / NIGHT.split("_")[1]
    sources = [p for p in sorted(raw.glob("*.fits")) if fits.getheader(p).get("IMAGETYP", "").startswith("Light")]
    made = fuzz.fuzz_night(sources, raw, args.n, seed=args.seed)
    print(f"night {NIGHT}: {len(sources)} clean science frames, {len(made)} mutants "
          f"({len(fuzz.KINDS)} kinds) in {time.perf_counter() - t0:.0f} s")

    inst = load_instrument(root / "instruments", "SPIRIT2")
    t1 = time.perf_counter()
    try:
        table = build_inventory(raw_files(raw), inst)
        exceptions = 0
    except Exception:  # the figure this script exists for: must stay 0
        traceback.print_exc()
        table, exceptions = None, 1
    print(f"inventory of {len(raw_files(raw))} files: {time.perf_counter() - t1:.1f} s, exceptions: {exceptions}")
    if table is not None:
        report(table, made)
    if args.no_workflow:
        return 0 if exceptions == 0 else 1
    t2 = time.perf_counter()
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "Snakefile"), "--cores",
           str(args.cores), "--config"] + [f"{k}={v}" for k, v in night["config"].items()] + ["--", f"results/{NIGHT}/"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "workflow")))
    tracebacks = sum(p.read_text(errors="replace").count("Traceback") for p in (root / "work" / NIGHT).rglob("*.log"))
    print(f"workflow: exit {proc.returncode} in {time.perf_counter() - t2:.0f} s; "
          f"'Traceback' in the night's logs: {tracebacks}")
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
    else:
        inv = Table.read(root / "results" / NIGHT / "calib" / "inventory.ecsv")
        diff_path = root / "results" / NIGHT / night["target"] / "photometry" / "differential.fits"
        diff = fits.getheader(diff_path, 1)
        diff["BESTAPER"] = fits.getheader(diff_path, 0).get("BESTAPER")
        print(f"published inventory: {len(inv)} rows, {int(inv['accepted'].sum())} accepted; "
              f"differential light curve: {diff.get('NAXIS2')} rows, BESTAPER {diff.get('BESTAPER')}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if exceptions == 0 and proc.returncode == 0 and tracebacks == 0 else 1


def report(table, made):
    kinds = {m["file"]: m["kind"] for m in made}
    by_kind = collections.defaultdict(collections.Counter)
    no_reason = 0
    for row in table:
        kind = kinds.get(row["file"])
        if kind is None:
            continue
        by_kind[kind]["accepted" if row["accepted"] else "rejected"] += 1
        if not row["accepted"]:
            no_reason += row["reason"] == ""
            by_kind[kind]["  " + row["reason"].split(" (")[0].split("=")[0][:40]] += 1
    print(f"{'kind':20s} accepted rejected  reasons")
    for kind in fuzz.KINDS:
        c = by_kind[kind]
        reasons = ", ".join(f"{k.strip()} x{v}" for k, v in c.most_common() if k.startswith("  "))
        print(f"{kind:20s} {c['accepted']:8d} {c['rejected']:8d}  {reasons}")
    total_acc = sum(c["accepted"] for c in by_kind.values())
    total_rej = sum(c["rejected"] for c in by_kind.values())
    print(f"mutants: {total_acc} accepted, {total_rej} rejected, rejected without a reason: {no_reason}")


if __name__ == "__main__":
    sys.exit(main())
