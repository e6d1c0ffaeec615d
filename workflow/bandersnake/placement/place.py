"""Targets given on the sky: placed through the night's WCS, comparison stars chosen automatically.

A ``targets.yaml`` entry may give only the target's ``ra``/``dec`` (optionally proper motion
``pm_ra``/``pm_dec`` in mas/yr, ``pm_ra`` including cos(dec), at ``epoch``, default J2000), or a
list of stars by sky position (``all_star_coords: [[ra, dec], ...]``, star 0 the target),
instead of pixel positions. :func:`resolve_sky_target` turns it into an ordinary entry with
``all_star_positions`` in the first science frame of the night:

1. Every frame is calibrated in memory (the night's masters) and its stars detected
   (:func:`bandersnake.astrometry.solve.detect_sources`).
2. The **reference WCS**: the first frame's header WCS when it has one, else ``solve-field`` on
   the frame with most stars among the first ten (hinted by the header or the entry's RA/Dec and
   the instrument's plate scale).
3. Every frame is **followed** from the reference (:func:`bandersnake.astrometry.follow.follow_frame`
   on the reference's own stars), which measures the pointing drift and any re-acquisition jump.
4. The target (and listed stars) are placed through the WCS and snapped to the detected star
   within ``snap_px``. Comparison stars (entries with only ``ra``/``dec``) are chosen among the
   reference frame's detections: unsaturated in every frame (no MASK-saturated pixel and a peak
   below ``max_peak_fraction`` of the saturation level within 2 px of its position in each
   frame), on the chip in every frame with the photometry's sky annulus inside it, isolated (no
   detection brighter than ``isolation_flux_ratio`` of it within the annulus' outer radius), and
   of brightness similar to the target's (closest in log flux, within ``flux_ratio_range``).
   The tracking star is the brightest of the chosen stars. The existing ensemble analysis then
   judges the comparisons (variables and outliers are rejected there).
5. The result is written as ``work/<night>/<TARGET>/targets_resolved.yaml`` in the targets.yaml
   format (a user can copy and edit it), with a comment per star.
"""

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from astropy.time import Time
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from ..errors import ConfigError, FrameError
from ..fitsio import write_text
from .entries import needs_placement

log = logging.getLogger(__name__)

DEFAULTS = dict(n_comparisons=8, flux_ratio_range=(0.25, 4.0), max_peak_fraction=0.8, isolation_flux_ratio=0.1,
                edge_margin_px=2.0, snap_px=4.0, fwhm_px=3.0, nsigma=5.0, max_sources=400)


def sky_position(entry, jd=None):
    """RA, Dec (deg) of the entry's target at JD ``jd`` (proper motion applied when given).

    Raises
    ------
    ConfigError
        No usable ``ra``/``dec``.
    """
    from ..astrometry.solve import _angle

    try:
        ra = _angle(entry["ra"], hours=isinstance(entry["ra"], str))
        dec = _angle(entry["dec"], hours=False)
    except (KeyError, ValueError, TypeError):
        raise ConfigError(f"targets.yaml: entry needs all_star_positions or ra/dec (got {sorted(entry)})") from None
    return _apply_pm(ra, dec, entry, jd)


def _apply_pm(ra, dec, entry, jd):
    pmra, pmdec = float(entry.get("pm_ra", 0.0) or 0.0), float(entry.get("pm_dec", 0.0) or 0.0)
    if jd is None or (pmra == 0 and pmdec == 0):
        return ra, dec
    years = (Time(jd, format="jd").jyear - float(entry.get("epoch", 2000.0)))
    dec2 = dec + pmdec * years / 3.6e6
    ra2 = ra + pmra * years / 3.6e6 / max(math.cos(math.radians(dec)), 1e-6)
    return ra2 % 360.0, dec2


