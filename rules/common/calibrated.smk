"""Input functions of the calibrated-frame stages (rules/calibrated.smk, astrometry.smk, kbmod.smk)."""


def wants_calibrated(night):
    """Calibrated frames are built when enabled, or needed by astrometry / KBMOD / the stacks."""
    s = night_cfg(night)
    return (
        s["calibrated_frames"]["enabled"]
        or s["astrometry"]["enabled"]
        or s["kbmod"]["enabled"]
        or s["stack"]["enabled"]
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
