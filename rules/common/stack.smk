"""Input functions of the deep stacks (rules/stack.smk)."""


def stack_groups(night):
    """(target, filter) of every stack of a night (accepted science frames), when stacks are on."""
    if not night_cfg(night)["stack"]["enabled"]:
        return []
    table = inventory(night)
    sel = (table["type"] == "science") & table["accepted"]
    return sorted(
        {(str(t), str(f)) for t, f in zip(table["target"][sel], table["filter"][sel])}
    )


def stack_products(night):
    """Per-night stack products: the stack, its frame table and its two plots per group."""
    products = []
    for target, filt in stack_groups(night):
        base = f"{night}/{target}/stack/{target}_{filt}"
        products += [
            work(f"{base}_stk.fits"),
            work(f"{base}_frames.ecsv"),
            work(f"{base}_epsf.png"),
            work(f"{base}_zp.png"),
        ]
    return products


def stack_catalogue(settings):
    """Catalogue settings of the zero point; online queries cached in work/catalogues by default."""
    cat = dict(settings["stack"]["catalogue"])
    if not cat.get("cache_dir"):
        cat["cache_dir"] = _abs_if_staged(work("catalogues"))
    return cat


def stack_nights_list(target, filt):
    """Nights built by the default target that have a stack of ``target`` in ``filt``."""
    return [n for n in all_nights() if (target, filt) in stack_groups(n)]


def stack_nights_inputs(wildcards):
    """Input: the nights' stacks of one target and filter."""
    nights = stack_nights_list(wildcards.target, wildcards.filter)
    if not nights:
        raise WorkflowError(
            f"stack_nights: no night with a stack of {wildcards.target} in {wildcards.filter} "
            "(stack.enabled on a night with its frames?)"
        )
    base = f"{wildcards.target}/stack/{wildcards.target}_{wildcards.filter}_stk.fits"
    return [work(f"{n}/{base}") for n in nights]


def stack_nights_settings(wildcards, full=False):
    """Stack settings of the cross-night stack: those of the first night with the target."""
    nights = stack_nights_list(wildcards.target, wildcards.filter)
    settings = night_cfg(nights[0]) if nights else NIGHT_DEFAULTS
    return settings if full else settings["stack"]


def stack_nights_targets(wildcards):
    """Input function of the default target: results/stacks/<TARGET>_<FILTER>/ of every (target, filter)
    stacked on some night (filters holding '_' are left out: the folder name would be ambiguous).
    """
    groups = sorted({g for n in all_nights() for g in stack_groups(n)})
    return [
        f"{RESULTS}/stacks/{t}_{f}/{t}_{f}_stk.fits" for t, f in groups if "_" not in f
    ]
