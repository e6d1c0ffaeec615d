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
