from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.calibration import Fallback, build_master_bias, check_night_calibrations
from bandersnake.logs import log_to
from bandersnake.staging import staged_reads

with log_to(snakemake.log[0]):
    fallback = Fallback.from_settings(**snakemake.params.fallback)
    # The night's first master job: every master without a source is named here, at once.
    check_night_calibrations(snakemake.input.inventory, snakemake.params.fallback["calibration_params"], fallback)
    # Raw pixels come from the staged copies in staged runs (no-op otherwise).
    with staged_reads(snakemake.input.get("staged"), snakemake.input.frames):
        build_master_bias(
            list(snakemake.input.frames),
            snakemake.output[0],
            snakemake.params.instrument,
            **snakemake.params.combine,
            memory_mb=snakemake.params.memory_mb,
            fallback=fallback,
            threads=snakemake.threads,
        )
