from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.transitfit import joint_fit_stage

with log_to(snakemake.log[0]):
    joint_fit_stage(
        snakemake.input.fits,
        snakemake.input.lcs,
        out_yaml=snakemake.output.fit,
        out_png=snakemake.output.plot,
        settings=snakemake.params.joint["settings"],
        filter_name=snakemake.params.joint["filter"],
        target=snakemake.wildcards.target,
    )
