"""Shared configuration, path helpers and input functions."""

import os
import sys
from functools import lru_cache
from pathlib import Path

# Jobs import the package from the source tree, also on cluster nodes and in conda envs.
PACKAGE_DIR = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, PACKAGE_DIR)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (PACKAGE_DIR, os.environ.get("PYTHONPATH", "")) if p
    )
)

from bandersnake import config as bconfig
from bandersnake.errors import ConfigError
from bandersnake.ingest.inventory import (
    dark_plan,
    exposure_times,
    exptime_tag,
    list_files,
    list_files_exptime,
    raw_files,
    raw_fingerprint,
    read_inventory,
    sanitize_name,
)


def _shipped(key):
    """A relative config path missing from the working directory is taken from the workflow's own
    directory, so runs from another directory (``snakemake -d``) still find the shipped files.
    """
    path = Path(config[key])
    if not path.is_absolute() and not path.exists():
        shipped = Path(workflow.basedir) / path
        if shipped.exists():
            config[key] = str(shipped)


for _key in ("instruments_dir", "nights_dir", "targets_file", "master_flats_file"):
    _shipped(_key)

WORK = config["work_dir"].rstrip("/")
RESULTS = config["results_dir"].rstrip("/")
NIGHT_RE = r"[A-Za-z0-9-]+_[0-9]{8}"
NAME_RE = r"[A-Za-z0-9+._-]+"


wildcard_constraints:
    night=NIGHT_RE,
    exptime=r"[0-9]+(\.[0-9]+)?",
    target=NAME_RE,
    filter=NAME_RE,
    aper=r"[0-9]+",


def work(path):
    """Path in the work tree, where every product is built and can be requested."""
    return f"{WORK}/{path}"


def logs(path):
    """Log file of a job, kept in the night's work tree and published with it."""
    return f"{WORK}/{path}"


def bench(path):
    """Benchmark (runtime, memory) file of a heavy job."""
    return f"{WORK}/{path}"


# ---------------------------------------------------------------- configuration
try:
    NIGHT_DEFAULTS = bconfig.validate(
        config["night_defaults"], "night.schema.yaml", "config: night_defaults"
    )
except ConfigError as err:
    raise WorkflowError(str(err))

PHOT = NIGHT_DEFAULTS["photometry_settings"]
# Output file names are fixed when the workflow is parsed, so the aperture range is workflow-wide.
APERTURES = list(range(PHOT["aper_min"], PHOT["aper_max"] + 1))


def instruments():
    """Instrument names whose nights are discovered."""
    if config["instruments"]:
        return config["instruments"]
    return sorted(p.stem for p in Path(config["instruments_dir"]).glob("*.yaml"))


@lru_cache(maxsize=None)
def instrument_cfg(night):
    """Validated instrument dictionary of a night."""
    inst, _ = bconfig.parse_night_id(night)
    try:
        return bconfig.load_instrument(config["instruments_dir"], inst)
    except ConfigError as err:
        raise WorkflowError(str(err))


@lru_cache(maxsize=None)
def night_cfg(night):
    """Validated settings of a night (night_defaults + config/nights/ files)."""
    try:
        settings = bconfig.night_settings(
            config["night_defaults"],
            config["nights_dir"],
            night,
            instrument_cfg(night)["night_settings"],
        )
    except ConfigError as err:
        raise WorkflowError(str(err))
    phot = settings["photometry_settings"]
    if (phot["aper_min"], phot["aper_max"]) != (PHOT["aper_min"], PHOT["aper_max"]):
        raise WorkflowError(
            f"night {night}: aper_min/aper_max differ from night_defaults; the aperture "
            "range names the output files, so set it in night_defaults (config.yaml) or "
            "with --config for the whole run"
        )
    return settings


@lru_cache(maxsize=None)
def targets_config():
    """Validated targets.yaml (empty when the file does not exist yet)."""
    path = Path(config["targets_file"])
    data = bconfig.load_yaml(path) if path.exists() else {}
    try:
        return bconfig.validate(data, "targets.schema.yaml", str(path))
    except ConfigError as err:
        raise WorkflowError(str(err))


