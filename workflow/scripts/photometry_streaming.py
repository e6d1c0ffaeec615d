from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.calibration import master_paths
from bandersnake.logs import log_to
from bandersnake.photometry import resolve_for_night
from bandersnake.photometry import run_streaming
from bandersnake.staging import staged_reads

with log_to(snakemake.log[0]):
    # Raw pixels come from the staged copies in staged runs (no-op otherwise).
    with staged_reads(snakemake.input.get("staged"), snakemake.params.frames):
        settings = snakemake.params.settings
        target = resolve_for_night(snakemake.input.targets, settings)
        run_streaming(
            list(snakemake.params.frames),
            master_paths(snakemake.input),
            snakemake.params.instrument,
            settings,
            target,
            out_dir=snakemake.params.out_dir,
            threads=snakemake.threads,
            save_reduced_dir=snakemake.output.get("calibrated"),
        )
