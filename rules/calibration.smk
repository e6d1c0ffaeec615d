def calib_params(kind):
    """Clip parameters and fallback settings of one master type for a night."""

    def params(wildcards):
        cal = night_cfg(wildcards.night)["calibration_params"]
        return dict(
            clip=cal[f"{kind}_MAD_clip"],
            nlimit=cal[f"{kind}_MAD_nlimit"],
            min_frames=cal[f"min_{kind}_frames"],
        )

    return params


def fallback_params(wildcards):
    """Everything the fallback chain needs: earlier nights, master_flats.yaml, backups."""
    cal = night_cfg(wildcards.night)["calibration_params"]
    return dict(
        night=wildcards.night,
        work_root=WORK,
        max_days=cal["fallback_max_days"],
        master_flats_file=config["master_flats_file"],
        force_backup_flats=cal["force_backup_flats"],
        backup_master_bias=cal["backup_master_bias"],
        backup_master_dark=cal["backup_master_dark"],
        backup_master_flats=cal["backup_master_flats"],
    )


rule master_bias:
    """MAD-clipped master bias (ADU) and read noise (e-)."""
    input:
        frames=calib_frames("bias"),
    output:
        work("{night}/calib/master_bias.fits"),
    params:
        instrument=lambda w: instrument_cfg(w.night),
        combine=calib_params("bias"),
        fallback=fallback_params,
        memory_mb=config["processing"]["combine_memory_mb"],
    log:
        logs("{night}/logs/master_bias.log"),
    benchmark:
        bench("{night}/benchmarks/master_bias.tsv")
    resources:
        mem_mb=config["processing"]["combine_memory_mb"] + 512,
    script:
        "../workflow/scripts/master_bias.py"


rule master_dark:
    """Bias-subtracted, exposure-normalised master dark (ADU/s) and dark current."""
    input:
        frames=calib_frames("dark"),
        bias=work("{night}/calib/master_bias.fits"),
    output:
        work("{night}/calib/master_dark.fits"),
    params:
        instrument=lambda w: instrument_cfg(w.night),
        combine=calib_params("dark"),
        fallback=fallback_params,
        memory_mb=config["processing"]["combine_memory_mb"],
    log:
        logs("{night}/logs/master_dark.log"),
    benchmark:
        bench("{night}/benchmarks/master_dark.tsv")
    resources:
        mem_mb=config["processing"]["combine_memory_mb"] + 512,
    script:
        "../workflow/scripts/master_dark.py"


rule master_flat:
    """Normalised master flat for one filter, dusk and dawn combined separately then merged."""
    input:
        dusk=flat_frames("dusk"),
        dawn=flat_frames("dawn"),
        bias=work("{night}/calib/master_bias.fits"),
        dark=work("{night}/calib/master_dark.fits"),
    output:
        work("{night}/calib/master_flat_{filter}.fits"),
    params:
        instrument=lambda w: instrument_cfg(w.night),
        combine=calib_params("flat"),
        levels=lambda w: (
            night_cfg(w.night)["calibration_params"]["flat_min_level_adu"],
            night_cfg(w.night)["calibration_params"]["flat_max_level_adu"],
        ),
        fallback=fallback_params,
        memory_mb=config["processing"]["combine_memory_mb"],
    log:
        logs("{night}/logs/master_flat_{filter}.log"),
    benchmark:
        bench("{night}/benchmarks/master_flat_{filter}.tsv")
    resources:
        mem_mb=config["processing"]["combine_memory_mb"] + 512,
    script:
        "../workflow/scripts/master_flat.py"


rule bad_pixel_map:
    """Hot pixels from the dark, dead/low-response pixels from the flats (uint8 bitmask)."""
    input:
        dark=work("{night}/calib/master_dark.fits"),
        flats=lambda w: [
            work(f"{w.night}/calib/master_flat_{f}.fits") for f in science_filters(w.night)
        ],
    output:
        work("{night}/calib/bad_pixel_map.fits"),
    params:
        hot_sigma=lambda w: night_cfg(w.night)["calibration_params"]["hot_pixel_sigma"],
        low_threshold=lambda w: night_cfg(w.night)["calibration_params"][
            "low_response_threshold"
        ],
    log:
        logs("{night}/logs/bad_pixel_map.log"),
    script:
        "../workflow/scripts/bad_pixel_map.py"
