"""Input functions of the placement stage (rules/placement.smk): targets given on the sky."""


def sky_target(night, target):
    """True when targets.yaml gives ``target`` on the sky (ra/dec, no pixel positions) for ``night``."""
    from bandersnake.photometry.targets import _pick_entry
    from bandersnake.placement import needs_placement

    targets = targets_config()["targets"]
    key = next((k for k in targets if sanitize_name(k) == target), None)
    if key is None:
        return False
    try:
        entry, _ = _pick_entry(targets[key], night_date(night), f"targets.{key}")
    except ConfigError:
        return False
    return needs_placement(entry)


def targets_for(wildcards):
    """The positions the photometry of (night, target) uses: targets.yaml, or the resolved file
    written by the resolve_targets job when targets.yaml gives the target on the sky."""
    if sky_target(wildcards.night, wildcards.target):
        return work(f"{wildcards.night}/{wildcards.target}/targets_resolved.yaml")
    return config["targets_file"]
