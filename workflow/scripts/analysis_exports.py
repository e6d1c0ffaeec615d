from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from bandersnake.analysis import exports_stage, filter_of_master_flat
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
    exports_stage(
        snakemake.input.differential,
        snakemake.input.centroids,
        outputs=dict(snakemake.output.items()),
        instrument_name=snakemake.params.instrument_name,
        target=snakemake.wildcards.target,
        filter_name=filter_of_master_flat(snakemake.input.flat),
        export_settings=snakemake.params.exports,
    )
