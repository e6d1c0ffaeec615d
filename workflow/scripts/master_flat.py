from bandersnake.calib import Fallback, build_master_flat
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
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
