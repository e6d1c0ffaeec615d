"""Configuration: night defaults, instrument files, per-night settings, targets, backup
flats and the staging folder, each validated when the workflow is parsed."""

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
    """Instrument names whose nights are discovered: the ``instruments`` list, else every
    instrument file of instruments_dir (a YAML whose ``name`` is its file stem; a targets file
    or any other YAML beside them is not an instrument and is not validated as one)."""
    if config["instruments"]:
        return config["instruments"]
    return bconfig.instrument_names(config["instruments_dir"])


@lru_cache(maxsize=None)
def instrument_cfg(night):
    """Validated instrument dictionary of a night."""
    inst, _ = bconfig.parse_night_id(night)
    try:
        # Recorded by Snakemake as a digest: a changed instrument file reruns the jobs using it
        # without printing the whole file in their reason line.
        return Digested(
            bconfig.load_instrument(config["instruments_dir"], inst),
            label=f"instrument {inst}",
        )
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
    # Also the instrument file's night_settings (the per-night files were checked at parse time).
    problems = preflight.photometry_problems(phot, f"settings of night {night}")
    if problems:
        raise WorkflowError("\n".join(problems))
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
        return bconfig.validate(data, "targets.schema.yaml", f"targets file {path}")
    except ConfigError as err:
        raise WorkflowError(str(err))


@lru_cache(maxsize=None)
def master_flats_config():
    path = Path(config["master_flats_file"])
    data = bconfig.load_yaml(path) if path.exists() else {}
    try:
        return bconfig.validate(
            data, "master_flats.schema.yaml", f"master flats file {path}"
        )
    except ConfigError as err:
        raise WorkflowError(str(err))


# Fail at parse time, naming the file and key, rather than inside a job.
targets_config()
master_flats_config()


# Staging (rules/staging.smk): raw frames copied to a fast disk before the heavy jobs.
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
# Jobs inherit the switch of bandersnake.forkserver (processing.fork_server: false turns it off).
# Off in a cluster job's snakemake (remote mode: one job each, in its own allocation or srun
# step), where a server would serve no second job.
if not config["processing"]["fork_server"] or workflow.remote_exec:
    os.environ.update(BANDERSNAKE_FORKSERVER="0")
# Heavy jobs reading raw frames run as shadow jobs only in staged runs (their scratch then goes
# to --shadow-prefix, the fast disk); unstaged runs are unchanged (shadow rejects raw_root=../x).
SHADOW = "minimal" if STAGING else None


def staged_night(wildcards):
    """Input: the night's staged raw frames on the fast disk (nothing when not staging)."""
    return {"staged": f"{STAGING}/{wildcards.night}"} if STAGING else {}