def star_coords(entry, jd=None):
    """(n, 2) RA, Dec (deg) of the listed stars (``all_star_coords``), or of the target alone."""
    from ..astrometry.solve import _angle

    if entry.get("all_star_coords"):
        out = []
        for k, item in enumerate(entry["all_star_coords"]):
            try:
                ra, dec = item[0], item[1]
                out.append((_angle(ra, hours=isinstance(ra, str)), _angle(dec, hours=False)))
            except (TypeError, ValueError, IndexError):
                raise ConfigError(f"targets.yaml: all_star_coords[{k}] is not [ra, dec] ({item!r})") from None
        coords = np.array(out, float)
        coords[0] = _apply_pm(coords[0, 0], coords[0, 1], entry, jd)
        return coords
    return np.array([sky_position(entry, jd)], float)


def header_wcs(header):
    """Celestial WCS of a header, or None when it has none."""
    import warnings

    from astropy.utils.exceptions import AstropyWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            w = WCS(header)
        if w.has_celestial and w.naxis == 2 and header.get("CTYPE1", "").startswith("RA"):
            return w
    except Exception:
        return None
    return None


def _calibrated_frames(paths, masters, instrument, threads, det_kw):
    """Per frame: (sci e-, mask uint8, sources, header, jd_mid) or a FrameError, calibrated in memory."""
    from ..astrometry.solve import detect_sources
    from ..calibration.mef import MASK_BAD, MASK_CR, MASK_SATURATED
    from ..calibration.reduce import calibrate_frame, load_calibration, read_raw

    cal = load_calibration(masters, instrument)

    def one(path):
        try:
            raw = read_raw(path, instrument, cal.shape)
            sci, err, msk = calibrate_frame(raw, cal)
            ignore = ((msk & (MASK_BAD | MASK_CR | MASK_SATURATED)) > 0) | ~np.isfinite(sci)
            src = detect_sources(sci, ignore, **det_kw)
            return dict(msk=msk, sci=sci, sources=src, header=raw.header, jd=raw.jd_mid, ra=raw.ra, dec=raw.dec)
        except FrameError as err:
            return err

    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        return list(pool.map(one, paths)), cal


