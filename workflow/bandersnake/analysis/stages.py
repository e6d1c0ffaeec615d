"""Workflow entry points of the light-curve analysis: one function per rule of ``rules/analysis.smk``.

Each function takes the rule's declared inputs, outputs and settings, calls the analysis package
and checks that what it wrote is what the rule declared. The helpers that pick settings for a
rule (:func:`differential_settings`, :func:`transit_settings`, :func:`noise_instrument`) are used
by ``rules/common.smk`` to build the rules' ``params``: each rule gets only the settings it
uses, so changing, say, the transit ephemeris re-runs the transit fit and nothing else.

Bad input is contained: fewer than two usable comparisons gives a target-only light curve, an
all-NaN aperture is skipped with a note (both in :func:`~.differential.run_differential`), a
missing product names the rule that makes it (:class:`~.io.MissingProductError`).

Data that make the whole analysis impossible (:class:`~bandersnake.errors.AnalysisNotPossible`:
the target unusable in every frame, too few frames left, an empty photometry table) do not fail
the job either: :func:`differential_stage` writes its products marked ``ANASTAT = 'FAILED'`` with
the reason, and every later stage, seeing that, writes its declared outputs saying
``analysis not possible: <reason>`` (:mod:`.status`), so the night is still published. Only
that exception is contained: any other error (a bug) still fails the job.
"""

import logging
import math
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import AnalysisNotPossible
from ..ingest.inventory import sanitize_name
from .differential import DEFAULT_SETTINGS, run_differential
from .exports import write_exports
from .io import MissingProductError, ProductError
from .plots import PLOTS, make_not_possible_plots, make_plots, plot_precision_vs_brightness
from .status import STATUS_FAILED, STATUS_OK, analysis_failure, failure_text, write_failed_differential, \
    write_failed_exports

log = logging.getLogger("bandersnake.analysis")

# Instrument keys the noise model and the exports read (the differential rule's params carry only
# these, so an unrelated instrument edit such as a keyword mapping does not re-run the analysis).
NOISE_INSTRUMENT_KEYS = ("name", "read_noise_e", "gain_e_per_adu", "telescope_diameter_m", "site", "scintillation")

# Science filter name (lower case, without quotes/primes) -> AAVSO filter code.
AAVSO_FILTERS = {
    "u": "U", "b": "B", "v": "V", "r": "R", "i": "I", "j": "J", "h": "H", "k": "K",
    "rc": "R", "ic": "I", "up": "SU", "gp": "SG", "rp": "SR", "ip": "SI", "zp": "SZ",
    "sloan_u": "SU", "sloan_g": "SG", "sloan_r": "SR", "sloan_i": "SI", "sloan_z": "SZ",
    "g": "SG", "z": "SZ", "clear": "CV", "cv": "CV", "none": "CV", "l": "CV", "lum": "CV",
}


# ----------------------------------------------------------------------------- settings for rules

def differential_settings(analysis_settings):
    """The part of a night's ``analysis_settings`` the differential rule uses (keys of DEFAULT_SETTINGS)."""
    settings = analysis_settings or {}
    return {key: settings.get(key, default) for key, default in DEFAULT_SETTINGS.items()}


def transit_settings(analysis_settings, target):
    """Transit-fit settings of ``target`` (matched on the sanitised name), or None when it has none.

    Parameters
    ----------
    analysis_settings : dict
        A night's validated ``analysis_settings``.
    target : str
        Target name as in the work tree (sanitised OBJECT).

    Returns
    -------
    dict or None
        The target's entry of ``analysis_settings.transit`` when it gives ``t0`` or ``window``.
    """
    entries = (analysis_settings or {}).get("transit") or {}
    matches = [dict(v) for k, v in entries.items() if sanitize_name(k) == target]
    if not matches:
        return None
    entry = matches[0]
    return entry if ("t0" in entry or "window" in entry) else None


def noise_instrument(instrument):
    """Subset of an instrument dict the analysis uses (see :data:`NOISE_INSTRUMENT_KEYS`)."""
    return {k: instrument[k] for k in NOISE_INSTRUMENT_KEYS if k in instrument}


def aavso_filter_code(filter_name, override=None):
    """AAVSO filter code of a science filter (``override`` wins; unknown names give ``CV`` with a warning)."""
    if override:
        return str(override)
    key = re.sub(r"['\"]", "p", str(filter_name).strip()).lower()
    code = AAVSO_FILTERS.get(key)
    if code is None:
        log.warning("AAVSO export: no AAVSO code for filter %r, writing CV; set "
                    "analysis_settings.exports.aavso_filter", filter_name)
        return "CV"
    return code


