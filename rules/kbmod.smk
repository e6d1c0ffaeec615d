rule kbmod_frames:
    """KBMOD-ready frames (header with mid-exposure MJD, SCI, MASK, VAR; WCS) of the solved frames."""
    input:
        work("{night}/calibrated"),
    output:
        directory(work("{night}/kbmod")),
    log:
        logs("{night}/logs/kbmod_frames.log"),
    benchmark:
        bench("{night}/benchmarks/kbmod_frames.tsv")
    conda:
        "../envs/bandersnake.yaml"
    params:
        date_obs_is=lambda w: instrument_cfg(w.night)["date_obs_is"],
        settings=lambda w: night_cfg(w.night)["kbmod"],
        suffix=lambda w: night_cfg(w.night)["calibrated_frames"]["suffix"],
    script:
        "../workflow/scripts/kbmod_frames.py"
