"""Workflow entry points of the transit fits: one function per rule of ``rules/transit.smk``.

A fit that cannot run (too few points, no dip, an unknown regressor) or a night whose analysis
failed does not stop the workflow: the YAML says ``success: false`` with the reason and the
figures say it too. Any other exception is a bug and fails the job.
"""

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("bandersnake.transitfit")


def _write_yaml(report, path):
    import yaml

    from ..fitsio import write_text
    from .night import plain

    write_text(yaml.safe_dump(plain(report), sort_keys=False), path)


def _not_fitted(outputs, report, why):
    """Products of a fit that did not run: the YAML saying why, a light-curve file and a samples
    table with no rows (the figures say why too: :func:`transit_plots_stage`)."""
    from ..fitsio import write_text

    write_text(f"# transit fit not done: {why}\n", outputs["lc"])
    write_samples({}, outputs["samples"], {"NIGHT": report["night"], "TARGET": report["target"],
                                           "NOTFIT": why[:68]})
    _write_yaml(report, outputs["fit"])


def write_samples(samples, path, meta=None):
    """Posterior samples as a FITS binary table: one column per quantity, units in the header.

    Parameters
    ----------
    samples : dict of ndarray
        Equal-length sample arrays per quantity (``t0`` in d BJD_TDB, ``t14`` in d, ...); empty
        for a fit that did not run.
    meta : dict, optional
        Header keywords (night, target, why a fit did not run).
    """
    from astropy.table import Table

    from ..fitsio import atomic_path

    table = Table()
    for name, values in samples.items():
        table[name] = np.asarray(values, float)
        unit = SAMPLE_UNITS.get(name)
        if unit:
            table[name].unit = unit
    for key, value in (meta or {}).items():
        table.meta[key] = value
    with atomic_path(path) as tmp:
        table.write(tmp, format="fits", overwrite=True)
    return Path(path)


def read_samples(path):
    """Posterior samples of :func:`write_samples` (dict of ndarray, units dropped)."""
    from astropy.table import Table

    table = Table.read(path, format="fits")
    return {name: np.asarray(table[name], float) for name in table.colnames}


# FITS units of the sampled and derived quantities (see fit.UNITS); dimensionless ones have none
SAMPLE_UNITS = {"t0": "d", "t14": "d", "stellar_density": "g / cm3", "inc_deg": "deg"}


