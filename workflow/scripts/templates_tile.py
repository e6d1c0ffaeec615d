from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.templates import build_tile

cfg = snakemake.params.cfg
with log_to(snakemake.log[0]):
    build_tile(
        snakemake.input.frame,
        snakemake.input.mapping,
        snakemake.input.psf,
        snakemake.wildcards.tile,
        snakemake.output[0],
        k=cfg["supersample"],
        band_weights=cfg["band_weights"],
        offsets=cfg["offsets"],
        ignore_mask_bits=cfg["ignore_mask_bits"],
        fill=cfg["fill"],
        min_coverage=cfg["min_coverage"],
        mask_suffix=cfg["mask_suffix"],
        reference_table=cfg["reference_table"],
    )
