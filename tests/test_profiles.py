"""The SLURM profile submits a night as a few jobs (issue 22): its `groups` cover every per-night rule."""

import yaml

from conftest import ROOT

# Not in the night's group job: the inventory is a checkpoint (the rest of the night's DAG is known
# only after it ran), the precision plot joins every night (grouping it would make all nights one
# job), the demo simulation and the staging copy are local-only. Templates are not per night: their
# tiles are meant to spread over the cluster as separate jobs. Stacks and joint transit fits across
# nights join every night.
UNGROUPED = {"inventory", "precision_vs_brightness", "simulate_demo", "stage_raw", "stack_nights", "joint_fit",
             "templates", "templates_psf",
             "templates_mapping", "templates_tile", "templates_fit", "templates_template", "templates_difference"}


def _rules():
    rules = set()
    for smk in (ROOT / "rules").glob("*.smk"):
        for line in smk.read_text().splitlines():
            if line.startswith(("rule ", "checkpoint ")):
                rules.add(line.split()[1].rstrip(":"))
    return rules


def test_slurm_profile_groups_each_night():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    groups = profile["groups"]
    rules = _rules()
    assert set(groups) == rules - UNGROUPED, (
        f"rules missing from the night group: {sorted(rules - UNGROUPED - set(groups))}; "
        f"grouped but should not be: {sorted(set(groups) & UNGROUPED)}")
    assert set(groups.values()) == {"night"}


def _render_slurm_profile(monkeypatch, **env):
    import yte

    for key in ("BANDERSNAKE_SLURM_CPUS", "BANDERSNAKE_SLURM_PARTITION", "BANDERSNAKE_SLURM_ACCOUNT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return yte.process_yaml((ROOT / "profiles" / "slurm" / "config.yaml").read_text())


def test_slurm_group_job_cpus_are_capped(monkeypatch):
    """A night's group job asks for at most `cores` CPUs. Uncapped, Snakemake sums the jobs that
    could run side by side (photometry's threads + a 1-thread job): 3 CPUs on a 2-CPU node kept
    the night pending forever (Reason=PartitionConfig, measured). The cap must still let the
    default `processing.threads` run, and follow BANDERSNAKE_SLURM_CPUS."""
    schema = yaml.safe_load((ROOT / "config" / "schemas" / "config.schema.yaml").read_text())
    default_threads = schema["properties"]["processing"]["properties"]["threads"]["default"]
    assert _render_slurm_profile(monkeypatch)["cores"] == default_threads
    assert _render_slurm_profile(monkeypatch, BANDERSNAKE_SLURM_CPUS="8")["cores"] == 8
