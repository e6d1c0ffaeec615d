"""Input functions and parameters of the calibration stage (rules/calibration.smk)."""


def skipped(night, kind):
    """Whether the night does without calibration ``kind`` (``calibration_params.skip``)."""
    return kind in night_cfg(night)["calibration_params"]["skip"]


def calib_frames(frame_type, **match):
    """Input function: accepted frames of one type from the night's inventory (none when the
    night skips that calibration)."""

    def frames(wildcards):
        if skipped(wildcards.night, frame_type):
            return []
        wanted = {k: getattr(wildcards, v) for k, v in match.items()}
        return list_files(inventory(wildcards.night), frame_type, **wanted)

    return frames


def flat_frames(session):
    def frames(wildcards):
        if skipped(wildcards.night, "flat"):
            return []
        table = inventory(wildcards.night)
        return list_files(table, "flat", filter=wildcards.filter, session=session)

    return frames


def science_shape(night):
    """Most common raw ``[ny, nx]`` of the night's accepted science frames (shape of skipped
    masters when the instrument file gives none), or None."""
    table = inventory(night)
    sel = (table["type"] == "science") & table["accepted"]
    shapes = [
        (int(ny), int(nx)) for ny, nx in zip(table["naxis2"][sel], table["naxis1"][sel])
    ]
    return list(max(set(shapes), key=shapes.count)) if shapes else None


def calib_params(kind):
    """Clip parameters of one master type for a night."""

    def params(wildcards):
        cal = night_cfg(wildcards.night)["calibration_params"]
        return dict(
            clip=cal[f"{kind}_MAD_clip"],
            nlimit=cal[f"{kind}_MAD_nlimit"],
            min_frames=cal[f"min_{kind}_frames"],
        )

    return params


def _abs_if_staged(path):
    return os.path.abspath(path) if STAGING else path


def fallback_params(wildcards):
    """What the fallback chain needs: the night's calibration_params and where to look."""
    return dict(
        night=wildcards.night,
        calibration_params=night_cfg(wildcards.night)["calibration_params"],
        # Absolute: shadow jobs (staged runs) run in another directory.
        # Shadowed (staged) jobs run in a scratch folder: they need absolute paths. Unstaged
        # runs keep relative ones so moving the project does not rerun the masters.
        search_roots=[_abs_if_staged(WORK), _abs_if_staged(RESULTS)],
        master_flats_file=_abs_if_staged(config["master_flats_file"]),
        raw_shape=(
            science_shape(wildcards.night)
            if night_cfg(wildcards.night)["calibration_params"]["skip"]
            else None
        ),
    )


def flat_dark(wildcards):
    """Master dark for the flats of a filter: matched to their most common exposure time when
    ``dark_exposure_matching`` is on and darks of it exist (ASTEP's SKYFLAT darks), else the
    all-exposure master dark. For rule master_flat's ``dark`` input."""
    night = wildcards.night
    cal = night_cfg(night)["calibration_params"]
    if cal["dark_exposure_matching"]:
        table = inventory(night)
        sel = (
            (table["type"] == "flat")
            & table["accepted"]
            & (table["filter"] == wildcards.filter)
        )
        times = [float(t) for t in table["exptime"][sel]]
        if times:
            common = max(set(times), key=times.count)
            match = dark_plan(table, [common], cal["min_dark_frames"])[common]
            if match is not None:
                return matched_dark_path(night, match)
    return work(f"{night}/calib/master_dark.fits")


def matched_dark_path(night, exptime):
    return work(f"{night}/calib/master_dark_{exptime_tag(exptime)}s.fits")


def dark_matching(night):
    """``{science exposure (s): matched master dark or None}`` when ``dark_exposure_matching``
    is on (None: too few darks of that exposure, the all-exposure master dark is scaled).
    """
    cal = night_cfg(night)["calibration_params"]
    if not cal["dark_exposure_matching"]:
        return {}
    table = inventory(night)
    plan = dark_plan(table, exposure_times(table, "science"), cal["min_dark_frames"])
    return {t: (matched_dark_path(night, m) if m else None) for t, m in plan.items()}


def matched_dark_frames(wildcards):
    """Accepted darks of one exposure time (``{exptime}`` wildcard, s)."""
    return list_files_exptime(
        inventory(wildcards.night), "dark", float(wildcards.exptime)
    )