@lru_cache(maxsize=None)
def master_flats_config():
    path = Path(config["master_flats_file"])
    data = bconfig.load_yaml(path) if path.exists() else {}
    try:
        return bconfig.validate(data, "master_flats.schema.yaml", str(path))
    except ConfigError as err:
        raise WorkflowError(str(err))


# Fail at parse time, naming the file and key, rather than inside a job.
targets_config()
master_flats_config()


# ---------------------------------------------------------------- staging (rules/staging.smk)
def _staging_root():
    """Fast-disk folder for staged raw frames (``staging_dir``, ``$VARS`` expanded), or ``None``:
    the jobs read the raw tree directly."""
    root = config.get("staging_dir")
    if not root:
        return None
    expanded = os.path.expandvars(str(root))
    if "$" in expanded:
        raise WorkflowError(
            f"staging_dir {root!r}: environment variable not set (profiles/staged needs "
            "BANDERSNAKE_SCRATCH, the fast disk)"
        )
    return os.path.abspath(expanded)


STAGING = _staging_root()
# Heavy jobs reading raw frames run as shadow jobs only in staged runs (their scratch then goes
# to --shadow-prefix, the fast disk); unstaged runs are unchanged (shadow rejects raw_root=../x).
SHADOW = "minimal" if STAGING else None


def staged_night(wildcards):
    """Input: the night's staged raw frames on the fast disk (nothing when not staging)."""
    return {"staged": f"{STAGING}/{wildcards.night}"} if STAGING else {}


def night_date(night):
    return bconfig.parse_night_id(night)[1]


def instrument_layout(inst):
    """Raw layout of an instrument: its file's ``raw_layout``, else the workflow's."""
    try:
        instrument = bconfig.load_instrument(config["instruments_dir"], inst)
    except ConfigError as err:
        raise WorkflowError(str(err))
    return bconfig.instrument_layout(instrument, config["raw_layout"])


def raw_dir(night):
    """Raw folders of a night (several when its layout holds glob characters, e.g. ASTEP's
    ``YYYY-MM-DD-CAMS`` and ``YYYY-MM-DD-CAMS_SKYFLAT``)."""
    inst, _ = bconfig.parse_night_id(night)
    return bconfig.raw_night_dirs(instrument_layout(inst), config["raw_root"], night)


def all_nights():
    """Nights built by the default target: listed in config, else discovered in the raw tree."""
    nights = config["nights"] or bconfig.discover_nights(
        config["raw_layout"],
        config["raw_root"],
        instruments(),
        layouts={inst: instrument_layout(inst) for inst in instruments()},
    )
    return [n for n in nights if not night_cfg(n)["skip"]]


# ---------------------------------------------------------------- input functions
@lru_cache(maxsize=None)
def raw_frames(night):
    """Every raw file of the night (all its folders), as a tuple."""
    return tuple(raw_files(raw_dir(night)))


def raw_frames_fingerprint(wildcards):
    """Names, sizes and times of the night's raw files: the inventory re-runs when a frame is
    added, removed or replaced (declaring 1000 frames per night as inputs made the DAG slow).
    """
    return raw_fingerprint(raw_frames(wildcards.night))


def inventory_path(night):
    return work(f"{night}/calib/inventory.ecsv")


@lru_cache(maxsize=None)
def _read_inventory(path, mtime):
    # Plain (unmasked) columns: element access on masked columns dominated DAG building
    # for 100 nights x 1000 frames (benchmarks/bench_dag.py).
    table = read_inventory(path)
    return table.filled() if table.has_masked_columns else table


def inventory(night):
    """The night's inventory table (waits for the inventory checkpoint)."""
    path = checkpoints.inventory.get(night=night).output.table
    return _read_inventory(path, os.path.getmtime(path))


def calib_frames(frame_type, **match):
    """Input function: accepted frames of one type from the night's inventory."""

    def frames(wildcards):
        wanted = {k: getattr(wildcards, v) for k, v in match.items()}
        return list_files(inventory(wildcards.night), frame_type, **wanted)

    return frames


