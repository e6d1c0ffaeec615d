from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.placement import resolve_for_rule
from bandersnake.calibration import master_paths
from bandersnake.staging import staged_reads

with log_to(snakemake.log[0]):
    with staged_reads(snakemake.input.get("staged"), snakemake.params.frames):
        resolve_for_rule(
            list(snakemake.params.frames),
            master_paths(snakemake.input),
            snakemake.params.instrument,
            snakemake.input.targets,
            snakemake.wildcards.target,
            snakemake.params.date,
            snakemake.params.photometry,
            snakemake.output[0],
            astrometry=snakemake.params.astrometry,
            threads=snakemake.threads,
        )
