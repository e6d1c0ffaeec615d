"""The night summary: what went in, what was rejected and why, which calibrations (and fallbacks)
were used, how many frames and stars each target's photometry flagged, and each target's
light-curve analysis (OK, or FAILED with the reason when the data made it impossible)."""

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..fitsio import write_text
from ..flags import FLAG_NAMES, FRAME_BITS
from ..ingest.inventory import read_inventory, summarize

log = logging.getLogger(__name__)

MASTER_KEYS = ("CALTYPE", "FILTER", "NCOMBINE", "BUNIT", "FALLBACK", "SKIPNOTE", "RDNOISE", "DARKCUR")


def describe_master(path):
    """One line per master: its type, inputs, units and fallback, from its header."""
    header = fits.getheader(path)
    parts = [f"{k}={header[k]}" for k in MASTER_KEYS if k in header]
    return f"{Path(path).name}: " + ", ".join(parts)


def describe_table(path):
    """Rows of a centroid or photometry table and, per flag bit, how many frames it flags: frame-wide
    bits (tracking lost, corrupt frame, re-acquired) as a count of frames, the others per star."""
    # The flag column only, straight from the FITS table: astropy's Table.read of the 12 tables
    # (units, masked columns) was most of this job's time (issue 22).
    with fits.open(path, memmap=False) as hdul:
        hdu = next((h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)), None)
        n_rows = int(hdu.header["NAXIS2"]) if hdu is not None else 0
        names = hdu.columns.names if hdu is not None else []
        flag = np.array(hdu.data["flag"]) if "flag" in names and n_rows else None
    line = f"{Path(path).name}: {n_rows} frames"
    if flag is not None:
        flags = flag.reshape(n_rows, -1)
        parts = []
        for bit, name in FLAG_NAMES.items():
            flagged = (flags & bit) > 0
            if bit & FRAME_BITS:
                n_frames = int(flagged.any(axis=1).sum())
                if n_frames:
                    parts.append(f"{name}: {n_frames} frame{'s' if n_frames > 1 else ''}")
                continue
            stars = {i: int(n) for i, n in enumerate(flagged.sum(axis=0)) if n}
            if stars:
                parts.append(f"{name}: " + " ".join(f"star{i}x{n}" for i, n in stars.items()))
        if parts:
            line += " (" + "; ".join(parts) + ")"
    return line


def describe_analysis(differential_path):
    """One line on a target's light-curve analysis, from the header of its ``differential.fits``.

    ``<target>: analysis OK, best aperture 5 px, ensemble of 4 comparisons, 118 frames kept`` or
    ``<target>: analysis FAILED: analysis not possible: <reason>``.
    """
    from ..analysis.status import STATUS_FAILED, failure_text

    path = Path(differential_path)
    target = path.parent.parent.name
    with fits.open(path, memmap=False) as hdul:
        primary = hdul[0].header
        if str(primary.get("ANASTAT", "OK")).strip().upper() == STATUS_FAILED:
            return f"{target}: analysis FAILED: {failure_text(primary.get('ANAWHY', 'no reason recorded'))}"
        best = primary.get("BESTAPER")
        ext = f"APER{int(round(float(best)))}" if best is not None else None
        if ext is None or ext not in hdul:
            return f"{target}: analysis OK (no best-aperture table found)"
        h = hdul[ext].header
    mode = h.get("COMPMODE", "")
    comps = f"ensemble of {h.get('NCOMP', 0)} comparisons" if mode == "ensemble" else f"{mode} light curve"
    return f"{target}: analysis OK, best aperture {float(best):g} px, {comps}, {h.get('NKEPT', '?')} frames kept"


