from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.analysis import differential_stage
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
    a = snakemake.params.analysis
    differential_stage(
        snakemake.input.photometry,
        snakemake.input.centroids,
        bias_path=snakemake.input.bias,
        dark_path=snakemake.input.dark,
        instrument=a["instrument"],
        settings=a["settings"],
        outputs=dict(snakemake.output.items()),
        night=a["night"],
        target=a["target"],
    )
