"""Light-curve exports: juliet ``lc.dat`` and the AAVSO Extended File Format.

juliet (Espinoza et al. 2019) reads whitespace-separated ``time flux error instrument`` plus
linear-model regressors; as bandersnatch's ``create_juliet_lc.py`` we append the target's sky,
xc, yc, x_width, y_width and the airmass, each scaled to [-1, 1] over the exported frames.

AAVSO Extended Format v1.2 (https://www.aavso.org/aavso-extended-file-format): ``#DATE=JD`` (the
format accepts JD, HJD or EXCEL, not BJD, so the mid-exposure ``JD_UTC`` is written), one line
per frame, differential magnitudes (``MTYPE=DIF``) against the comparison ensemble
(``CNAME=ENSEMBLE``), or standardised-by-offset magnitudes when the ensemble's magnitude is given.
"""

import logging
import math
from pathlib import Path

import numpy as np

from .. import __version__
from ..fitsio import write_text
from .differential import read_differential
from .io import ProductError, match_rows, read_centroids, read_photometry

log = logging.getLogger("bandersnake.analysis")


def scale_to_unit(values):
    """Map ``values`` linearly onto [-1, 1] (min -> -1, max -> 1); a constant series gives 0."""
    v = np.asarray(values, dtype=float)
    lo, hi = np.nanmin(v), np.nanmax(v)
    if not np.isfinite(lo) or hi == lo:
        return np.zeros_like(v)
    return 2 * (v - lo) / (hi - lo) - 1


def juliet_lines(bjd, flux, err, instrument, regressors):
    """Lines of a juliet ``lc.dat``: BJD, flux, error, instrument, then each regressor scaled to [-1, 1]."""
    scaled = [scale_to_unit(r) for r in regressors]
    inst = str(instrument).replace(" ", "_") or "INST"
    lines = []
    for i in range(len(bjd)):
        extra = " ".join(f"{s[i]:.6f}" for s in scaled)
        lines.append(f"{bjd[i]:.8f} {flux[i]:.8e} {err[i]:.8e} {inst}" + (f" {extra}" if extra else ""))
    return lines


def _target_columns(diff, centroid_path, phot_path):
    """Per-frame regressors of the target (star 0) matched to the differential rows on BJD_TDB."""
    bjd = diff["BJD_TDB"]
    out = {"airmass": np.asarray(diff["airmass"], float)}
    cen = read_centroids(centroid_path)
    idx = match_rows(bjd, cen["BJD_TDB"])
    if (idx < 0).any():
        raise ProductError(centroid_path, f"{int((idx < 0).sum())} photometry frames have no centroid row "
                           "(re-run the centroiding rule)")
    for name in ("xc", "yc", "x_width", "y_width"):
        if name not in cen:
            raise ProductError(centroid_path, f"column {name!r} missing")
        v = np.asarray(cen[name], float)
        out[name] = (v[:, 0] if v.ndim == 2 else v)[idx]
    if not np.isfinite(out["airmass"]).any() and "airmass" in cen:
        out["airmass"] = np.asarray(cen["airmass"], float)[idx]
    phot = read_photometry(phot_path)
    pidx = match_rows(bjd, phot.bjd)
    if (pidx < 0).any():
        raise ProductError(phot_path, "frames differ from differential.fits (re-run the differential rule)")
    out["sky"] = phot.sky[pidx, 0]
    return out


def write_juliet(differential_path, centroid_path, out_path, instrument_name, phot_path=None, aperture=None):
    """Write juliet's ``lc.dat`` for the best (or given) aperture, kept frames only.

    Columns: BJD_TDB, relative flux, error, instrument name, then sky, xc, yc, x_width, y_width,
    airmass of the target, each scaled to [-1, 1]. Frames with a NaN regressor are dropped (juliet
    cannot use them) and counted in the log.

    Returns
    -------
    int
        Number of frames written.
    """
    diff = read_differential(differential_path, aperture)
    radius = float(diff["_header"]["APERRAD"])
    phot_path = phot_path or Path(differential_path).parent / f"photometry_aper{int(round(radius))}.fits"
    regs = _target_columns(diff, centroid_path, phot_path)
    order = ["sky", "xc", "yc", "x_width", "y_width", "airmass"]
    ok = diff["frame_ok"].astype(bool) & np.isfinite(diff["diff_flux"]) & np.isfinite(diff["diff_flux_err"])
    finite = np.all([np.isfinite(regs[k]) for k in order], axis=0)
    if (ok & ~finite).any():
        log.warning("juliet export: %d kept frames dropped for a NaN regressor", int((ok & ~finite).sum()))
    ok &= finite
    if not ok.any():
        raise ProductError(differential_path, "no frame left to export to juliet")
    lines = juliet_lines(diff["BJD_TDB"][ok], diff["diff_flux"][ok], diff["diff_flux_err"][ok], instrument_name,
                         [regs[k][ok] for k in order])
    write_text("\n".join(lines) + "\n", out_path)
    return int(ok.sum())


