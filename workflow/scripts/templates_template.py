from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.templates import parse_tag, write_template

with log_to(snakemake.log[0]):
    dx, dy = parse_tag(snakemake.wildcards.tag)
    write_template(
        snakemake.input.frame,
        list(snakemake.input.tiles),
        snakemake.input.fit,
        dx,
        dy,
        snakemake.output.fits,
        snakemake.output.png,
        name=snakemake.wildcards.name,
    )
