from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.transitfit import transit_fit_stage

with log_to(snakemake.log[0]):
    transit_fit_stage(
        snakemake.input.differential,
        snakemake.input.centroids,
        outputs=dict(snakemake.output.items()),
        settings=snakemake.params.transit,
        flat_path=snakemake.input.flat,
        night=snakemake.wildcards.night,
        target=snakemake.wildcards.target,
        threads=snakemake.threads,
    )
