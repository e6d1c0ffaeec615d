from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.templates import fit_offsets

cfg = snakemake.params.cfg
with log_to(snakemake.log[0]):
    fit_offsets(
        snakemake.input.frame,
        list(snakemake.input.tiles),
        snakemake.output[0],
        name=snakemake.wildcards.name,
        flux_scale=cfg["flux_scale"],
        refine=cfg["refine_offset"],
        clip_sigma=cfg["clip_sigma"],
        background_box=cfg["background_box"],
    )
