from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.calibration import build_bad_pixel_map
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
    build_bad_pixel_map(
        snakemake.input.dark,
        list(snakemake.input.flats),
        snakemake.output[0],
        hot_sigma=snakemake.params.hot_sigma,
        low_threshold=snakemake.params.low_threshold,
    )
