from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.analysis import precision_summary_stage
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
    precision_summary_stage(list(snakemake.input), snakemake.output[0])
