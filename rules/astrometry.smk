# Plate solutions of the calibrated frames with astrometry.net's solve-field (Debian index files,
# index_dir configurable); the WCS goes into work/<night>/calibrated/<stem>_CAL.fits, the raw tree
# is never touched. A frame that does not solve is flagged (ASTROSTA) and kept.


rule astrometry:
    """WCS of every calibrated frame (hinted by the header, then the previous solution) and the night's summary."""
    input:
        stage=work("{night}/calibrated_stage"),
    output:
        calibrated=directory(work("{night}/calibrated")),
        wcs=directory(work("{night}/astrometry/wcs")),
        summary=work("{night}/astrometry/astrometry_summary.ecsv"),
    log:
        logs("{night}/logs/astrometry.log"),
    benchmark:
        bench("{night}/benchmarks/astrometry.tsv")
    conda:
        "../envs/bandersnake.yaml"
    threads: config["processing"]["threads"]
    params:
        instrument=lambda w: instrument_cfg(w.night),
        settings=lambda w: night_cfg(w.night)["astrometry"],
        enabled=lambda w: night_cfg(w.night)["astrometry"]["enabled"]
        or night_cfg(w.night)["kbmod"]["enabled"],
    script:
        "../workflow/scripts/astrometry.py"
