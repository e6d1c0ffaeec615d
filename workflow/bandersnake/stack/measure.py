"""The final stack product: the stack image plus its sources, PSF, zero point and depth.

:func:`measure_stack` reads a stack image (:func:`bandersnake.stack.build.stack_frames`) and
writes ``<TARGET>_<FILTER>_stk.fits`` (layout in docs/ARCHITECTURE.md), the ePSF plot and the
zero-point plot. Data conditions (no PSF star, no catalogue star, catalogue unavailable) never
fail the job: the product is written with NaN zero point / magnitudes and the reason in ZPNOTE /
PSFNOTE.
"""

import logging
import math

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from ..errors import BandersnakeError
from ..fitsio import write_fits
from . import sources as SO
from . import zeropoint as Z

log = logging.getLogger(__name__)


def _read_image(path):
    with fits.open(path, memmap=False) as hdul:
        primary = hdul[0].header.copy()
        sci = np.asarray(hdul["SCI"].data, np.float32)
        err = np.asarray(hdul["ERR"].data, np.float32)
        mask = np.asarray(hdul["MASK"].data, np.uint8)
        ncomb = np.asarray(hdul["NCOMB"].data) if "NCOMB" in hdul else None
        wcs = WCS(hdul["SCI"].header)
    return primary, sci, err, mask, ncomb, wcs


def _field_radius_deg(wcs, shape):
    ny, nx = shape
    ra, dec = wcs.all_pix2world([0, nx - 1, 0, nx - 1, (nx - 1) / 2], [0, 0, ny - 1, ny - 1, (ny - 1) / 2], 0)
    from astropy.coordinates import SkyCoord

    c = SkyCoord(ra, dec, unit="deg")
    return float(max(c[4].separation(c[:4]).deg)), float(ra[4]), float(dec[4])


def calibrate(stack, psf_settings=None, catalogue_settings=None):
    """Sources, ePSF, zero point and limiting magnitudes of a stack image (in memory).

    Parameters
    ----------
    stack : tuple
        ``(primary, sci, err, mask, ncomb, wcs)`` as read by :func:`_read_image`.
    psf_settings, catalogue_settings : dict
        :data:`bandersnake.stack.sources.DEFAULTS` and :data:`bandersnake.stack.zeropoint.DEFAULTS` keys.

    Returns
    -------
    dict
        :func:`bandersnake.stack.sources.measure_sources`'s result plus ``zp`` (fit dict),
        ``zpstars`` (Table), ``catalogue_label``, ``n_catalogue``, ``zp_note``, ``limits``.
    """
    primary, sci, err, mask, ncomb, wcs = stack
    fwhm_guess = float(primary.get("FWHMMED", 3.0)) / 1.1 if primary.get("FWHMMED") else 3.0
    res = SO.measure_sources(sci, err, mask, wcs, psf_settings, fwhm_guess_px=fwhm_guess)
    cs = dict(Z.DEFAULTS, **(catalogue_settings or {}))
    zp = dict(zp=math.nan, zp_err=math.nan, n=0, scatter=math.nan, colour_term=math.nan)
    zpstars, label, n_cat, note = Table(), cs["source"], 0, ""
    phot = res["psfphot"] if res["psfphot"] is not None else res["apphot"]
    if res["psfphot"] is None:
        note = "aperture fluxes (no ePSF); "
    try:
        radius, ra0, dec0 = _field_radius_deg(wcs, sci.shape)
        cat, label = Z.load_catalogue(cs, ra0, dec0, radius * 1.05)
        n_cat = len(cat)
        scale = float(np.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix)))) * 3600
        match_r = cs["match_radius_arcsec"] or max(1.0, 1.0 * res["fwhm"] * scale)
        idx, sep = Z.crossmatch(np.asarray(cat["ra"]), np.asarray(cat["dec"]), np.asarray(phot["ra"]),
                                np.asarray(phot["dec"]), match_r)
        m = idx >= 0
        rows = phot[idx[m]]
        c = cat[m]
        good = (np.asarray(rows["snr"]) >= cs["min_snr"]) & ((np.asarray(rows["flags"]) & (1 | 4)) == 0) \
            & np.isfinite(np.asarray(rows["mag_inst"]))
        if cs["mag_range"]:
            good &= (np.asarray(c["mag"]) >= cs["mag_range"][0]) & (np.asarray(c["mag"]) <= cs["mag_range"][1])
        rows, c, sep_m = rows[good], c[good], sep[m][good]
        colour = np.asarray(c["colour"]) if (cs["colour_term"] and "colour" in c.colnames) else None
        if len(c):
            zp = Z.fit_zeropoint(c["mag"], c["mag_err"], rows["mag_inst"], rows["mag_inst_err"], cs["clip_sigma"],
                                 colour)
            zpstars = Table({"id": rows["id"], "ra": c["ra"], "dec": c["dec"], "mag_cat": c["mag"],
                             "mag_cat_err": c["mag_err"], "mag_inst": rows["mag_inst"],
                             "mag_inst_err": rows["mag_inst_err"], "snr": rows["snr"], "sep_arcsec": sep_m,
                             "zp_star": np.asarray(c["mag"]) - np.asarray(rows["mag_inst"]), "used": zp["used"]})
        note += (f"{zp['n']} of {len(c)} matched {label} stars kept" if len(c) else
                 f"no {label} star matched with S/N >= {cs['min_snr']} ({n_cat} in the field)")
    except BandersnakeError as err:
        note += f"no zero point: {err}"
        log.warning("stack zero point: %s", err)
    zpv = zp["zp"]
    for t in (res["apphot"], res["psfphot"]):
        if t is None:
            continue
        t["mag"] = t["mag_inst"] + zpv if math.isfinite(zpv) else np.full(len(t), np.nan)
        t["mag_err"] = np.sqrt(t["mag_inst_err"] ** 2 + (zp["zp_err"] if math.isfinite(zpv) else np.nan) ** 2)
        t["mag"].unit = t["mag_err"].unit = "mag"
    res.update(zp=zp, zpstars=zpstars, catalogue_label=label, n_catalogue=n_cat, zp_note=note,
               limits=Z.limiting_magnitudes(zpv, res["ap_sigma"], res["ee_aper"]))
    return res


