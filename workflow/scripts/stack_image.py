from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.stack import stack_night_group

with log_to(snakemake.log[0]):
    stack_night_group(
        snakemake.input.calibrated,
        snakemake.input.inventory,
        snakemake.wildcards.target,
        snakemake.wildcards.filter,
        snakemake.output.image,
        snakemake.output.frames,
        settings=snakemake.params.settings,
        instrument=snakemake.params.instrument,
        memory_mb=snakemake.params.memory_mb,
    )
