from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.logs import log_to
from bandersnake.templates import write_psf

cfg = snakemake.params.cfg
with log_to(snakemake.log[0]):
    write_psf(
        snakemake.input.frame,
        snakemake.output[0],
        model=cfg["psf"]["model"],
        k=cfg["supersample"],
        fwhm_arcsec=cfg["psf"]["fwhm_arcsec"],
        saturation=cfg["psf"]["saturation"],
    )