def flat_frames(session):
    def frames(wildcards):
        table = inventory(wildcards.night)
        return list_files(table, "flat", filter=wildcards.filter, session=session)

    return frames


def science_targets(night):
    table = inventory(night)
    sel = (table["type"] == "science") & table["accepted"]
    return sorted(set(table["target"][sel]))


def photometry_targets(night):
    """Science targets with reference positions in targets.yaml (the others are listed in the
    night summary with a note saying to add them)."""
    known = {sanitize_name(name) for name in targets_config()["targets"]}
    return [t for t in science_targets(night) if t in known]


def science_filters(night):
    table = inventory(night)
    sel = (table["type"] == "science") & table["accepted"]
    return sorted(set(table["filter"][sel]))


def target_filter(night, target):
    """Filter of a target's science frames (the most used one if several)."""
    table = inventory(night)
    sel = (table["type"] == "science") & table["accepted"] & (table["target"] == target)
    filters = list(table["filter"][sel])
    if not filters:
        raise WorkflowError(
            f"night {night}: no accepted science frame of target {target}"
        )
    return max(set(filters), key=filters.count)


def science_frames(wildcards):
    """Accepted science frames of a target in its main filter, in time order."""
    table = inventory(wildcards.night)
    return list_files(
        table,
        "science",
        target=wildcards.target,
        filter=target_filter(wildcards.night, wildcards.target),
    )


def masters_for_target(wildcards):
    night = wildcards.night
    return dict(
        bias=work(f"{night}/calib/master_bias.fits"),
        dark=work(f"{night}/calib/master_dark.fits"),
        flat=work(
            f"{night}/calib/master_flat_{target_filter(night, wildcards.target)}.fits"
        ),
        bpm=work(f"{night}/calib/bad_pixel_map.fits"),
    )


def calibration_products(night):
    """Master calibrations a night needs: bias, dark, a flat per science filter, the BPM."""
    calib = [
        work(f"{night}/calib/master_bias.fits"),
        work(f"{night}/calib/master_dark.fits"),
        work(f"{night}/calib/bad_pixel_map.fits"),
    ]
    calib += [
        work(f"{night}/calib/master_flat_{f}.fits") for f in science_filters(night)
    ]
    return calib


def target_products(night, target):
    """Per-target products: the photometry stage, then the light-curve analysis."""
    base = f"{night}/{target}"
    products = [work(f"{base}/centroiding/centroids.fits")] + [
        work(f"{base}/photometry/photometry_aper{n}.fits") for n in APERTURES
    ]
    return products + analysis_products(night, target)


def night_products(wildcards):
    """Everything published in results/<night>/."""
    night = wildcards.night
    products = [inventory_path(night), work(f"{night}/calib/lists")]
    products += calibration_products(night)
    for target in photometry_targets(night):
        products += target_products(night, target)
    products += calibrated_products(night)
    return products


# ---------------------------------------------------------------- calibrated frames, astrometry, KBMOD
def wants_calibrated(night):
    """Calibrated frames are built when enabled, or needed by astrometry / KBMOD."""
    s = night_cfg(night)
    return (
        s["calibrated_frames"]["enabled"]
        or s["astrometry"]["enabled"]
        or s["kbmod"]["enabled"]
    )


def calibrated_products(night):
    """Per-night products of the calibrated-frame stages, each only when enabled."""
    s = night_cfg(night)
    products = []
    if wants_calibrated(night):
        products += [work(f"{night}/calibrated")] + sorted(
            {p for p in dark_matching(night).values() if p}
        )
    if s["astrometry"]["enabled"] or s["kbmod"]["enabled"]:
        products.append(work(f"{night}/astrometry/astrometry_summary.ecsv"))
    if s["kbmod"]["enabled"]:
        products.append(work(f"{night}/kbmod"))
    return products


def matched_dark_path(night, exptime):
    return work(f"{night}/calib/master_dark_{exptime_tag(exptime)}s.fits")


