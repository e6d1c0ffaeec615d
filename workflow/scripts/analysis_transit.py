from bandersnake.analysis import transit_stage
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
    transit_stage(
        snakemake.input.differential,
        out_yaml=snakemake.output.fit,
        out_png=snakemake.output.plot,
        settings=snakemake.params.transit,
    )
