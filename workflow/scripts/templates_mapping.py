from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.templates import write_mapping

cfg = snakemake.params.cfg
with log_to(snakemake.log[0]):
    write_mapping(
        snakemake.input.frame,
        list(snakemake.input.references),
        snakemake.input.psf,
        snakemake.output[0],
        tile_px=cfg["tile_px"],
        offsets=cfg["offsets"],
        band_weights=cfg["band_weights"],
        mask_suffix=cfg["mask_suffix"],
        reference_table=cfg["reference_table"],
    )