def product_header(primary, res, scale_arcsec):
    """Primary header of the product: the stack's cards plus PSF, zero point and depth."""
    h = primary.copy()
    psf, zp = res["psf"], res["zp"]

    def card(key, value, comment):
        v = value
        if isinstance(v, float) and not math.isfinite(v):
            v = "NaN"
        elif isinstance(v, float):
            v = round(v, 5)
        h[key] = (v, comment)

    card("NSOURCES", len(res["apphot"]), "sources detected (APPHOT rows)")
    card("PSFFWHM", float(psf.get("fwhm", math.nan)), "[px] FWHM of a Moffat fitted to the ePSF")
    card("PSFFWHMA", float(psf.get("fwhm", math.nan)) * scale_arcsec, "[arcsec] FWHM of the ePSF's Moffat")
    card("PSFBETA", float(psf.get("beta", math.nan)), "Moffat beta of the ePSF")
    card("PSFNSTAR", int(psf.get("n_stars", 0)), "stars in the ePSF (PSFSTARS)")
    card("PSFOVERS", int(psf.get("oversampling", 0)), "ePSF oversampling")
    card("APCORR", float(psf.get("apcorr", math.nan)), "total flux / PSF-fit flux (from the PSF stars)")
    card("APCORSIG", float(psf.get("apcorr_scatter", math.nan)), "relative scatter of APCORR over the PSF stars")
    card("SKYRMS", res["sky_rms"], "[electron/s] background RMS per pixel")
    card("LIMAPER", res["aper_radius"], "[px] aperture radius of APPHOT and the limits")
    card("APSIGMA", res["ap_sigma"], "[electron/s] sky noise in that aperture (random apertures)")
    card("APEE", res["ee_aper"], "fraction of a point source's light in that aperture")
    card("ZPTMAG", float(zp["zp"]), "[mag] zero point: mag = -2.5 log10(flux e-/s) + ZPTMAG")
    card("ZPTMUCER", float(zp["zp_err"]), "[mag] uncertainty of ZPTMAG")
    card("ZPTSCAT", float(zp.get("scatter", math.nan)), "[mag] scatter of the kept stars")
    card("NZPSTARS", int(zp["n"]), "catalogue stars kept in the zero-point fit")
    card("ZPCOLTRM", float(zp.get("colour_term", math.nan)), "colour term (NaN: not fitted)")
    card("ZPCAT", res["catalogue_label"][:60], "reference catalogue and band")
    card("NCATSTAR", int(res["n_catalogue"]), "catalogue stars in the field")
    h["ZPNOTE"] = (res["zp_note"][:68], "zero point")
    for n, m in res["limits"].items():
        card(f"M{n}SIGMA", float(m), f"[mag] {n}-sigma point-source limit" +
             (" (instrumental)" if not math.isfinite(float(zp['zp'])) else ""))
    for note in res["notes"]:
        h["HISTORY"] = note[:70]
    return h


def _table_hdu(table, name):
    import warnings

    from astropy.utils.exceptions import AstropyUserWarning

    with warnings.catch_warnings():
        # 'electron / s' is not a FITS-standard unit: astropy drops it with a warning.
        warnings.simplefilter("ignore", AstropyUserWarning)
        hdu = fits.table_to_hdu(table if table is not None else Table())
    # astropy leaves out units outside the FITS standard (electron): written as the other products do.
    for k, col in enumerate((table.itercols() if table is not None else []), start=1):
        if col.unit is not None and f"TUNIT{k}" not in hdu.header:
            hdu.header[f"TUNIT{k}"] = col.unit.to_string().replace(" ", "")
    hdu.name = name
    return hdu