# ----------------------------------------------------------------------------- inputs

def _header_value(path, key, what, rule):
    """A finite header value of a master calibration, or None (with a warning) when unusable."""
    path = Path(path)
    if not path.exists():
        raise MissingProductError(path, rule)
    try:
        value = fits.getheader(path, 0).get(key)
    except Exception as err:
        raise ProductError(path, f"unreadable master ({type(err).__name__}: {err})") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        log.warning("%s: no usable %s (%s = %r); the noise model uses the fallback", path, what, key, value)
        return None
    return value


def master_noise(bias_path, dark_path):
    """Measured read noise and dark current from the master headers.

    Parameters
    ----------
    bias_path, dark_path : path
        ``calib/master_bias.fits`` (``RDNOISE``, e-) and ``calib/master_dark.fits`` (``DARKCUR``,
        e-/s/px).

    Returns
    -------
    (float or None, float or None)
        Read noise (e-) and dark current (e-/s/px); None when a header lacks a usable value.
    """
    return (_header_value(bias_path, "RDNOISE", "read noise", "master_bias"),
            _header_value(dark_path, "DARKCUR", "dark current", "master_dark"))


def calibrations_skipped(phot_paths):
    """Calibrations the night skipped (``CALSKIP`` of the photometry tables, e.g. ``'bias,dark,flat'``),
    ``'none'`` when none was or the tables predate the keyword."""
    for path in phot_paths:
        try:
            header = fits.getheader(path, 1)
        except Exception:  # noqa: BLE001 - unreadable tables are reported by the analysis itself
            continue
        return str(header.get("CALSKIP", "none")).strip() or "none"
    return "none"


def filter_of_master_flat(flat_path):
    """Science filter of a target: ``FILTER`` of its master flat (else the ``master_flat_<FILTER>`` name)."""
    flat_path = Path(flat_path)
    if not flat_path.exists():
        raise MissingProductError(flat_path, "master_flat")
    try:
        value = fits.getheader(flat_path, 0).get("FILTER")
    except Exception as err:
        raise ProductError(flat_path, f"unreadable master flat ({type(err).__name__}: {err})") from None
    if value not in (None, ""):
        return str(value).strip()
    match = re.fullmatch(r"master_flat_(.+)\.fits", flat_path.name)
    if match is None:
        raise ProductError(flat_path, "no FILTER keyword and not named master_flat_<FILTER>.fits")
    return match[1]


def _same_paths(declared, written, what):
    declared = sorted(str(Path(p)) for p in declared)
    written = sorted(str(Path(p)) for p in written)
    if declared != written:
        raise ProductError(what, f"declared outputs {declared} differ from the files written {written}")


# ----------------------------------------------------------------------------- stages

def differential_stage(phot_paths, centroid_path, bias_path, dark_path, instrument, settings, outputs,
                       night="", target=""):
    """Differential photometry and precision analysis of one (night, target) (rule ``differential``).

    Parameters
    ----------
    phot_paths : list of path
        ``photometry/photometry_aper<N>.fits``.
    centroid_path : path
        ``centroiding/centroids.fits``.
    bias_path, dark_path : path
        Master bias and dark: their ``RDNOISE`` (e-) and ``DARKCUR`` (e-/s/px) feed the noise model
        unless ``settings`` give ``read_noise_e`` / ``dark_e_per_s``.
    instrument : dict
        Instrument settings (:func:`noise_instrument`).
    settings : dict
        :func:`differential_settings` of the night.
    outputs : dict
        ``differential``, ``summary``, ``metrics`` paths, all in one folder.
    night, target : str

    Returns
    -------
    dict
        :func:`~.differential.run_differential`'s summary plus ``status`` ``'OK'``; when the data
        make the analysis impossible, ``status`` ``'FAILED'``, ``reason`` and ``paths`` of the
        failed products (see :mod:`.status`).
    """
    cfg = differential_settings(settings)
    rn, dc = master_noise(bias_path, dark_path)
    skipped = calibrations_skipped(phot_paths)
    rn = cfg["read_noise_e"] if cfg["read_noise_e"] is not None else rn
    dc = cfg["dark_e_per_s"] if cfg["dark_e_per_s"] is not None else dc
    out_dir = Path(outputs["differential"]).parent
    try:
        result = run_differential(list(phot_paths), centroid_path, instrument, cfg, out_dir=out_dir,
                                  read_noise_e=rn, dark_e_per_s=dc, night=night, target=target,
                                  calibration_skipped=skipped)
    except AnalysisNotPossible as err:  # a data condition; anything else is a bug and propagates
        log.warning("%s; publishing the night with the analysis marked FAILED", err)
        paths = write_failed_differential(outputs, err.reason, night, target)
        return {"status": STATUS_FAILED, "reason": err.reason, "paths": paths}
    result["status"] = STATUS_OK
    _same_paths([outputs[k] for k in ("differential", "metrics", "summary")],
                [result["paths"][k] for k in ("differential", "metrics", "summary")], out_dir)
    for radius, a in sorted(result["apertures"].items()):
        log.info("aperture %g px: %s, %d frames, 10-min precision %.3g; %s", radius, a["mode"],
                 a["n_frames_used"], a["sigma_obs_10min"], a["note"])
    return result


