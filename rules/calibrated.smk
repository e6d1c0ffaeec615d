# Calibrated science frames of a night (any instrument; on by default for ASTEP): one job per
# night, so the DAG grows with nights, not frames. The frames go to a temporary stage folder; the
# astrometry rule (rules/astrometry.smk) adds the WCS and writes work/<night>/calibrated/.


rule master_dark_exptime:
    """Exposure-matched master dark (ADU/s) from the darks of one exposure time only."""
    input:
        unpack(staged_night),
        frames=matched_dark_frames,
        bias=work("{night}/calib/master_bias.fits"),
    output:
        work("{night}/calib/master_dark_{exptime}s.fits"),
    log:
        logs("{night}/logs/master_dark_{exptime}s.log"),
    benchmark:
        bench("{night}/benchmarks/master_dark_{exptime}s.tsv")
    shadow:
        SHADOW
    conda:
        "../envs/bandersnake.yaml"
    resources:
        mem_mb=config["processing"]["combine_memory_mb"] + 512,
    params:
        instrument=lambda w: instrument_cfg(w.night),
        combine=calib_params("dark"),
        fallback=fallback_params,
        memory_mb=config["processing"]["combine_memory_mb"],
    script:
        "../workflow/scripts/master_dark_exptime.py"


rule calibrate_frames:
    """SCI/ERR/MASK (e-) of every accepted science frame, darks matched by exposure, cosmic rays flagged."""
    input:
        unpack(staged_night),
        unpack(calibrated_inputs),
    output:
        temp(directory(work("{night}/calibrated_stage"))),
    log:
        logs("{night}/logs/calibrate_frames.log"),
    benchmark:
        bench("{night}/benchmarks/calibrate_frames.tsv")
    shadow:
        SHADOW
    conda:
        "../envs/bandersnake.yaml"
    threads: config["processing"]["threads"]
    params:
        instrument=lambda w: instrument_cfg(w.night),
        calibrated=calibrated_params,
    script:
        "../workflow/scripts/calibrate_frames.py"
