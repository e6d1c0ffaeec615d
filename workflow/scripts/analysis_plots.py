from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.analysis import plots_stage
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
    plots_stage(
        snakemake.input.differential,
        snakemake.input.centroids,
        snakemake.input.metrics,
        out_paths=dict(snakemake.output.items()),
        bin_min=snakemake.params.bin_min,
    )
