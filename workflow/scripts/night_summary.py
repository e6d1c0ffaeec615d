from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.publish import night_summary

with log_to(snakemake.log[0]):
    night_summary(
        snakemake.params.night,
        list(snakemake.input),
        snakemake.output[0],
        without_positions=snakemake.params.without_positions,
    )
