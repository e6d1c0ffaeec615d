from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.calibration import solve_night
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
    solve_night(
        snakemake.input.stage,
        snakemake.output.calibrated,
        snakemake.output.wcs,
        snakemake.output.summary,
        snakemake.params.instrument,
        snakemake.params.settings,
        enabled=snakemake.params.enabled,
        threads=snakemake.threads,
    )
