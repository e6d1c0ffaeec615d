"""Tiny raw nights for the scale tests (SLURM, staging, batch) and the DAG benchmark.

MaxIm DL-style headers (IMAGETYP, OBJECT, FILTER, EXPTIME, DATE-OBS at exposure start) on small
uint16 frames: a bias level with read noise, darks with a dark current, dusk and dawn flats and
science frames with a few Gaussian stars. ``header_only=True`` writes 1x1 frames (the DAG
benchmark only needs headers and file names).
"""

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy import units as u
from astropy.time import Time

INSTRUMENT = "TINY"
TARGET = "TOI-0001"
STARS = [[20.0, 14.0], [9.0, 30.0], [40.0, 8.0]]  # (x, y), 0-based px

INSTRUMENT_YAML = f"""\
name: {INSTRUMENT}
description: tiny test camera (scale tests)
image_extension: 0
shape: null
keywords: {{imagetyp: IMAGETYP, object: OBJECT, filter: FILTER, exptime: EXPTIME,
            date_obs: DATE-OBS, ra: OBJCTRA, dec: OBJCTDEC, airmass: AIRMASS}}
date_obs_is: start
gain_e_per_adu: 2.0
read_noise_e: 10.0
saturation_adu: 65000
overscan_section: null
trim_section: null
plate_scale_arcsec_per_px: 1.0
telescope_diameter_m: 0.4
site: {{name: Paranal, latitude_deg: -24.6272, longitude_deg: -70.4042, altitude_m: 2482}}
scintillation: {{C_Y: 1.5, H_m: 8000}}
"""


def write_config(root, raw_root="raw", **extra):
    """Instrument and targets files for the tiny camera under ``root``; returns ``--config`` items."""
    root = Path(root)
    (root / "instruments").mkdir(parents=True, exist_ok=True)
    (root / "instruments" / f"{INSTRUMENT}.yaml").write_text(INSTRUMENT_YAML)
    stars = ", ".join(f"[{x}, {y}]" for x, y in STARS)
    (root / "targets.yaml").write_text(
        f"targets:\n  {TARGET}:\n    all_star_positions: [{stars}]\n    tracking_star: 0\n")
    cfg = dict(raw_root=raw_root, instruments_dir="instruments", targets_file="targets.yaml",
               instruments=f"[{INSTRUMENT}]")
    cfg.update(extra)
    return cfg


def _frame(kind, rng, shape, exptime):
    ny, nx = shape
    data = 1000.0 + rng.normal(0.0, 5.0, shape)
    if kind in ("dark", "science", "flat"):
        data += 0.5 * exptime
    if kind == "flat":
        data += 20000.0 * (1.0 + 0.02 * rng.normal(size=shape))
    if kind == "science":
        yy, xx = np.mgrid[:ny, :nx]
        data += 200.0
        for (x, y), amp in zip(STARS, (8000.0, 3000.0, 1500.0)):
            data += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
    return np.clip(np.round(data), 0, 65535).astype(np.uint16)


def write_night(raw_root, date="20251215", n_bias=5, n_dark=5, n_flat=4, n_science=12,
                shape=(48, 64), header_only=False, seed=0):
    """Write one raw night ``<raw_root>/TINY/images/<date>/`` and return its folder.

    Dusk flats start 23:10 UTC on ``date`` (evening twilight at Paranal), science runs from
    01:00 UTC the next day, dawn flats at 09:40 UTC.
    """
    rng = np.random.default_rng(seed)
    folder = Path(raw_root) / INSTRUMENT / "images" / date
    folder.mkdir(parents=True, exist_ok=True)
    day0 = Time(f"{date[:4]}-{date[4:6]}-{date[6:]}T00:00:00", scale="utc")
    plan = ([("bias", 0.0, 22.5 + i / 600) for i in range(n_bias)]
            + [("dark", 30.0, 22.6 + i / 100) for i in range(n_dark)]
            + [("flat", 5.0, 23.2 + i / 100) for i in range(n_flat)]
            + [("science", 30.0, 25.0 + i / 100) for i in range(n_science)]
            + [("flat", 5.0, 33.7 + i / 100) for i in range(n_flat)])
    imagetyp = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field", "science": "Light Frame"}
    shape = (1, 1) if header_only else shape
    for i, (kind, exptime, hours) in enumerate(plan):
        t = day0 + hours * u.hour
        header = fits.Header()
        header["IMAGETYP"] = imagetyp[kind]
        header["EXPTIME"] = exptime
        header["DATE-OBS"] = t.isot[:22]
        header["INSTRUME"] = "tiny"
        header["TELESCOP"] = "test"
        if kind in ("flat", "science"):
            header["FILTER"] = "z"
        if kind == "science":
            header["OBJECT"] = TARGET
            header["OBJCTRA"] = "10 00 00.0"
            header["OBJCTDEC"] = "-20 00 00"
            header["AIRMASS"] = 1.1
        data = _frame(kind, rng, shape, exptime)
        name = f"{INSTRUMENT}_{date}_{i:05d}_{kind}.fits"
        fits.PrimaryHDU(data, header).writeto(folder / name, overwrite=True)
    return folder


