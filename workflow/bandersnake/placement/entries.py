"""What a targets.yaml entry asks of the placement stage (no astropy.wcs or scipy: the Snakefile
calls this at every start)."""


def needs_placement(entry):
    """True when a targets.yaml entry has no pixel positions (it gives the stars on the sky)."""
    return isinstance(entry, dict) and "all_star_positions" not in entry
