"""Input functions and parameters of the photometry stage (rules/photometry.smk)."""


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
