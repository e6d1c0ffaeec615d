from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.calibration import kbmod_night
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
    kbmod_night(
        snakemake.input[0],
        snakemake.output[0],
        date_obs_is=snakemake.params.date_obs_is,
        subtract_background=snakemake.params.settings["subtract_background"],
        suffix=snakemake.params.suffix,
    )