def describe_transit(path):
    """One line on a target's transit fit (``transit_fit.yaml``): rp_rs_sq and max_flux_drop apart."""
    import yaml

    target = Path(path).parent.parent.name
    fit = yaml.safe_load(Path(path).read_text()) or {}
    if fit.get("success") and isinstance(fit.get("rp_rs_sq"), dict):
        k2, drop, t0 = fit["rp_rs_sq"], fit["max_flux_drop"], fit["t0"]
        line = (f"{target}: transit fit: rp_rs_sq (Rp/R*)^2 {1e3 * k2['median']:.2f} +{1e3 * k2['plus']:.2f} "
                f"-{1e3 * k2['minus']:.2f} ppt, max_flux_drop {1e3 * drop['median']:.2f} ppt, T0 {t0['median']:.5f} "
                f"+{t0['plus']:.5f} -{t0['minus']:.5f} BJD_TDB (posterior median, 16/84 %)")
        covered = fit.get("ingress_egress_in_frames") or {}
        seen = [part for part in ("ingress", "egress") if covered.get(part, 1.0) >= 0.5]
        if covered and not seen:
            line += "; the frames cover neither ingress nor egress: T0 and depth rest on the priors"
        elif len(seen) == 1 and isinstance(fit.get("t1"), dict) and isinstance(fit.get("t4"), dict):
            # a partial transit measures its one contact; T0 also leans on T14 (so on b)
            contact = fit["t1"] if seen == ["ingress"] else fit["t4"]
            name = "first contact" if seen == ["ingress"] else "last contact"
            line += (f"; only the {seen[0]} in the frames: {name} {contact['median']:.5f} +{contact['plus']:.5f} "
                     f"-{contact['minus']:.5f} BJD_TDB")
            priors = fit.get("priors") or {}
            if priors and priors.get("b_fixed") is None and not priors.get("b_gaussian"):
                line += " (T0 from it leans on b: give b and b_err when published)"
        return line
    if fit.get("analysis_status") == "FAILED":
        return f"{target}: transit fit not done (no light curve: analysis not possible)"
    return f"{target}: transit fit not done ({fit.get('message', 'no message')})"


def night_summary(night, products, out, without_positions=()):
    """Write the night's summary text to ``out`` and return it.

    Parameters
    ----------
    night : str
        Night id.
    products : list of str
        The night's products (inventory, masters, tables); other files are listed by name.
    out : str
        Output text file.
    without_positions : list of str
        Science targets with no entry in targets.yaml (no photometry was made for them).
    """
    lines = [f"bandersnake night summary: {night}", ""]
    inventories = [p for p in products if str(p).endswith("inventory.ecsv")]
    if inventories:
        lines += ["Frames"] + ["  " + s for s in summarize(read_inventory(inventories[0]))] + [""]
    masters = [p for p in products if Path(p).name.startswith(("master_", "bad_pixel_map"))]
    if masters:
        lines += ["Calibrations"] + ["  " + describe_master(p) for p in masters] + [""]
    tables = [p for p in products if Path(p).name.startswith(("centroids", "photometry_aper"))
              and Path(p).suffix == ".fits"]
    if tables:
        lines += ["Targets"] + [f"  {Path(p).parent.parent.name}/{describe_table(p)}" for p in tables] + [""]
    analyses = [p for p in products if Path(p).name == "differential.fits"]
    fits_ = [p for p in products if Path(p).name == "transit_fit.yaml"]
    if analyses or fits_:
        lines += (["Light-curve analysis"] + ["  " + describe_analysis(p) for p in analyses]
                  + ["  " + describe_transit(p) for p in fits_] + [""])
    frame_products = []
    # calibration.frames pulls in numba and the photometry code (0.26 s): only when it has lines to give.
    if any(Path(p).name in ("calibrated", "kbmod", "astrometry_summary.ecsv") for p in products):
        from ..calibration.frames import describe_products

        frame_products = describe_products(products)
    if frame_products:
        lines += ["Calibrated frames, astrometry, KBMOD"] + ["  " + s for s in frame_products] + [""]
    stacks = [p for p in products if str(p).endswith("_stk.fits")]
    if stacks:
        from ..stack.measure import describe_stack

        lines += ["Deep stacks"] + ["  " + describe_stack(p) for p in stacks] + [""]
    for target in without_positions:
        lines.append(f"  {target}: no entry in targets.yaml, so no photometry; add its star positions to get it")
    text = "\n".join(lines) + "\n"
    write_text(text, out)
    log.info("night summary written to %s", out)
    return text