def dark_matching(night):
    """``{science exposure (s): matched master dark or None}`` when ``dark_exposure_matching``
    is on (None: too few darks of that exposure, the all-exposure master dark is scaled).
    """
    cal = night_cfg(night)["calibration_params"]
    if not cal["dark_exposure_matching"]:
        return {}
    table = inventory(night)
    plan = dark_plan(table, exposure_times(table, "science"), cal["min_dark_frames"])
    return {t: (matched_dark_path(night, m) if m else None) for t, m in plan.items()}


def flat_dark(wildcards):
    """Master dark for the flats of a filter: matched to their most common exposure time when
    ``dark_exposure_matching`` is on and darks of it exist (ASTEP's SKYFLAT darks), else the
    all-exposure master dark. For rule master_flat's ``dark`` input."""
    night = wildcards.night
    cal = night_cfg(night)["calibration_params"]
    if cal["dark_exposure_matching"]:
        table = inventory(night)
        sel = (
            (table["type"] == "flat")
            & table["accepted"]
            & (table["filter"] == wildcards.filter)
        )
        times = [float(t) for t in table["exptime"][sel]]
        if times:
            common = max(set(times), key=times.count)
            match = dark_plan(table, [common], cal["min_dark_frames"])[common]
            if match is not None:
                return matched_dark_path(night, match)
    return work(f"{night}/calib/master_dark.fits")


def matched_dark_frames(wildcards):
    """Accepted darks of one exposure time (``{exptime}`` wildcard, s)."""
    return list_files_exptime(
        inventory(wildcards.night), "dark", float(wildcards.exptime)
    )


def calibrated_inputs(wildcards):
    """Raw science frames, the inventory and every master the night's calibration needs."""
    night = wildcards.night
    table = inventory(night)
    return dict(
        frames=list_files(table, "science"),
        inventory=inventory_path(night),
        bias=work(f"{night}/calib/master_bias.fits"),
        dark=work(f"{night}/calib/master_dark.fits"),
        bpm=work(f"{night}/calib/bad_pixel_map.fits"),
        flats=[
            work(f"{night}/calib/master_flat_{f}.fits") for f in science_filters(night)
        ],
        darks=sorted({p for p in dark_matching(night).values() if p}),
    )


def calibrated_params(wildcards):
    """Settings the calibrated frames depend on (a change re-runs the night's calibration)."""
    night = wildcards.night
    s = night_cfg(night)
    return dict(
        settings=s["calibrated_frames"],
        cosmics=s["cosmics"],
        darks=dark_matching(night),
        flats={
            f: work(f"{night}/calib/master_flat_{f}.fits")
            for f in science_filters(night)
        },
    )


def calib_params(kind):
    """Clip parameters of one master type for a night."""

    def params(wildcards):
        cal = night_cfg(wildcards.night)["calibration_params"]
        return dict(
            clip=cal[f"{kind}_MAD_clip"],
            nlimit=cal[f"{kind}_MAD_nlimit"],
            min_frames=cal[f"min_{kind}_frames"],
        )

    return params


def _abs_if_staged(path):
    return os.path.abspath(path) if STAGING else path


def fallback_params(wildcards):
    """What the fallback chain needs: the night's calibration_params and where to look."""
    return dict(
        night=wildcards.night,
        calibration_params=night_cfg(wildcards.night)["calibration_params"],
        # Absolute: shadow jobs (staged runs) run in another directory.
        # Shadowed (staged) jobs run in a scratch folder: they need absolute paths. Unstaged
        # runs keep relative ones so moving the project does not rerun the masters.
        search_roots=[_abs_if_staged(WORK), _abs_if_staged(RESULTS)],
        master_flats_file=_abs_if_staged(config["master_flats_file"]),
    )


def photometry_params(wildcards):
    """Settings the photometry of one (night, target) depends on."""
    settings = night_cfg(wildcards.night)
    return dict(
        night=wildcards.night,
        date=night_date(wildcards.night),
        target=wildcards.target,
        targets_file=config["targets_file"],
        centroid=settings["centroid_settings"],
        photometry=settings["photometry_settings"],
    )


# ---------------------------------------------------------------- light-curve analysis
from bandersnake.analysis import stages as analysis_stages
from bandersnake.analysis.plots import PLOTS as ANALYSIS_PLOTS

