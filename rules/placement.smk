# Targets given on the sky (targets.yaml entries with ra/dec and no pixel positions): placed
# through the night's WCS (header WCS, else solve-field on one frame), comparison stars chosen,
# written in the targets.yaml format for the photometry jobs (rules/photometry.smk, targets_for).


rule resolve_targets:
    """Pixel positions, comparison stars and tracking star of a target given by RA/Dec."""
    input:
        unpack(staged_night),
        unpack(masters_for_target),
        inventory=lambda w: inventory_path(w.night),
        targets=config["targets_file"],
    output:
        work("{night}/{target}/targets_resolved.yaml"),
    log:
        logs("{night}/logs/resolve_targets_{target}.log"),
    benchmark:
        bench("{night}/benchmarks/resolve_targets_{target}.tsv")
    conda:
        "../envs/bandersnake.yaml"
    threads: config["processing"]["threads"]
    params:
        instrument=lambda w: instrument_cfg(w.night),
        frames=science_frames,
        date=lambda w: night_date(w.night),
        photometry=lambda w: night_cfg(w.night)["photometry_settings"],
        astrometry=lambda w: night_cfg(w.night)["astrometry"],
    script:
        "../workflow/scripts/resolve_targets.py"
