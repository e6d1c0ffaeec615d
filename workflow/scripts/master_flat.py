from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.calibration import Fallback, build_master_flat
from bandersnake.logs import log_to
from bandersnake.staging import staged_reads

with log_to(snakemake.log[0]):
    # Raw pixels come from the staged copies in staged runs (no-op otherwise).
    with staged_reads(snakemake.input.get("staged"), list(snakemake.input.dusk) + list(snakemake.input.dawn)):
        min_level, max_level = snakemake.params.levels
        build_master_flat(
            list(snakemake.input.dusk),
            list(snakemake.input.dawn),
            snakemake.input.bias,
            snakemake.input.dark,
            snakemake.output[0],
            snakemake.wildcards.filter,
            snakemake.params.instrument,
            **snakemake.params.combine,
            min_level=min_level,
            max_level=max_level,
            memory_mb=snakemake.params.memory_mb,
            fallback=Fallback.from_settings(**snakemake.params.fallback),
            threads=snakemake.threads,
        )