def plots_stage(differential_path, centroid_path, metrics_path, out_paths, bin_min=10.0):
    """Diagnostic plots of one (night, target) (rule ``analysis_plots``).

    Parameters
    ----------
    out_paths : dict
        Plot name (:data:`~.plots.PLOTS`) -> PNG path, all in one folder.
    bin_min : float
        Bin width (min) of the binned overlay.

    Returns
    -------
    dict
        Plot name -> path written.
    """
    if set(out_paths) != set(PLOTS):
        raise ProductError(differential_path, f"plots asked {sorted(out_paths)}, made {sorted(PLOTS)}")
    out_dir = Path(next(iter(out_paths.values()))).parent
    reason = analysis_failure(differential_path)
    if reason is not None:
        log.warning("%s: %s; every plot says so", differential_path, failure_text(reason))
        target = fits.getheader(differential_path, 0).get("TARGET", "")
        written = make_not_possible_plots(out_dir, reason, target)
    else:
        written = make_plots(differential_path, centroid_path, metrics_path, out_dir, bin_min=bin_min)
    _same_paths(out_paths.values(), written.values(), out_dir)
    return written


def exports_stage(differential_path, centroid_path, outputs, instrument_name, target, filter_name,
                  export_settings=None):
    """juliet ``lc.dat`` and AAVSO file of the best aperture (rule ``analysis_exports``).

    Parameters
    ----------
    outputs : dict
        ``juliet`` (``.../lc.dat``) and ``aavso`` (``.../<target>_aavso.txt``) paths.
    instrument_name : str
        juliet instrument column.
    filter_name : str
        The science filter (mapped to an AAVSO code by :func:`aavso_filter_code`).
    export_settings : dict, optional
        ``analysis_settings.exports`` (``aavso_obscode``, ``aavso_filter``, ``aavso_comp_mag``).
    """
    s = export_settings or {}
    out_dir = Path(outputs["juliet"]).parent
    reason = analysis_failure(differential_path)
    if reason is not None:
        # No fake data: each file is one comment line stating the failure.
        log.warning("%s: %s; exports hold only that statement", differential_path, failure_text(reason))
        write_failed_exports([outputs["juliet"], outputs["aavso"]], reason, target)
        return {"juliet": Path(outputs["juliet"]), "aavso": Path(outputs["aavso"]), "n_frames": 0,
                "status": STATUS_FAILED}
    written = write_exports(differential_path, centroid_path, out_dir, instrument_name, target,
                            filter_name=aavso_filter_code(filter_name, s.get("aavso_filter")),
                            obscode=s.get("aavso_obscode", "XXX"), comp_mag=s.get("aavso_comp_mag"))
    _same_paths([outputs["juliet"], outputs["aavso"]], [written["juliet"], written["aavso"]], out_dir)
    log.info("exported %d frames to %s and %s", written["n_frames"], written["juliet"], written["aavso"])
    return written


def precision_summary_stage(metrics_paths, out_png, labels=None):
    """Precision versus brightness over several nights (rule ``precision_vs_brightness``).

    Parameters
    ----------
    metrics_paths : list of path
        ``precision_metrics.fits`` of every (night, target).
    labels : list of str, optional
        One label per file (default: the NIGHT and TARGET recorded in each file).

    Failed analyses (``ANASTAT = 'FAILED'``) are skipped with a warning; if all failed, the figure
    says so instead of failing the rule.
    """
    metrics_paths = [Path(p) for p in metrics_paths]
    if not metrics_paths:
        raise ProductError(out_png, "no precision_metrics.fits to plot: no night has a target with photometry")
    return plot_precision_vs_brightness(metrics_paths, out_png, labels=None if labels is None else list(labels))