def resolve_sky_target(paths, masters, instrument, entry, name, date, photometry, settings=None,
                       astrometry=None, threads=1):
    """Pixel positions in the first frame of ``paths`` for a target given on the sky.

    Parameters
    ----------
    paths : list of str
        Raw science frames of the target, in time order (the photometry job's list).
    masters : dict
        ``bias``, ``dark``, ``flat``, ``bpm`` paths.
    instrument : dict
        Validated instrument (plate scale, saturation, keywords).
    entry : dict
        The targets.yaml entry (``ra``/``dec`` or ``all_star_coords``; optional ``pm_ra``,
        ``pm_dec`` (mas/yr), ``epoch``, ``n_comparisons``, ``tracking_star``).
    name, date : str
        Target and night date (YYYYMMDD).
    photometry : dict
        Photometry settings (``SKYRAD_outer`` sets the edge margin and the isolation radius).
    settings : dict, optional
        :data:`DEFAULTS` overrides.
    astrometry : dict, optional
        The night's ``astrometry`` settings (index files, timeout) for solving the reference.
    threads : int

    Returns
    -------
    dict
        The resolved entry (``start_date``, ``all_star_positions``, ``tracking_star``, ``ra``,
        ``dec``, ``all_star_coords``) and ``_notes`` (one comment line per star, and how the
        WCS was obtained).

    Raises
    ------
    ConfigError
        No frame readable, no WCS obtainable, the target off the chip, or too few stars.
    """
    from ..astrometry import follow as F
    from ..calibration.frames import saturation_electrons

    st = dict(DEFAULTS)
    st.update({k: v for k, v in (settings or {}).items() if k in DEFAULTS and v is not None})
    n_comp = int(entry.get("n_comparisons", st["n_comparisons"]))
    det_kw = dict(fwhm_px=st["fwhm_px"], nsigma=st["nsigma"], max_sources=st["max_sources"])
    frames, cal = _calibrated_frames([str(p) for p in paths], masters, instrument, threads, det_kw)
    ok = [k for k, f in enumerate(frames) if not isinstance(f, FrameError)]
    if not ok:
        raise ConfigError(f"{name}: none of the {len(paths)} science frames could be read to place the target")
    shape = cal.shape
    ny, nx = shape
    first = ok[0]
    wcs_ref, k_ref, how = _reference_wcs(frames, ok, paths, instrument, entry, astrometry, shape)
    notes = [f"WCS: {how}"]
    ref_src = frames[k_ref]["sources"]
    # The reference's own stars as the catalogue: follow every frame from the reference.
    cat = F.build_catalogue(wcs_ref, shape, ref_src, {"catalogue": "none"})
    fst = dict(F.DEFAULTS)
    wcs = {k_ref: wcs_ref}
    for order in (range(k_ref + 1, len(frames)), range(k_ref - 1, -1, -1)):
        prev = wcs_ref
        for k in order:
            if isinstance(frames[k], FrameError):
                continue
            sol, info = F.follow_frame(frames[k]["sources"], prev, cat, shape, fst)
            if sol is None:
                log.info("%s: %s not followed (%s); its positions are not checked", name, Path(paths[k]).name,
                         info["message"])
                continue
            wcs[k] = prev = sol.to_wcs(shape)
    followed = sorted(wcs)
    drift = _drift(wcs, wcs_ref, shape)
    notes.append(f"followed {len(followed)} of {len(frames)} frames; pointing drift {drift:.1f} px over the night")
    if first not in wcs:
        raise ConfigError(f"{name}: the first science frame {Path(paths[first]).name} could not be matched to the "
                          f"reference frame; cannot give positions in it")
    jd = frames[first]["jd"]
    coords = star_coords(entry, jd)
    # Candidates: reference detections on the sky.
    cra, cdec = wcs_ref.all_pix2world(np.asarray(ref_src["x"], float), np.asarray(ref_src["y"], float), 0)
    cflux = np.asarray(ref_src["flux"], float)
    r_out = float(photometry.get("SKYRAD_outer", 25.0))
    margin = r_out + float(st["edge_margin_px"])
    sat_e = saturation_electrons(cal)
    # Per followed frame: candidate positions, on-chip and saturation checks.
    on_chip = np.ones(len(cra), bool)
    unsat = np.ones(len(cra), bool)
    for k in followed:
        x, y = wcs[k].all_world2pix(cra, cdec, 0)
        on_chip &= (x >= margin) & (x <= nx - 1 - margin) & (y >= margin) & (y <= ny - 1 - margin)
        unsat &= _unsaturated(frames[k], x, y, sat_e, st["max_peak_fraction"])
    # Isolation in the reference frame: no brighter-than-ratio detection inside the annulus.
    rx, ry = np.asarray(ref_src["x"], float), np.asarray(ref_src["y"], float)
    tree = cKDTree(np.c_[rx, ry])
    isolated = np.ones(len(rx), bool)
    for i, nb in enumerate(tree.query_ball_point(np.c_[rx, ry], r_out)):
        others = [j for j in nb if j != i]
        isolated[i] = not others or cflux[others].max() < st["isolation_flux_ratio"] * cflux[i]
    # The listed stars: placed and snapped to the nearest reference detection.
    tx, ty = wcs_ref.all_world2pix(coords[:, 0], coords[:, 1], 0)
    d, j = tree.query(np.c_[tx, ty])
    snapped = d <= st["snap_px"]
    if not (0 <= tx[0] < nx and 0 <= ty[0] < ny):
        raise ConfigError(f"{name}: RA {coords[0, 0]:.5f} Dec {coords[0, 1]:.5f} falls outside the reference frame "
                          f"({tx[0]:.0f}, {ty[0]:.0f}) px")
    star_sky = [(float(cra[j[i]]), float(cdec[j[i]])) if snapped[i] else (float(coords[i, 0]), float(coords[i, 1]))
                for i in range(len(coords))]
    for i in range(len(coords)):
        notes.append(f"star {i} (listed): RA {star_sky[i][0]:.6f} Dec {star_sky[i][1]:.6f}, "
                     + (f"detected {d[i]:.1f} px from the given position, flux {cflux[j[i]]:.3g} e-"
                        if snapped[i] else f"no detection within {st['snap_px']} px (given position used)"))
    chosen = []
    if not entry.get("all_star_coords"):
        t_flux = cflux[j[0]] if snapped[0] else math.nan
        if not np.isfinite(t_flux):
            raise ConfigError(f"{name}: no star detected within {st['snap_px']} px of RA {coords[0, 0]:.5f} "
                              f"Dec {coords[0, 1]:.5f}; cannot choose comparisons of similar brightness")
        lo, hi = st["flux_ratio_range"]
        ratio = cflux / t_flux
        good = on_chip & unsat & isolated & (ratio >= lo) & (ratio <= hi)
        good[j[0]] = False
        cand = np.nonzero(good)[0]
        cand = cand[np.argsort(np.abs(np.log(ratio[cand])), kind="stable")][:n_comp]
        for c in cand:
            chosen.append(int(c))
            star_sky.append((float(cra[c]), float(cdec[c])))
            notes.append(f"star {len(star_sky) - 1} (comparison): flux ratio {ratio[c]:.2f}, unsaturated and on the "
                         f"chip in all {len(followed)} followed frames, isolated within {r_out:.0f} px")
        rejected = {"saturated": int((~unsat).sum()), "off the chip": int((~on_chip).sum()),
                    "not isolated": int((~isolated).sum())}
        notes.append(f"{len(cand)} comparison stars chosen of {len(cra)} detected (candidates rejected: "
                     + ", ".join(f"{v} {k}" for k, v in rejected.items()) + f"; brightness within {lo}-{hi}x)")
        if not len(cand):
            raise ConfigError(f"{name}: no comparison star passes the checks (" + "; ".join(notes[-1:]) + ")")
    sky = np.array(star_sky, float)
    x0, y0 = wcs[first].all_world2pix(sky[:, 0], sky[:, 1], 0)
    # Positions in the first frame: the detection there when one is within snap_px.
    src0 = frames[first]["sources"]
    if len(src0):
        d0, j0 = cKDTree(np.c_[src0["x"], src0["y"]]).query(np.c_[x0, y0])
        near = d0 <= st["snap_px"]
        x0 = np.where(near, np.asarray(src0["x"])[np.minimum(j0, len(src0) - 1)], x0)
        y0 = np.where(near, np.asarray(src0["y"])[np.minimum(j0, len(src0) - 1)], y0)
    if "tracking_star" in entry:
        track = int(entry["tracking_star"])
    else:
        fl = np.array([cflux[j[0]] if snapped[0] else 0.0] + [cflux[j[i]] if snapped[i] else 0.0
                                                               for i in range(1, len(coords))] + list(cflux[chosen]))
        ok_track = np.r_[[on_chip[j[i]] and unsat[j[i]] if snapped[i] else False for i in range(len(coords))],
                         np.ones(len(chosen), bool)]
        track = int(np.argmax(np.where(ok_track, fl, -1.0)))
    if not 0 <= track < len(sky):
        raise ConfigError(f"{name}: tracking_star {track} is not a star index (0..{len(sky) - 1})")
    notes.append(f"tracking star: {track}")
    resolved = {"start_date": str(date), "all_star_positions": [[round(float(a), 3), round(float(b), 3)]
                                                              for a, b in zip(x0, y0)],
                "tracking_star": track, "ra": round(float(sky[0, 0]), 7), "dec": round(float(sky[0, 1]), 7),
                "all_star_coords": [[round(float(a), 7), round(float(b), 7)] for a, b in sky]}
    return {"entry": resolved, "notes": notes}


