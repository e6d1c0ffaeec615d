from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.calibration import master_paths, reduce_frames
from bandersnake.logs import log_to
from bandersnake.staging import staged_reads

with log_to(snakemake.log[0]):
    # Raw pixels come from the staged copies in staged runs (no-op otherwise).
    with staged_reads(snakemake.input.get("staged"), snakemake.params.frames):
        reduce_frames(
            list(snakemake.params.frames),
            master_paths(snakemake.input),
            snakemake.params.instrument,
            snakemake.output[0],
            threads=snakemake.threads,
        )