def transit_fit_stage(differential_path, centroid_path, outputs, settings, filter_name=None, night="",
                      target="", flat_path=None, threads=1):
    """Transit fit of one (night, target) (rule ``transit_fit``).

    Parameters
    ----------
    differential_path, centroid_path : path
        ``photometry/differential.fits`` and ``centroiding/centroids.fits`` (the photometry tables
        of the fitted aperture are read beside ``differential.fits`` when regressors are asked).
    outputs : dict
        ``fit`` (YAML), ``lc`` (ECSV: the light curve and the posterior-median model),
        ``samples`` (FITS table of the posterior samples); the figures are drawn from these by
        :func:`transit_plots_stage`.
    settings : dict
        The target's ``analysis_settings.transit`` entry.
    filter_name : str, optional
        The science filter (limb darkening from the table).
    flat_path : path, optional
        The target's master flat: its FILTER keyword gives ``filter_name`` when that is not given.
    threads : int
        Processes to use (2: two MCMC ensembles side by side; :func:`~.sampler.run_mcmc`).

    Returns
    -------
    dict
        The YAML report.
    """
    from ..analysis.differential import read_differential
    from ..analysis.status import STATUS_FAILED, analysis_failure, failure_text
    from .fit import fit_night
    from .limbdark import limb_darkening_prior
    from .night import night_inputs, report_dict, write_lc_table

    s = dict(settings or {})
    aperture = s.pop("aperture", None)
    if filter_name is None and flat_path is not None:
        from ..analysis.stages import filter_of_master_flat

        filter_name = filter_of_master_flat(flat_path)
    reason = analysis_failure(differential_path)
    if reason is not None:
        why = failure_text(reason)
        log.warning("%s: %s; no transit fit", differential_path, why)
        report = {"success": False, "analysis_status": STATUS_FAILED, "message": why, "aperture": None,
                  "night": night, "target": target, "settings": s}
        _not_fitted(outputs, report, why)
        return report
    try:
        inputs = night_inputs(differential_path, centroid_path, s, aperture)
        ld = limb_darkening_prior(s, filter_name)
        res = fit_night(inputs["t"], inputs["flux"], inputs["err"], {**s, "threads": int(threads)},
                        inputs["regressors"], inputs["exptime_s"], ld=ld, name=night)
    except ValueError as err:
        table = read_differential(differential_path, aperture)
        why = f"transit fit not possible: {err}"
        log.warning("%s: %s", differential_path, why)
        report = {"success": False, "message": why, "aperture": float(table["_header"]["APERRAD"]),
                  "night": night, "target": target, "settings": s}
        _not_fitted(outputs, report, why)
        return report
    report = report_dict(res, s, night=night, target=target, aperture=inputs["aperture"])
    write_lc_table(inputs, res, s, outputs["lc"], night=night, target=target)
    write_samples(res["samples"], outputs["samples"], {"NIGHT": night, "TARGET": target})
    _write_yaml(report, outputs["fit"])
    p = report
    nz = p["noise"]
    noise = (f"GP {nz['gp']['kernel']}: red {1e3 * nz['gp']['sigma']['median']:.2f} ppt on "
             f"{nz['gp']['tau_min']['median']:.0f} min" if "gp" in nz else f"{nz['model']}, beta {nz['beta']:.2f}")
    log.info("%s %s: T0 %.5f +%.5f -%.5f BJD_TDB, rp_rs_sq %.2f +%.2f -%.2f ppt, max_flux_drop %.2f ppt, "
             "b %.2f, noise %s, %d steps x %d walkers x %d ensemble(s) (tau %.0f)", target, night, p["t0"]["median"],
             p["t0"]["plus"], p["t0"]["minus"], 1e3 * p["rp_rs_sq"]["median"], 1e3 * p["rp_rs_sq"]["plus"],
             1e3 * p["rp_rs_sq"]["minus"], 1e3 * p["max_flux_drop"]["median"], p["b"]["median"],
             noise, p["chain"]["n_steps"], p["chain"]["n_walkers"], p["chain"].get("n_ensembles", 1),
             max(p["chain"]["tau"]))
    return report


def transit_plots_stage(fit_path, lc_path, samples_path, differential_path, outputs, title="Transit fit"):
    """Figures of a night's transit fit (rule ``transit_plots``): the detrended light curve with the
    posterior-median model and residuals, and the corner plot of the samples. A fit that did not
    run gets figures saying why (with the light curve when the analysis had one).

    Parameters
    ----------
    fit_path, lc_path, samples_path : path
        ``transit_fit.yaml``, ``transit_lc.ecsv`` and ``transit_samples.fits`` of the fit.
    differential_path : path
        ``photometry/differential.fits`` (the light curve shown when the fit did not run).
    outputs : dict
        ``plot`` and ``corner`` (PNG).
    """
    import yaml

    from ..analysis.differential import read_differential
    from ..analysis.plots import plot_not_possible, plot_transit_note
    from ..analysis.status import analysis_failure
    from .plots import plot_corner, plot_night_fit

    report = yaml.safe_load(Path(fit_path).read_text())
    if not report.get("success"):
        why = report.get("message", "transit fit not done")
        reason = analysis_failure(differential_path)
        if reason is not None:
            plot_not_possible(outputs["plot"], reason, "Transit fit")
            plot_not_possible(outputs["corner"], reason, "Transit fit posterior")
            return
        table = read_differential(differential_path, report.get("aperture"))
        ok = table["frame_ok"].astype(bool)
        for key in ("plot", "corner"):
            plot_transit_note(table["BJD_TDB"][ok], table["diff_flux"][ok], outputs[key], why)
        return
    from .night import read_lc_table

    lc, _ = read_lc_table(lc_path)
    best = {"t": lc["t"], "flux": lc["flux"], "transit": lc["transit_model"], "baseline": lc["baseline"],
            "model": lc["model"], "red_noise": lc.get("red_noise")}
    res = {"best": best, "t0": report["t0"], "parameters": report}
    plot_night_fit(res, outputs["plot"], title=title)
    plot_corner(read_samples(samples_path), outputs["corner"])


