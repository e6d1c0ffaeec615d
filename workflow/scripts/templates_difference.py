from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.templates import write_difference

with log_to(snakemake.log[0]):
    write_difference(
        snakemake.input.frame,
        list(snakemake.input.tiles),
        snakemake.input.fit,
        snakemake.output.fits,
        snakemake.output.png,
        name=snakemake.wildcards.name,
    )
