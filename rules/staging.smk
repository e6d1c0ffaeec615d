# Staged runs (config `staging_dir`, or `--shadow-prefix` with the staged profile): each night's
# accepted raw frames are copied to the fast disk once, read from there by the heavy jobs, and
# deleted when the last of them is done (temp). Copies take the `nas_io` resource, so with
# `--resources nas_io=1` they do not compete for the NAS; the copy of night N+1 runs while
# night N is processed.


rule stage_raw:
    """Copy a night's accepted raw frames from the raw tree (NAS) to the fast disk."""
    input:
        inventory=lambda w: inventory_path(w.night),
    output:
        temp(directory(f"{STAGING}/{{night}}")),
    log:
        logs("{night}/logs/stage_raw.log"),
    conda:
        "../envs/bandersnake.yaml"
    resources:
        nas_io=1,
        mem_mb=500,
    params:
        night="{night}",
    script:
        "../workflow/scripts/stage_raw.py"