# Multi-night plot: outside results/<night>/ (those are directory outputs of publish_night).
PRECISION_SUMMARY = work("summary/precision_vs_brightness.png")


def analysis_settings(night):
    """Validated ``analysis_settings`` of a night."""
    return night_cfg(night)["analysis_settings"]


def transit_fit_settings(night, target):
    """Transit-fit settings of a target on a night, None when the night gives it no ephemeris."""
    return analysis_stages.transit_settings(analysis_settings(night), target)


def analysis_products(night, target):
    """Products of the light-curve analysis of one (night, target); the transit fit only when
    ``analysis_settings.transit`` gives the target a ``t0`` or ``window``."""
    base = f"{night}/{target}"
    products = [
        work(f"{base}/photometry/{name}")
        for name in (
            "differential.fits",
            "differential_summary.txt",
            "precision_metrics.fits",
        )
    ]
    products += [work(f"{base}/plots/{name}.png") for name in ANALYSIS_PLOTS]
    products += [
        work(f"{base}/exports/lc.dat"),
        work(f"{base}/exports/{target}_aavso.txt"),
    ]
    if transit_fit_settings(night, target) is not None:
        products += [
            work(f"{base}/transit/transit_fit.yaml"),
            work(f"{base}/transit/transit_fit.png"),
            work(f"{base}/transit/transit_fit_corner.png"),
            work(f"{base}/transit/transit_lc.ecsv"),
        ]
    return products


def analysis_plot_outputs():
    """Declared PNGs of the analysis_plots rule, each sent to the report with its caption."""
    return {
        name: report(
            work(f"{{night}}/{{target}}/plots/{name}.png"),
            caption=f"../workflow/report/{name}.rst",
            category="{night}",
            subcategory="{target}",
            labels={"night": "{night}", "target": "{target}", "figure": name},
        )
        for name in ANALYSIS_PLOTS
    }


def differential_params(wildcards):
    """Settings of the differential job: the analysis settings it uses and the instrument's
    noise figures (no photometry settings, so only the analysis re-runs when they change).
    """
    return dict(
        night=wildcards.night,
        target=wildcards.target,
        settings=analysis_stages.differential_settings(
            analysis_settings(wildcards.night)
        ),
        instrument=analysis_stages.noise_instrument(instrument_cfg(wildcards.night)),
    )


def transit_params(wildcards):
    settings = transit_fit_settings(wildcards.night, wildcards.target)
    if settings is None:
        raise WorkflowError(
            f"night {wildcards.night}: no transit fit for target {wildcards.target}; give it "
            "analysis_settings.transit.<target>.t0 (and period) or .window"
        )
    return settings


def transit_nights(target):
    """Nights built by the default target whose settings give ``target`` a transit fit."""
    return [
        night
        for night in all_nights()
        if target in photometry_targets(night)
        and transit_fit_settings(night, target) is not None
    ]


def joint_fit_targets():
    """Targets with a transit fit on at least two nights: each gets a joint fit."""
    targets = sorted({t for n in all_nights() for t in photometry_targets(n)})
    return [t for t in targets if len(transit_nights(t)) >= 2]


def joint_fit_inputs(wildcards):
    nights = transit_nights(wildcards.target)
    base = [work(f"{n}/{wildcards.target}/transit") for n in nights]
    return dict(
        fits=[f"{b}/transit_fit.yaml" for b in base],
        lcs=[f"{b}/transit_lc.ecsv" for b in base],
    )


def joint_fit_params(wildcards):
    """Shared settings of a target's joint fit: its transit entry on the last night (the ephemeris,
    priors and limb darkening), and the filter of that night's frames."""
    nights = transit_nights(wildcards.target)
    if not nights:
        raise WorkflowError(f"no night gives target {wildcards.target} a transit fit")
    return dict(
        settings=transit_fit_settings(nights[-1], wildcards.target),
        filter=target_filter(nights[-1], wildcards.target),
    )


def precision_summary_inputs(wildcards):
    """precision_metrics.fits of every target of every night built by the default target."""
    return [
        work(f"{night}/{target}/photometry/precision_metrics.fits")
        for night in all_nights()
        for target in photometry_targets(night)
    ]