def _reference_wcs(frames, ok, paths, instrument, entry, astrometry, shape):
    """(WCS, frame index, how) of the night's reference: the first header WCS, else solve-field."""
    from ..astrometry import solve as S
    from ..calibration.frames import solve_kwargs

    for k in ok[:1]:
        w = header_wcs(frames[k]["header"])
        if w is not None:
            return w.celestial, k, f"header WCS of {Path(paths[k]).name}"
    if not S.solve_field_available():
        raise ConfigError("the frames carry no WCS and solve-field is not installed (Debian package astrometry.net): "
                          "cannot place a target given by RA/Dec")
    kw = solve_kwargs(instrument, astrometry or {})
    try:
        ra, dec = sky_position(entry)
    except ConfigError:
        ra, dec = None, None
    tried = sorted(ok[:10], key=lambda k: -len(frames[k]["sources"]))[:3]
    for k in tried:
        f = frames[k]
        hra, hdec = (f["ra"], f["dec"]) if f["ra"] is not None and np.isfinite(f["ra"] or np.nan) else (ra, dec)
        res = S.solve_field(f["sci"], header=f["header"], mask=(f["msk"] & 7) > 0,
                            ra_hint=hra if hra is not None else ra, dec_hint=hdec if hdec is not None else dec,
                            **kw)
        if res.solved:
            return res.wcs, k, f"solve-field on {Path(paths[k]).name} ({res.n_matched} stars, {res.rms_arcsec:.2f}\")"
    raise ConfigError(f"no WCS: the frames have none and solve-field solved none of {len(tried)} frames tried "
                      f"(last: {res.message}); give pixel positions in targets.yaml instead")


