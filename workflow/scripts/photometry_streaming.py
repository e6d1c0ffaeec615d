from bandersnake.logs import log_to
from bandersnake.photometry import run_streaming
from bandersnake.staging import staged_reads
from bandersnake.targets import resolve_target

with log_to(snakemake.log[0]):
    # Raw pixels come from the staged copies in staged runs (no-op otherwise).
    with staged_reads(snakemake.input.get("staged"), snakemake.params.frames):
        settings = snakemake.params.settings
        target = resolve_target(
            snakemake.input.targets,
            settings["target"],
            settings["date"],
            star0_positions=settings["centroid"]["star0_positions"],
        )
        run_streaming(
            list(snakemake.params.frames),
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
