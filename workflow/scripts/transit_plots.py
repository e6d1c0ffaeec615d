from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.transitfit import transit_plots_stage

with log_to(snakemake.log[0]):
    transit_plots_stage(
        snakemake.input.fit,
        snakemake.input.lc,
        snakemake.input.samples,
        snakemake.input.differential,
        outputs=dict(snakemake.output.items()),
        title=f"{snakemake.wildcards.target} {snakemake.wildcards.night}: transit fit (batman, emcee)",
    )
