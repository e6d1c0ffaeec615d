"""Products of a (night, target) whose analysis is not possible: published, marked failed, saying why.

When the data make the analysis impossible (:class:`~bandersnake.errors.AnalysisNotPossible`),
every declared product of the analysis rules is still written so that the night is published,
each one marked failed with the reason and none of them holding made-up data:

* FITS products (``differential.fits``, ``precision_metrics.fits``): an empty table, and
  ``ANASTAT = 'FAILED'`` / ``ANAWHY = <reason>`` in the primary and table headers (successful
  products carry ``ANASTAT = 'OK'``);
* text products (``differential_summary.txt``): ``analysis not possible: <reason>``;
* exports (juliet ``lc.dat``, AAVSO): one comment line stating the failure, no data rows;
* plots: a figure that says so (see :func:`~.plots.plot_not_possible`).

Readers find out with :func:`analysis_failure`; :func:`~.differential.read_differential`
raises :class:`~bandersnake.errors.AnalysisNotPossible` on a failed product.
"""

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits

from .. import __version__
from ..errors import AnalysisNotPossible
from ..fitsio import write_fits, write_text
from .io import METRIC_COLUMNS, MissingProductError, ProductError

log = logging.getLogger("bandersnake.analysis")

STATUS_OK = "OK"
STATUS_FAILED = "FAILED"
NOT_POSSIBLE = "analysis not possible"

# Integer and boolean columns of precision_metrics.fits (the others are float), for the empty table.
_METRIC_INT = {"star_number", "n_frames_used"}
_METRIC_BOOL = {"is_comparison", "is_best_aperture"}


def failure_text(reason):
    """The one-line statement every failed product carries: ``analysis not possible: <reason>``."""
    return f"{NOT_POSSIBLE}: {reason}"


def _ascii(text):
    # FITS headers hold ASCII only; reasons are ours but may quote a file name.
    return str(text).encode("ascii", "replace").decode("ascii").replace("\n", " ")


def status_cards(header, status, reason="", night="", target=""):
    """Set ``ANASTAT`` (and ``ANAWHY`` when failed), ``NIGHT``, ``TARGET`` in ``header`` (in place)."""
    header["ANASTAT"] = (status, "analysis status: OK or FAILED")
    if status == STATUS_FAILED:
        header["ANAWHY"] = _ascii(reason)  # long strings go on CONTINUE cards
    if night:
        header["NIGHT"] = night
    if target:
        header["TARGET"] = target
    return header


def analysis_failure(path):
    """The reason recorded in a failed analysis product (``ANAWHY``), or None when it is not failed.

    Parameters
    ----------
    path : str or Path
        ``differential.fits`` or ``precision_metrics.fits``.

    Returns
    -------
    str or None
    """
    path = Path(path)
    if not path.exists():
        raise MissingProductError(path, "differential")
    try:
        header = fits.getheader(path, 0)
    except Exception as err:
        raise ProductError(path, f"unreadable ({type(err).__name__}: {err})") from None
    if str(header.get("ANASTAT", STATUS_OK)).strip().upper() != STATUS_FAILED:
        return None
    return str(header.get("ANAWHY", "no reason recorded"))


def raise_if_failed(path):
    """Raise :class:`AnalysisNotPossible` (with the recorded reason) when ``path`` is a failed product."""
    reason = analysis_failure(path)
    if reason is not None:
        header = fits.getheader(path, 0)
        raise AnalysisNotPossible(reason, header.get("TARGET", ""), header.get("NIGHT", ""))


# ----------------------------------------------------------------------------- failed products

def failed_differential_hdul(reason, night="", target=""):
    """``differential.fits`` of a failed analysis: status cards and one empty ``DIFFERENTIAL`` table."""
    primary = fits.PrimaryHDU()
    status_cards(primary.header, STATUS_FAILED, reason, night, target)
    primary.header["CREATOR"] = f"bandersnake {__version__} analysis.status"
    cols = [fits.Column("BJD_TDB", "D", unit="d", array=np.zeros(0)),
            fits.Column("JD_UTC", "D", unit="d", array=np.zeros(0)),
            fits.Column("diff_flux", "D", array=np.zeros(0)),
            fits.Column("diff_flux_err", "D", array=np.zeros(0)),
            fits.Column("frame_ok", "L", array=np.zeros(0, dtype=bool))]
    table = fits.BinTableHDU.from_columns(cols, name="DIFFERENTIAL")
    status_cards(table.header, STATUS_FAILED, reason)
    return fits.HDUList([primary, table])


def failed_metrics_hdul(reason, night="", target=""):
    """``precision_metrics.fits`` of a failed analysis: the ``PRECISION`` columns with no rows."""
    cols = []
    for name, unit, _ in METRIC_COLUMNS:
        fmt, dtype = ("J", np.int32) if name in _METRIC_INT else (("L", bool) if name in _METRIC_BOOL
                                                                  else ("D", float))
        cols.append(fits.Column(name, fmt, unit=unit or None, array=np.zeros(0, dtype=dtype)))
    table = fits.BinTableHDU.from_columns(cols, name="PRECISION")
    status_cards(table.header, STATUS_FAILED, reason, night, target)
    primary = fits.PrimaryHDU()
    status_cards(primary.header, STATUS_FAILED, reason, night, target)
    return fits.HDUList([primary, table])


def failed_summary_text(reason, night="", target=""):
    """``differential_summary.txt`` of a failed analysis."""
    return (f"# bandersnake differential photometry summary  night={night} target={target}\n"
            f"{failure_text(reason)}\n")


def write_failed_differential(outputs, reason, night="", target=""):
    """Write the three products of the differential rule, marked failed.

    Parameters
    ----------
    outputs : dict
        ``differential``, ``metrics``, ``summary`` paths.
    reason : str

    Returns
    -------
    dict
        The same paths.
    """
    write_fits(failed_differential_hdul(reason, night, target), outputs["differential"])
    write_fits(failed_metrics_hdul(reason, night, target), outputs["metrics"])
    write_text(failed_summary_text(reason, night, target), outputs["summary"])
    return {k: Path(outputs[k]) for k in ("differential", "metrics", "summary")}


def write_failed_exports(paths, reason, target=""):
    """juliet / AAVSO files of a failed analysis: a comment line stating the failure, no data.

    No consumer can mistake them for a light curve: juliet's reader and AAVSO's WebObs both
    reject a file without observations.
    """
    text = f"# {target + ': ' if target else ''}{failure_text(reason)}\n"
    for path in paths:
        write_text(text, path)
    return [Path(p) for p in paths]
