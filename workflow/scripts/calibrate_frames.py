from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.calibration import calibrate_night, frames_from_inventory
from bandersnake.logs import log_to
from bandersnake.staging import staged_reads

with log_to(snakemake.log[0]):
    # Raw pixels come from the staged copies in staged runs (no-op otherwise).
    with staged_reads(snakemake.input.get("staged"), snakemake.input.frames):
        p = snakemake.params.calibrated
        calibrate_night(
            frames_from_inventory(snakemake.input.inventory, list(snakemake.input.frames)),
            dict(
                bias=snakemake.input.bias,
                dark=snakemake.input.dark,
                bpm=snakemake.input.bpm,
                flats=p["flats"],
            ),
            snakemake.params.instrument,
            snakemake.output[0],
            darks=p["darks"],
            suffix=p["settings"]["suffix"],
            grow=p["settings"]["grow"],
            find_cosmics=p["settings"]["cosmics"],
            cosmics_config=p["cosmics"],
            threads=snakemake.threads,
            cosmics_method=p["settings"]["cosmics_method"],
        )
