from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.publish import publish_night

with log_to(snakemake.log[0]):
    publish_night(
        list(snakemake.input.products) + [snakemake.input.summary],
        work_night=snakemake.params.work_night,
        out_dir=snakemake.output[0],
    )