def aavso_lines(name, jd, mag, merr, filt, obscode="XXX", comp_name="ENSEMBLE", comp_mag=None, airmass=None,
                chart="na", notes="na", standardised=False):
    """Lines of an AAVSO Extended Format report (parameters then one observation per line)."""
    header = [
        "#TYPE=EXTENDED",
        f"#OBSCODE={obscode}",
        f"#SOFTWARE=bandersnake {__version__}",
        "#DELIM=,",
        "#DATE=JD",
        "#OBSTYPE=CCD",
        "#NAME,DATE,MAG,MERR,FILT,TRANS,MTYPE,CNAME,CMAG,KNAME,KMAG,AMASS,GROUP,CHART,NOTES",
    ]
    mtype = "STD" if standardised else "DIF"
    cmag = "na" if comp_mag is None else f"{comp_mag:.3f}"
    rows = []
    for i in range(len(jd)):
        am = "na" if airmass is None or not np.isfinite(airmass[i]) else f"{airmass[i]:.3f}"
        rows.append(",".join([name[:30], f"{jd[i]:.6f}", f"{mag[i]:.4f}", f"{min(merr[i], 9.9999):.4f}", filt,
                              "NO", mtype, comp_name[:20], cmag, "na", "na", am, "na", chart, notes]))
    return header + rows


def write_aavso(differential_path, out_path, star_name, filter_name, obscode="XXX", aperture=None,
                comp_mag=None, chart="na"):
    """Write the target's light curve as an AAVSO Extended Format file (kept frames only).

    Magnitudes are ``-2.5 log10(diff_flux)`` (differential, ``MTYPE=DIF``, zero = the night's median),
    or ``comp_mag - 2.5 log10(target/ensemble)`` with ``MTYPE=STD`` when the ensemble's
    standard magnitude ``comp_mag`` is given. Errors: 1.0857 x relative flux error.

    Returns
    -------
    int
        Number of observations written.
    """
    diff = read_differential(differential_path, aperture)
    ok = diff["frame_ok"].astype(bool) & (diff["diff_flux"] > 0) & np.isfinite(diff["diff_flux_err"])
    jd = np.asarray(diff["JD_UTC"], float)
    if not np.isfinite(jd[ok]).all():
        raise ProductError(differential_path, "JD_UTC missing for exported frames: AAVSO needs JD (not BJD)")
    flux = diff["diff_flux"][ok]
    mag = -2.5 * np.log10(flux)
    if comp_mag is not None:
        mag = mag + float(comp_mag)
    merr = 2.5 / math.log(10) * diff["diff_flux_err"][ok] / flux
    lines = aavso_lines(star_name, jd[ok], mag, merr, filter_name, obscode, comp_mag=comp_mag,
                        airmass=diff["airmass"][ok], chart=chart,
                        notes=f"aperture {float(diff['_header']['APERRAD']):g}px ensemble of "
                              f"{int(diff['_header']['NCOMP'])}".replace(",", ";"),
                        standardised=comp_mag is not None)
    write_text("\n".join(lines) + "\n", out_path)
    return int(ok.sum())


def write_exports(differential_path, centroid_path, out_dir, instrument_name, target, filter_name="CV",
                  obscode="XXX", comp_mag=None, phot_path=None):
    """juliet ``lc.dat`` and ``<target>_aavso.txt`` for the best aperture into ``out_dir``.

    Returns
    -------
    dict
        ``juliet`` and ``aavso`` paths and ``n_frames`` written.
    """
    out_dir = Path(out_dir)
    juliet_path = out_dir / "lc.dat"
    aavso_path = out_dir / f"{target}_aavso.txt"
    n = write_juliet(differential_path, centroid_path, juliet_path, instrument_name, phot_path)
    write_aavso(differential_path, aavso_path, target, filter_name, obscode, comp_mag=comp_mag)
    return {"juliet": juliet_path, "aavso": aavso_path, "n_frames": n}
