from bandersnake.logs import log_to
from bandersnake.reduce import reduce_frames

with log_to(snakemake.log[0]):
    reduce_frames(
        list(snakemake.input.frames),
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
