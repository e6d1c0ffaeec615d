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
