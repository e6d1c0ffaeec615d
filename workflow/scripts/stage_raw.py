from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.ingest import read_inventory
from bandersnake.logs import log_to
from bandersnake.staging import frames_to_stage, stage_frames

with log_to(snakemake.log[0]):
    stage_frames(frames_to_stage(read_inventory(snakemake.input.inventory)), snakemake.output[0])
