from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from pathlib import Path

from bandersnake.logs import log_to
from bandersnake.sim import demo_config, simulate_night

with log_to(snakemake.log[0]):
    # output.raw is <raw_root>/<INST>/images/<YYYYMMDD>
    raw_root = Path(snakemake.output.raw).parents[2]
    simulate_night(raw_root, snakemake.output.truth, demo_config(**snakemake.params.overrides), snakemake.params.instrument)
