from bandersnake.logs import log_to
from bandersnake.photometry import run_streaming
from bandersnake.targets import resolve_target

with log_to(snakemake.log[0]):
    settings = snakemake.params.settings
    target = resolve_target(
        snakemake.input.targets,
        settings["target"],
        settings["date"],
        star0_positions=settings["centroid"]["star0_positions"],
    )
    run_streaming(
        list(snakemake.input.frames),
        dict(
            bias=snakemake.input.bias,
            dark=snakemake.input.dark,
            flat=snakemake.input.flat,
            bpm=snakemake.input.bpm,
        ),
        snakemake.params.instrument,
        settings,
        target,
        out_dir=snakemake.params.out_dir,
        threads=snakemake.threads,
        save_reduced_dir=snakemake.output.get("calibrated"),
    )
