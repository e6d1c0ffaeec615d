from bandersnake.forkserver import continue_in_forkserver

continue_in_forkserver()  # the rest runs in a worker of the fork server, when one runs

from pathlib import Path

from bandersnake.ingest import make_inventory
from bandersnake.logs import log_to

with log_to(snakemake.log[0]):
    make_inventory(
        list(snakemake.params.frames),
        snakemake.params.instrument,
        out_table=snakemake.output.table,
        lists_dir=snakemake.output.lists,
        run=snakemake.params.run,
        discard_n_first_science=snakemake.params.discard,
        night=snakemake.wildcards.night,
        # Not a product: per-file records a rerun reuses for files that did not change.
        records_path=Path(snakemake.output.table).with_name("inventory_records.json"),
        workers=snakemake.threads,
    )
