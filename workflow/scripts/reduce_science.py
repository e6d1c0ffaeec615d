from bandersnake.logs import log_to
from bandersnake.reduce import reduce_frames
from bandersnake.staging import staged_reads

with log_to(snakemake.log[0]):
    # Raw pixels come from the staged copies in staged runs (no-op otherwise).
    with staged_reads(snakemake.input.get("staged"), snakemake.params.frames):
        reduce_frames(
            list(snakemake.params.frames),
            dict(
                bias=snakemake.input.bias,
                dark=snakemake.input.dark,
                flat=snakemake.input.flat,
                bpm=snakemake.input.bpm,
            ),
            snakemake.params.instrument,
            snakemake.output[0],
            threads=snakemake.threads,
        )
