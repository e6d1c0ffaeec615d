"""Cost of reading frame times from any camera's headers (issue 17), per header, on the real ARCSAT
night: the inventory's full check (every time keyword parsed and cross-checked) against the
astropy ``Time`` parse the inventory used before, and the photometry path's lookup (ERFA fast
path for a plain ISO DATE-OBS). Also the wall time of ``bandersnake-init-instrument`` on the night.

    .venv/bin/python benchmarks/bench_times.py [RAW_DIR]
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from astropy.io import fits  # noqa: E402
from astropy.time import Time  # noqa: E402

from bandersnake.calibration.reduce import _jd_mid_utc  # noqa: E402
from bandersnake.config import load_instrument  # noqa: E402
from bandersnake.ingest import timing  # noqa: E402
from bandersnake.ingest.draft import draft_instrument  # noqa: E402


def per_call(fn, items, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return best / len(items)


def main():
    raw = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/xo1b_arcsat_20250602/raw"
    inst = load_instrument(ROOT / "config" / "instruments", "ARCSAT")
    headers = [fits.getheader(p) for p in sorted(raw.glob("*.fits*"))]
    old = per_call(lambda h: Time(str(h["DATE-OBS"]).replace(" ", "T"), format="isot", scale="utc").jd, headers)
    full = per_call(lambda h: timing.frame_time(h, inst, 60.0, check=True), headers)
    fast = per_call(lambda h: _jd_mid_utc(h, inst, 60.0), headers)
    print(f"{len(headers)} headers: astropy Time parse (before) {old * 1e6:.0f} us; inventory frame_time "
          f"with cross-checks {full * 1e6:.0f} us ({full / old:.2f}x); photometry fast path {fast * 1e6:.1f} us")
    t0 = time.perf_counter()
    draft_instrument(raw, "ARCSAT")
    print(f"bandersnake-init-instrument on {len(headers)} files: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