def write_product(out_path, stack, res):
    """Write ``<TARGET>_<FILTER>_stk.fits``: image extensions, PSF, tables, RESIDUAL."""
    primary, sci, err, mask, ncomb, wcs = stack
    scale = float(np.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix)))) * 3600
    from .build import image_hdul

    hdul = image_hdul(product_header(primary, res, scale), wcs, sci, err, mask, ncomb)
    if res["epsf"] is not None:
        ph = fits.ImageHDU(np.asarray(res["epsf"].data, np.float32), name="PSF")
        ov = int(np.atleast_1d(res["epsf"].oversampling)[0])
        ph.header["OVERSAMP"] = (ov, "ePSF samples per image pixel")
        ph.header["PSFFWHM"] = (round(float(res["psf"]["fwhm"]), 5), "[px] Moffat FWHM")
        ph.header["PSFBETA"] = (round(float(res["psf"]["beta"]), 5), "Moffat beta")
        ph.header["COMMENT"] = "photutils EPSFBuilder ePSF, centred, sums to OVERSAMP**2 over the stamp"
        hdul.append(ph)
    hdul.append(_table_hdu(res["apphot"], "APPHOT"))
    hdul.append(_table_hdu(res["psfstars"], "PSFSTARS"))
    hdul.append(_table_hdu(res["psfphot"], "PSFPHOT"))
    hdul.append(_table_hdu(res["zpstars"], "ZPSTARS"))
    if res["residual"] is not None:
        rh = fits.ImageHDU(res["residual"], name="RESIDUAL")
        rh.header.update(wcs.to_header(relax=True))
        rh.header["BUNIT"] = "electron/s"
        rh.header["COMMENT"] = "SCI - background - PSF models of every PSFPHOT source"
        hdul.append(rh)
    write_fits(hdul, out_path)
    return hdul


def measure_stack(image_path, out_path, epsf_png=None, zp_png=None, psf_settings=None, catalogue_settings=None,
                  title=""):
    """Measure a stack image and write the product and its plots.

    Returns
    -------
    astropy.io.fits.Header
        The product's primary header.
    """
    from . import plots

    primary0 = fits.getheader(image_path, 0)
    if primary0.get("STKSTAT") == "FAILED":
        why = str(primary0.get("STKWHY", "no usable frame"))
        write_fits(fits.PrimaryHDU(header=primary0), out_path)
        for png in (epsf_png, zp_png):
            if png:
                plots.message_plot(png, f"no stack: {why}", title)
        log.warning("%s: no stack (%s)", out_path, why)
        return primary0
    stack = _read_image(image_path)
    res = calibrate(stack, psf_settings, catalogue_settings)
    hdul = write_product(out_path, stack, res)
    if epsf_png:
        plots.epsf_plot(res, epsf_png, title)
    if zp_png:
        plots.zeropoint_plot(res, zp_png, title)
    h = hdul[0].header
    log.info("%s: %d sources, ePSF FWHM %s px from %s stars, ZP %s +- %s from %s %s stars, M5SIGMA %s",
             out_path, h["NSOURCES"], h["PSFFWHM"], h["PSFNSTAR"], h["ZPTMAG"], h["ZPTMUCER"], h["NZPSTARS"],
             h["ZPCAT"], h["M5SIGMA"])
    return h


def describe_stack(path):
    """One night-summary line for a stack product (frames used and left out, PSF, zero point, depth)."""
    from pathlib import Path

    path = Path(path)
    try:
        h = fits.getheader(path, 0)
    except (OSError, FileNotFoundError) as err:
        return f"{path.name}: unreadable ({err})"
    frames = path.with_name(path.name.replace("_stk.fits", "_frames.ecsv"))
    left = ""
    if frames.exists():
        t = Table.read(frames, format="ascii.ecsv")
        out = t[t["status"] != "ok"]
        left = f", {len(out)} left out" + "".join(f"\n    left out {r['file']}: {r['reason']}" for r in out)
    if h.get("STKSTAT") == "FAILED":
        return f"{path.name}: no stack: {h.get('STKWHY')}" + "".join("\n" + x for x in left.split("\n")[1:])
    return (f"{path.name}: {h.get('NCOMBINE')} frames ({h.get('EXPTIME')} s){left.split(chr(10))[0]}; "
            f"FWHM {h.get('PSFFWHMA')}\"; ZP {h.get('ZPTMAG')} +- {h.get('ZPTMUCER')} from {h.get('NZPSTARS')} "
            f"{h.get('ZPCAT')} stars; M5SIGMA {h.get('M5SIGMA')}" + "".join("\n" + x for x in left.split("\n")[1:]))
