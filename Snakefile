"""bandersnake: raw nights -> calibrations -> centroids -> multi-aperture photometry.

Build a night:        snakemake --cores 16 results/SPIRIT2_20251215/
Build every night:    snakemake --cores 16
Any product by path:  snakemake --cores 4 work/SPIRIT2_20251215/calib/master_bias.fits
"""

import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# The configuration is validated and checked in rules/common.smk (bandersnake.preflight): each
# problem is one line naming the file and the key, before any job runs.


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/inventory.smk"
include: "rules/calibration.smk"
include: "rules/placement.smk"
include: "rules/photometry.smk"
include: "rules/calibrated.smk"
include: "rules/astrometry.smk"
include: "rules/kbmod.smk"
include: "rules/stack.smk"
include: "rules/analysis.smk"
include: "rules/transit.smk"
include: "rules/publish.smk"
include: "rules/templates.smk"


if STAGING:

    include: "rules/staging.smk"


# Every night (listed in config or discovered under raw_root) published in results/, plus the
# multi-night precision-versus-brightness plot, every configured template, and the joint transit
# fits of results/targets/.
rule all:
    default_target: True
    input:
        default_products,
        stack_nights_targets,
        all_template_products(),
        # one joint transit fit per target fitted on two nights or more (needs the inventories)
        lambda w: [f"{RESULTS}/targets/{t}/joint_fit.yaml" for t in joint_fit_targets()],


# Snakemake re-opens its scheduler through a non-daemon timer of --max-jobs-per-timespan's span
# (1 s) after each round; Python waits for the last one before exiting: ~1 s after every run.
# When the workflow has ended they have nothing left to do.
onsuccess:
    cancel_scheduler_timers()


onerror:
    cancel_scheduler_timers()
