"""Configuration checked when the workflow is parsed (bandersnake.preflight): every problem of the
configuration files, raw_root and the nights named on the command line or in ``nights``, one
line each, before any job runs."""

DEFAULT_RAW_ROOT = "demo/raw"  # config/config.yaml's: made by `snakemake simulate_demo`


def _preflight():
    """Problems of the configuration, and of the nights named on the command line or in
    ``nights`` (their raw folders), found when the workflow is parsed."""
    problems = preflight.check_workflow(config)
    if problems:
        return problems
    root = config["raw_root"]
    nights = list(config["nights"]) + preflight.requested_nights(
        sys.argv[1:], [config["results_dir"], config["work_dir"]]
    )
    if nights or root != DEFAULT_RAW_ROOT:
        missing = preflight.raw_root_problem(root, DEFAULT_RAW_ROOT)
        if missing:
            return [missing]
    for night in nights:
        inst, _ = bconfig.parse_night_id(night)
        try:
            layout = bconfig.instrument_layout(
                bconfig.load_instrument(config["instruments_dir"], inst),
                config["raw_layout"],
            )
        except ConfigError as err:
            problems.append(f"night {night}: {err}")
            continue
        problem = preflight.check_night_raw(night, layout, root)
        if problem:
            problems.append(problem)
    return problems


_problems = _preflight()
if _problems:
    _stop(_problems)
