from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.photometry import centroid_and_photometry_from_reduced
from bandersnake.photometry import resolve_for_night

with log_to(snakemake.log[0]):
    settings = snakemake.params.settings
    target = resolve_for_night(snakemake.input.targets, settings)
    centroid_and_photometry_from_reduced(
        list(snakemake.params.frames),
        snakemake.input.reduced,
        snakemake.params.instrument,
        settings,
        target,
        out_dir=snakemake.params.out_dir,
        threads=snakemake.threads,
    )
