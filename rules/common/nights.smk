"""Night discovery and the night's inventory: raw folders, nights to build, accepted frames
by type, target and filter, and the products a night publishes."""


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
        if sky_target(night, target):
            products.append(work(f"{night}/{target}/targets_resolved.yaml"))
    products += calibrated_products(night)
    products += stack_products(night)
    return products
