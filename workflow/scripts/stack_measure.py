from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.stack import measure_stack

with log_to(snakemake.log[0]):
    measure_stack(
        snakemake.input.image,
        snakemake.output.stack,
        epsf_png=snakemake.output.epsf,
        zp_png=snakemake.output.zp,
        psf_settings=snakemake.params.settings,
        catalogue_settings=snakemake.params.catalogue,
        title=snakemake.params.title,
    )
