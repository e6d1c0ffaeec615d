"""Compile bandersnake's numba code and fill the user caches once, at set-up (``make setup``).

numba compiles the streaming kernel, the master combine and the frame calibration the first time
they run (~40 s of machine code for the kernel on a 2-core machine) and keeps the result in the
``__pycache__`` folder beside each source (or in ``$NUMBA_CACHE_DIR`` when set), keyed by the
function's argument types, the source file's time stamp and the CPU. Without this step a user's
first night pays that compilation inside its photometry job.

``python -m bandersnake.warmup`` runs the workflow itself on a tiny simulated night (256x256,
12 science frames, some gzipped, calibrated frames on) in a temporary folder, so every numba
function the jobs of a night call is compiled with exactly the argument types those jobs pass,
and the same run builds matplotlib's font cache and Python's byte code. The jobs of later runs
then find the machine code where they look for it: the same source tree, the same
``NUMBA_CACHE_DIR`` (set it to the same value, or leave it unset, in both). A machine with another
CPU model (a cluster node) compiles its own copy once and adds it beside this one. Usage::

    python -m bandersnake.warmup [--cores 2] [--keep DIR]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
NIGHT_DATE = "20240310"
NIGHT = f"SPIRIT2_{NIGHT_DATE}"


def write_night(folder):
    """Tiny simulated night under ``folder`` and the configuration files it needs.

    Returns
    -------
    list of str
        ``--config`` items for ``snakemake``.
    """
    from .config import load_instrument
    from .sim.night import simulate_night, small_config

    inst = yaml.safe_load((ROOT / "config" / "instruments" / "SPIRIT2.yaml").read_text())
    inst["shape"] = [256, 256]
    (folder / "instruments").mkdir(parents=True)
    (folder / "instruments" / "SPIRIT2.yaml").write_text(yaml.safe_dump(inst))
    # Gzipped and plain frames: numba types the arrays read from each differently.
    cfg = small_config(date=NIGHT_DATE, n_science=12, gzip_every=3)
    simulate_night(folder / "raw", folder / "truth", cfg, load_instrument(folder / "instruments", "SPIRIT2"))
    (folder / "nights").mkdir()
    # Calibrated frames too (ASTEP's path: whole-frame calibration; cosmic rays by the time series,
    # the numba one: astroscrappy is compiled C), without plate solving.
    (folder / "nights" / f"{NIGHT}.yaml").write_text(yaml.safe_dump(
        {"calibrated_frames": {"enabled": True, "cosmics_method": "series"}}))
    return [f"raw_root={folder / 'raw'}", f"instruments_dir={folder / 'instruments'}",
            f"nights_dir={folder / 'nights'}", f"targets_file={folder / 'truth' / 'targets.yaml'}",
            f"nights=['{NIGHT}']"]


def _compile_detection():
    """Source detection's numba passes (astrometry/_detect.py): the tiny night does no plate
    solving, so they are compiled here, with the argument types detect_sources passes."""
    import numpy as np

    from .astrometry.solve import detect_sources

    rng = np.random.default_rng(0)
    detect_sources(rng.normal(100.0, 10.0, (128, 128)).astype(np.float32), np.zeros((128, 128), bool))


def snakemake_command():
    """The ``snakemake`` of this interpreter's environment."""
    exe = Path(sys.executable).parent / "snakemake"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bandersnake.warmup", description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (debugging)")
    args = parser.parse_args(argv)
    if not (ROOT / "Snakefile").exists():
        print(f"bandersnake warm-up: no Snakefile in {ROOT} (not a source tree): nothing to do")
        return 0
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bandersnake_warmup_"))
    t0 = time.perf_counter()
    try:
        config = write_night(folder)
        cmd = snakemake_command() + ["-s", str(ROOT / "Snakefile"), "-d", str(folder / "run"), "--cores",
                                     str(args.cores), "--quiet", "all", "--config", *config, "--",
                                     f"results/{NIGHT}"]
        with open(folder / "warmup.log", "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                      p for p in (str(ROOT / "workflow"), os.environ.get("PYTHONPATH")) if p)))
        if proc.returncode:
            print((folder / "warmup.log").read_text()[-4000:], file=sys.stderr)
            print(f"bandersnake warm-up: the tiny night failed (exit {proc.returncode}); the first real "
                  "night will compile the numba code itself", file=sys.stderr)
            return 1
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    _compile_detection()
    where = os.environ.get("NUMBA_CACHE_DIR") or f"{ROOT / 'workflow' / 'bandersnake'}/*/__pycache__"
    print(f"bandersnake warm-up: numba code compiled into {where} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