def _unsaturated(frame, x, y, sat_e, max_fraction, half=2):
    """True where no pixel within ``half`` px of (x, y) is MASK-saturated or above ``max_fraction`` * saturation."""
    from ..calibration.mef import MASK_SATURATED

    ny, nx = frame["sci"].shape
    xi, yi = np.rint(np.nan_to_num(x, nan=-1e6)).astype(int), np.rint(np.nan_to_num(y, nan=-1e6)).astype(int)
    inside = (xi >= half) & (xi < nx - half) & (yi >= half) & (yi < ny - half)
    out = np.ones(len(x), bool)
    off = np.arange(-half, half + 1)
    idx = np.nonzero(inside)[0]
    if len(idx):
        gy = yi[idx, None, None] + off[None, :, None]
        gx = xi[idx, None, None] + off[None, None, :]
        peak = frame["sci"][gy, gx].reshape(len(idx), -1).max(axis=1)
        satur = (frame["msk"][gy, gx].reshape(len(idx), -1) & MASK_SATURATED).any(axis=1)
        out[idx] = ~satur & (peak < max_fraction * sat_e)
    return out


def _drift(wcs, wcs_ref, shape):
    """Largest distance (px) the reference's centre moves on the chip over the followed frames."""
    ny, nx = shape
    c = wcs_ref.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    pos = np.array([w.world_to_pixel_values(c[0], c[1]) for w in wcs.values()], float)
    return float(np.hypot(*(pos - pos[0]).T).max()) if len(pos) else 0.0


def write_resolved(result, name, path):
    """Write ``targets_resolved.yaml`` (targets.yaml format, notes as comments), atomically."""
    text = (f"# {name}: placed from its sky position by bandersnake.placement (copy into targets.yaml to edit).\n"
            + "".join(f"# {line}\n" for line in result["notes"])
            + yaml.safe_dump({"targets": {name: [result["entry"]]}}, sort_keys=False, default_flow_style=None))
    write_text(text, path)


def resolve_for_rule(paths, masters, instrument, targets_file, name, date, photometry, output, astrometry=None,
                     settings=None, threads=1):
    """The ``resolve_targets`` job: look the entry up in targets.yaml, place it, write the YAML."""
    from ..photometry.targets import _pick_entry, load_targets, sanitize

    targets = load_targets(targets_file)
    key = name if name in targets else next((k for k in targets if sanitize(k) == sanitize(name)), None)
    if key is None:
        raise ConfigError(f"{targets_file}: target {name!r} not found")
    entry, _ = _pick_entry(targets[key], str(date), f"{targets_file}: targets.{key}")
    if not needs_placement(entry):
        result = {"entry": dict(entry, start_date=str(date)), "notes": ["pixel positions as given in targets.yaml"]}
    else:
        result = resolve_sky_target(paths, masters, instrument, entry, sanitize(name), date, photometry,
                                    settings=settings, astrometry=astrometry, threads=threads)
    write_resolved(result, sanitize(name), output)
    for line in result["notes"]:
        log.info("%s: %s", name, line)
    return result
