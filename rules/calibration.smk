rule master_bias:
    """MAD-clipped master bias (ADU) and read noise (e-)."""
    input:
        unpack(staged_night),
        frames=calib_frames("bias"),
        # Read for the up-front check of every master's source; ancient: a rewritten inventory
        # (a science frame added) does not re-run the masters.
        inventory=ancient(work("{night}/calib/inventory.ecsv")),
    output:
        work("{night}/calib/master_bias.fits"),
    log:
        logs("{night}/logs/master_bias.log"),
    benchmark:
        bench("{night}/benchmarks/master_bias.tsv")
    shadow:
        SHADOW
    conda:
        "../envs/bandersnake.yaml"
    # The masters run one after another with nothing beside them: the combine uses every core.
    threads: config["processing"]["threads"]
    resources:
        mem_mb=config["processing"]["combine_memory_mb"] + 512,
    params:
        instrument=lambda w: instrument_cfg(w.night),
        combine=calib_params("bias"),
        fallback=fallback_params,
        memory_mb=config["processing"]["combine_memory_mb"],
    script:
        "../workflow/scripts/master_bias.py"


rule master_dark:
    """Bias-subtracted, exposure-normalised master dark (ADU/s) and dark current."""
    input:
        unpack(staged_night),
        frames=calib_frames("dark"),
        bias=work("{night}/calib/master_bias.fits"),
    output:
        work("{night}/calib/master_dark.fits"),
    log:
        logs("{night}/logs/master_dark.log"),
    benchmark:
        bench("{night}/benchmarks/master_dark.tsv")
    shadow:
        SHADOW
    conda:
        "../envs/bandersnake.yaml"
    threads: config["processing"]["threads"]
    resources:
        mem_mb=config["processing"]["combine_memory_mb"] + 512,
    params:
        instrument=lambda w: instrument_cfg(w.night),
        combine=calib_params("dark"),
        fallback=fallback_params,
        memory_mb=config["processing"]["combine_memory_mb"],
    script:
        "../workflow/scripts/master_dark.py"


rule master_flat:
    """Normalised master flat for one filter, dusk and dawn combined separately then merged."""
    input:
        unpack(staged_night),
        dusk=flat_frames("dusk"),
        dawn=flat_frames("dawn"),
        bias=work("{night}/calib/master_bias.fits"),
        dark=flat_dark,
    output:
        work("{night}/calib/master_flat_{filter}.fits"),
    log:
        logs("{night}/logs/master_flat_{filter}.log"),
    benchmark:
        bench("{night}/benchmarks/master_flat_{filter}.tsv")
    shadow:
        SHADOW
    conda:
        "../envs/bandersnake.yaml"
    threads: config["processing"]["threads"]
    resources:
        mem_mb=config["processing"]["combine_memory_mb"] + 512,
    params:
        instrument=lambda w: instrument_cfg(w.night),
        combine=calib_params("flat"),
        levels=lambda w: (
            night_cfg(w.night)["calibration_params"]["flat_min_level_adu"],
            night_cfg(w.night)["calibration_params"]["flat_max_level_adu"],
        ),
        fallback=fallback_params,
        memory_mb=config["processing"]["combine_memory_mb"],
    script:
        "../workflow/scripts/master_flat.py"


rule bad_pixel_map:
    """Hot pixels from the dark, dead/low-response pixels from the flats (uint8 bitmask)."""
    input:
        dark=work("{night}/calib/master_dark.fits"),
        flats=lambda w: [
            work(f"{w.night}/calib/master_flat_{f}.fits")
            for f in flat_filters(w.night)
        ],
    output:
        work("{night}/calib/bad_pixel_map.fits"),
    log:
        logs("{night}/logs/bad_pixel_map.log"),
    conda:
        "../envs/bandersnake.yaml"
    params:
        hot_sigma=lambda w: night_cfg(w.night)["calibration_params"]["hot_pixel_sigma"],
        low_threshold=lambda w: night_cfg(w.night)["calibration_params"][
            "low_response_threshold"
        ],
    script:
        "../workflow/scripts/bad_pixel_map.py"
