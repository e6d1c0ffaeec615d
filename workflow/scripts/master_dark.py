from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.calibration import Fallback, build_master_dark
from bandersnake.logs import log_to
from bandersnake.staging import staged_reads

with log_to(snakemake.log[0]):
    # Raw pixels come from the staged copies in staged runs (no-op otherwise).
    with staged_reads(snakemake.input.get("staged"), snakemake.input.frames):
        build_master_dark(
            list(snakemake.input.frames),
            snakemake.input.bias,
            snakemake.output[0],
            snakemake.params.instrument,
            **snakemake.params.combine,
            memory_mb=snakemake.params.memory_mb,
            fallback=Fallback.from_settings(**snakemake.params.fallback),
            threads=snakemake.threads,
        )