# ------------------------------------------------------------------ what the tests build and compare
def night_targets(root, night):
    """Targets for a night: the published night when every stage's script exists, else the stages
    that can run today (inventory, then masters as their scripts land)."""
    scripts = Path(root) / "workflow" / "scripts"
    stages = ["master_bias", "master_dark", "master_flat", "bad_pixel_map", "photometry_streaming",
              "night_summary", "publish"]
    if all((scripts / f"{s}.py").exists() for s in stages):
        return [f"results/{night}"]
    targets = [f"work/{night}/calib/inventory.ecsv"]
    products = dict(master_bias="master_bias.fits", master_dark="master_dark.fits",
                    master_flat="master_flat_z.fits", bad_pixel_map="bad_pixel_map.fits")
    for stage, product in products.items():
        if (scripts / f"{stage}.py").exists():
            targets.append(f"work/{night}/calib/{product}")
    return targets


# Header cards that legitimately differ between two runs of the same inputs.
VOLATILE_CARDS = {"DATE", "CHECKSUM", "DATASUM"}


def _same_fits(a, b):
    with fits.open(a) as ha, fits.open(b) as hb:
        assert len(ha) == len(hb), f"{a}: {len(ha)} HDUs vs {len(hb)}"
        for ea, eb in zip(ha, hb):
            keys_a = [k for k in ea.header if k not in VOLATILE_CARDS]
            keys_b = [k for k in eb.header if k not in VOLATILE_CARDS]
            assert keys_a == keys_b, f"{a}: header keywords differ"
            for k in set(keys_a) - {"HISTORY", "COMMENT"}:
                assert ea.header[k] == eb.header[k], f"{a}: {k} = {ea.header[k]!r} vs {eb.header[k]!r}"
            assert [str(c) for c in ea.header.get("HISTORY", [])] == [str(c) for c in eb.header.get("HISTORY", [])]
            if ea.data is None:
                assert eb.data is None
            elif isinstance(ea.data, np.ndarray) and ea.data.dtype.names is None:
                assert np.array_equal(ea.data, eb.data, equal_nan=True), f"{a}: pixels differ"
            else:
                assert ea.data.dtype == eb.data.dtype, f"{a}: table columns differ"
                for name in ea.data.dtype.names:
                    ca, cb = np.asarray(ea.data[name]), np.asarray(eb.data[name])
                    same = (np.array_equal(ca, cb, equal_nan=True) if ca.dtype.kind == "f"
                            else np.array_equal(ca, cb))
                    assert same, f"{a}: column {name} differs"


def product_files(run_dir, targets):
    """Relative paths of every product file under ``targets`` (folders walked; logs/benchmarks left out)."""
    run_dir = Path(run_dir)
    out = []
    for t in targets:
        p = run_dir / t
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        out += [str(f.relative_to(run_dir)) for f in files
                if not {"logs", "benchmarks"} & set(f.relative_to(run_dir).parts)]
    return sorted(out)


def _comparable_text(path, run_dir):
    """Text of a product with the run's own directory replaced; in an inventory, the raw files'
    modification times (each run writes its own raw tree) are left out."""
    if path.name == "inventory.ecsv":
        from astropy.table import Table

        table = Table.read(path, format="ascii.ecsv")
        table.remove_column("file_mtime_ns")
        text = "\n".join(table.pformat(max_lines=-1, max_width=-1))
    else:
        text = path.read_text()
    return text.replace(str(Path(run_dir).resolve()), "<RUN>")


def assert_same_products(dir_a, dir_b, targets):
    """Products of two runs are equal: FITS pixels/tables/headers (bar DATE), text with each run's
    own directory replaced."""
    files_a, files_b = product_files(dir_a, targets), product_files(dir_b, targets)
    assert files_a == files_b, f"different product sets:\n{files_a}\n{files_b}"
    assert files_a, "no products to compare"
    for rel in files_a:
        a, b = Path(dir_a) / rel, Path(dir_b) / rel
        if ".fits" in a.name:
            _same_fits(a, b)
        elif a.suffix == ".png":  # plots: Agg output is deterministic for the same data
            assert a.read_bytes() == b.read_bytes(), f"{rel} differs"
        else:
            ta = _comparable_text(a, dir_a)
            tb = _comparable_text(b, dir_b)
            assert ta == tb, f"{rel} differs"
    return files_a
