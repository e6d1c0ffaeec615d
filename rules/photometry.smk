PHOTOMETRY_OUTPUTS = dict(
    centroids=work("{night}/{target}/centroiding/centroids.fits"),
    photometry=expand(
        work("{{night}}/{{target}}/photometry/photometry_aper{aper}.fits"),
        aper=APERTURES,
    ),
)

# Calibrated frames written by the streaming pass when asked to (a declared product, not temp).
STREAMING_OUTPUTS = dict(PHOTOMETRY_OUTPUTS)
if config["processing"]["save_reduced_frames"]:
    STREAMING_OUTPUTS["calibrated"] = directory(work("{night}/{target}/calibrated"))

if config["processing"]["path"] == "streaming":

    ruleorder: photometry_streaming > photometry_from_reduced

else:

    ruleorder: photometry_from_reduced > photometry_streaming


rule photometry_streaming:
    """One numba pass per frame: calibrate the needed pixels, centroid, sum every aperture."""
    input:
        unpack(staged_night),
        unpack(masters_for_target),
        inventory=lambda w: inventory_path(w.night),
        targets=targets_for,
    output:
        **STREAMING_OUTPUTS,
    log:
        logs("{night}/logs/photometry_streaming_{target}.log"),
    benchmark:
        bench("{night}/benchmarks/photometry_streaming_{target}.tsv")
    conda:
        "../envs/bandersnake.yaml"
    threads: config["processing"]["threads"]
    params:
        instrument=lambda w: instrument_cfg(w.night),
        frames=science_frames,
        settings=photometry_params,
        out_dir=lambda w: work(f"{w.night}/{w.target}"),
    script:
        "../workflow/scripts/photometry_streaming.py"


rule reduce_science:
    """Traditional path, step 1: calibrated SCI/ERR/MASK frames (e-) on disk."""
    input:
        unpack(staged_night),
        unpack(masters_for_target),
        inventory=lambda w: inventory_path(w.night),
    output:
        temp(directory(work("{night}/{target}/reduced"))),
    log:
        logs("{night}/logs/reduce_science_{target}.log"),
    benchmark:
        bench("{night}/benchmarks/reduce_science_{target}.tsv")
    conda:
        "../envs/bandersnake.yaml"
    threads: config["processing"]["threads"]
    params:
        instrument=lambda w: instrument_cfg(w.night),
        frames=science_frames,
    script:
        "../workflow/scripts/reduce_science.py"


rule photometry_from_reduced:
    """Traditional path, step 2: centroids and photometry from the calibrated frames."""
    input:
        reduced=work("{night}/{target}/reduced"),
        inventory=lambda w: inventory_path(w.night),
        targets=targets_for,
    output:
        **PHOTOMETRY_OUTPUTS,
    log:
        logs("{night}/logs/photometry_from_reduced_{target}.log"),
    benchmark:
        bench("{night}/benchmarks/photometry_from_reduced_{target}.tsv")
    conda:
        "../envs/bandersnake.yaml"
    threads: config["processing"]["threads"]
    params:
        instrument=lambda w: instrument_cfg(w.night),
        frames=science_frames,
        settings=photometry_params,
        out_dir=lambda w: work(f"{w.night}/{w.target}"),
    script:
        "../workflow/scripts/photometry_from_reduced.py"