def joint_fit_stage(fit_paths, lc_paths, out_yaml, out_png, settings, filter_name=None, target=""):
    """Joint fit of every night of a target (rule ``joint_fit``).

    Nights whose single fit failed are left out (listed in the YAML); with fewer than two usable
    nights the YAML says ``success: false`` and why.
    """
    import yaml

    from ..analysis.plots import plot_not_possible
    from .joint import fit_joint
    from .limbdark import limb_darkening_prior
    from .night import plain, read_lc_table

    s = dict(settings or {})
    s.pop("aperture", None)
    nights, skipped = [], []
    for fit_path, lc_path in zip(fit_paths, lc_paths):
        fit = yaml.safe_load(Path(fit_path).read_text()) or {}
        name = fit.get("night") or Path(fit_path).parent.parent.parent.name
        if not fit.get("success"):
            skipped.append({"night": name, "reason": fit.get("message", "fit failed")})
            continue
        inp, meta = read_lc_table(lc_path)
        night_settings = meta.get("settings") or {}
        inp["settings"] = {k: night_settings[k] for k in ("t0", "window", "duration") if k in night_settings}
        nights.append((name, inp))
    report = {"target": target, "nights_skipped": skipped}
    if len(nights) < 2:
        why = f"joint fit needs two nights with a successful fit, found {len(nights)}"
        report.update(success=False, message=why, nights=[n for n, _ in nights])
        plot_not_possible(out_png, why, f"{target}: joint transit fit")
        _write_yaml(report, out_yaml)
        return report
    try:
        res = fit_joint(nights, s, limb_darkening_prior(s, filter_name))
    except ValueError as err:
        why = f"joint fit not possible: {err}"
        report.update(success=False, message=why, nights=[n for n, _ in nights])
        plot_not_possible(out_png, why, f"{target}: joint transit fit")
        _write_yaml(report, out_yaml)
        return report
    from .plots import plot_joint_fit

    p = res["parameters"]
    report.update(success=True, message="converged" if res["chain"]["converged"] else "chain short of n_tau tau",
                  nights=res["nights"], period_model=s.get("period"),
                  t0_per_night={n: r for n, r in zip(res["nights"], res["t0"])},
                  ephemeris=res["ephemeris"], rp_rs_sq=p["rp_rs_sq"], max_flux_drop=p["max_flux_drop"])
    for key in ("rp_rs", "b", "t14", "a_rs", "inc_deg", "stellar_density", "u1", "u2"):
        if key in p:
            report[key] = p[key]
    report["noise"] = dict(zip(res["nights"], res["noise"]))
    report["baseline"] = dict(zip(res["nights"], res["baseline"]))
    # a night covering neither its ingress nor its egress barely constrains its own T0
    report["ingress_egress_in_frames"] = {n: c["ingress_egress_in_frames"] for n, c in zip(res["nights"], res["contacts"])}
    report["chain"] = {k: v for k, v in res["chain"].items() if k != "max_log_prob_vector"}
    report["units"] = ("times BJD_TDB (d); period d; O-C min; rp_rs_sq = (Rp/R*)^2 (fraction); "
                       "max_flux_drop = deepest fractional loss of light; medians with 16/84 and 2.5/97.5 percentiles")
    plot_joint_fit(res, out_png)
    _write_yaml(plain(report), out_yaml)
    return report
