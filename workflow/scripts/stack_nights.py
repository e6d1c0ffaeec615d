from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.stack import stack_nights

with log_to(snakemake.log[0]):
    stack_nights(
        snakemake.input.stacks,
        snakemake.output.stack,
        snakemake.output.nights,
        epsf_png=snakemake.output.epsf,
        zp_png=snakemake.output.zp,
        settings=snakemake.params.settings,
        catalogue_settings=snakemake.params.catalogue,
        memory_mb=snakemake.params.memory_mb,
        title=snakemake.params.title,
    )
