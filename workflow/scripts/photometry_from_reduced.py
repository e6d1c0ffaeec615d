from bandersnake.logs import log_to
from bandersnake.photometry import centroid_and_photometry_from_reduced
from bandersnake.targets import resolve_target

with log_to(snakemake.log[0]):
    settings = snakemake.params.settings
    target = resolve_target(
        snakemake.input.targets,
        settings["target"],
        settings["date"],
        star0_positions=settings["centroid"]["star0_positions"],
    )
    centroid_and_photometry_from_reduced(
        list(snakemake.params.frames),
        snakemake.input.reduced,
        snakemake.params.instrument,
        settings,
        target,
        out_dir=snakemake.params.out_dir,
        threads=snakemake.threads,
    )
