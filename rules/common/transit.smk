"""Input functions and parameters of the transit fits (rules/transit.smk)."""


def transit_nights(target):
    """Nights built by the default target whose settings give ``target`` a transit fit."""
    return [
        night
        for night in all_nights()
        if target in photometry_targets(night)
        and transit_fit_settings(night, target) is not None
    ]


def joint_fit_targets():
    """Targets with a transit fit on at least two nights: each gets a joint fit."""
    targets = sorted({t for n in all_nights() for t in photometry_targets(n)})
    return [t for t in targets if len(transit_nights(t)) >= 2]


def joint_fit_inputs(wildcards):
    """Every night's fit report and fitted light curve of a target."""
    nights = transit_nights(wildcards.target)
    base = [work(f"{n}/{wildcards.target}/transit") for n in nights]
    return dict(
        fits=[f"{b}/transit_fit.yaml" for b in base],
        lcs=[f"{b}/transit_lc.ecsv" for b in base],
    )


def joint_fit_params(wildcards):
    """Shared settings of a target's joint fit: its transit entry on the last night (ephemeris,
    priors, limb darkening) and the filter of that night's frames."""
    nights = transit_nights(wildcards.target)
    if not nights:
        raise WorkflowError(f"no night gives target {wildcards.target} a transit fit")
    return dict(
        settings=transit_fit_settings(nights[-1], wildcards.target),
        filter=target_filter(nights[-1], wildcards.target),
    )
