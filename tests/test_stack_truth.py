"""Stack, ePSF, PSF photometry, zero point and depth against injected truth (issue 20).

One simulated field (:mod:`bandersnake.sim.stackfield`): 6 calibrated frames, 400x400 px at 1"/px,
dithered by ~6 px rms and rotated by ~0.3 deg rms, Moffat PSF (FWHM 3 px, beta 3), known
magnitudes (ZP 22.0 for 1 e-/s), a catalogue file of the brighter stars with 0.02 mag noise, bad
pixels with garbage values, cosmic rays, and 160 injected faint stars (not in the catalogue) for
the depth. Every frame's header WCS is perturbed (0.3 px shift, 0.01 deg rotation: a plate
solution's typical error), so the alignment has to correct it. Built once per module (~30 s).
"""

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from bandersnake.sim import render
from bandersnake.sim.stackfield import simulate_field, write_field
from bandersnake.stack import build as B
from bandersnake.stack import measure as M
from bandersnake.stack import sources as SO

# One module fixture builds the field, its stack and its measurement (~30 s on 2 busy cores).
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")]

FWHM, BETA, ZP = 3.0, 3.0, 22.0


def _perturb(hdul, true_wcs, rng):
    """Shift (0.3 px rms) and rotate (0.01 deg rms) the WCS of every extension of a frame."""
    w = true_wcs.deepcopy()
    w.wcs.crpix = w.wcs.crpix + rng.normal(0, 0.3, 2)
    t = math.radians(rng.normal(0, 0.01))
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    w.wcs.cd = w.wcs.cd @ rot
    for h in hdul:
        h.header.update(w.to_header())
    return w


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("stack_truth")
    sim = simulate_field(n_frames=6, shape=(400, 400), n_stars=180, mag_range=(12.5, 19.5), min_separation_px=11,
                         n_faint=160, faint_mag_range=(18.0, 21.5), catalogue_max_mag=17.5, seed=11,
                         fwhm_px=FWHM, beta=BETA, zeropoint_mag=ZP)
    rng = np.random.default_rng(12)
    header_wcs = [_perturb(h, w, rng) for h, w in zip(sim.frames, sim.wcs)]
    paths = write_field(sim, d)
    image = d / "image.fits"
    B.stack_group(paths, image, d / "frames.ecsv")
    infos, _ = B.select_frames(paths, {})
    out = d / "FIELD_V_stk.fits"
    M.measure_stack(image, out, d / "epsf.png", d / "zp.png",
                    catalogue_settings={"source": "file", "file": str(d / "catalogue.ecsv")})
    with fits.open(out) as h:
        prod = {x.name: (x.header.copy(), x.data.copy() if x.data is not None else None) for x in h}
    return dict(sim=sim, infos=infos, header_wcs=header_wcs, prod=prod, image=image, dir=d)


def _stack_wcs(field):
    return WCS(field["prod"]["SCI"][0])


def test_alignment_within_005_px(field):
    """Where each frame puts each star on the stack grid, with the fitted corrections: the spread over
    frames is the alignment error. <= 0.05 px rms (the issue's requirement), against header WCSs that
    were 0.3 px off."""
    sim, infos = field["sim"], field["infos"]
    gw = _stack_wcs(field)
    bright = ~np.asarray(sim.stars["faint"])
    ra, dec = np.asarray(sim.stars["ra"])[bright], np.asarray(sim.stars["dec"])[bright]
    landing = []
    for info, true_w in zip(infos, sim.wcs):
        assert info.status == "ok", info.reason
        A, t = info.affine
        px_true = np.column_stack(true_w.all_world2pix(ra, dec, 0))          # where the star really is
        pred = np.linalg.solve(A, (px_true - t).T).T                          # invert p_true = A p + t
        r2, d2 = info.wcs.all_pix2world(pred[:, 0], pred[:, 1], 0)            # header WCS of that pixel
        landing.append(np.column_stack(gw.all_world2pix(r2, d2, 0)))
    landing = np.array(landing)                                               # frames x stars x 2
    spread = landing - landing.mean(axis=0)
    rms = float(np.sqrt(np.mean(np.sum(spread ** 2, axis=2))))
    assert rms <= 0.05
    # Without the correction the header WCSs disagree by ~0.4 px: the test can fail.
    raw = np.array([np.column_stack(gw.all_world2pix(*w.all_pix2world(*tw.all_world2pix(ra, dec, 0), 0), 0))
                    for w, tw in zip(field["header_wcs"], sim.wcs)])
    assert float(np.sqrt(np.mean(np.sum((raw - raw.mean(axis=0)) ** 2, axis=2)))) > 0.15


def test_stack_header_and_masks(field):
    p, _ = field["prod"]["PRIMARY"]
    assert p["NCOMBINE"] == 6 and p["EXPTIME"] == pytest.approx(360.0)
    assert p["ALIGNRMS"] < 0.2 and p["RADISP"] < 0.2 and p["DEDISP"] < 0.2
    assert 60685.12 < p["MJD-MID"] < 60685.14
    sci = field["prod"]["SCI"][1]
    mask = field["prod"]["MASK"][1]
    ncomb = field["prod"]["NCOMB"][1]
    # The garbage bad pixels (up to 5e4 e- in a 60-s frame: >= 100 sigma in the stack) never reach a
    # good stack pixel: at every bad pixel's position on the grid, the PSF-subtracted residual is
    # noise (median |resid/err| ~ 0.7; a leak would give >= 100; 20 leaves room for the star cores
    # the PSF fit leaves at a few sigma).
    resid = field["prod"]["RESIDUAL"][1]
    err = field["prod"]["ERR"][1]
    gw = _stack_wcs(field)
    ys, xs = [], []
    for hdul, w in zip(field["sim"].frames, field["sim"].wcs):
        by, bx = np.nonzero(hdul["MASK"].data & 1)
        gx, gy = gw.all_world2pix(*w.all_pix2world(bx, by, 0), 0)
        xs.append(np.rint(gx).astype(int)), ys.append(np.rint(gy).astype(int))
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    inside = (xs >= 0) & (ys >= 0) & (xs < sci.shape[1]) & (ys < sci.shape[0])
    xs, ys = xs[inside], ys[inside]
    good = (mask[ys, xs] & 1) == 0
    z = np.abs(resid[ys, xs] / err[ys, xs])[good]
    assert good.sum() > 100 and np.median(z) < 1.5 and np.max(z) < 20
    assert np.all(np.isnan(sci[(mask & 1) > 0])) and np.all(ncomb[(mask & 1) > 0] == 0)
    assert ((mask & 2) > 0).sum() > 0                 # cosmic rays left out are flagged


def test_epsf_fwhm_within_3_percent(field):
    """Truth: the same Moffat fit applied to the true effective PSF (the FWHM 3 px, beta 3 Moffat
    integrated over pixels, as an ePSF is), 3.11 px."""
    from photutils.psf import ImagePSF

    stamps, _, _ = render.moffat_stamps(np.array([20.0]), np.array([20.0]), FWHM, BETA, 20, oversample=10)
    true_fwhm = SO.moffat_fit(ImagePSF(stamps[0], oversampling=1))["fwhm"]
    p, _ = field["prod"]["PRIMARY"]
    assert p["PSFNSTAR"] >= 10
    assert p["PSFFWHM"] == pytest.approx(true_fwhm, rel=0.03)
    assert "PSF" in field["prod"] and (field["dir"] / "epsf.png").stat().st_size > 1000


def _matched(field, table, radius=1.0):
    sim = field["sim"]
    gw = _stack_wcs(field)
    x, y = gw.all_world2pix(sim.stars["ra"], sim.stars["dec"], 0)
    tx, ty = np.asarray(table["x"]), np.asarray(table["y"])
    d = np.hypot(x[:, None] - tx[None, :], y[:, None] - ty[None, :])
    j = np.argmin(d, axis=1)
    ok = d[np.arange(len(x)), j] < radius
    return ok, j


def test_psf_fluxes_within_1_percent_above_snr_100(field):
    _, t = field["prod"]["PSFPHOT"]
    t = Table(t)
    ok, j = _matched(field, t)
    truth = np.asarray(field["sim"].stars["flux"])
    ratio = np.asarray(t["flux"])[j[ok]] / truth[ok]
    snr = np.asarray(t["snr"])[j[ok]]
    sel = snr > 100
    assert sel.sum() >= 10
    # The mean is within 1 % of truth; each star's scatter is its own noise (1/S/N <= 1 %) plus the
    # ePSF's error: the rms stays within 1 %, measured 0.5-0.8 %.
    assert np.median(ratio[sel]) == pytest.approx(1.0, abs=0.01)
    assert float(np.sqrt(np.mean((ratio[sel] - 1) ** 2))) < 0.0125


def test_zero_point_within_002_mag(field):
    p, _ = field["prod"]["PRIMARY"]
    assert p["NZPSTARS"] >= 10
    assert float(p["ZPTMAG"]) == pytest.approx(ZP, abs=0.02)
    assert 0 < float(p["ZPTMUCER"]) < 0.02
    assert (field["dir"] / "zp.png").stat().st_size > 1000
    from astropy import units as u

    from bandersnake.fitsio import read_table

    t = read_table(field["dir"] / "FIELD_V_stk.fits", hdu="PSFPHOT")
    assert t["flux"].unit == u.electron / u.s and t["mag"].unit == u.mag


def test_m5sigma_matches_half_recovery_of_injected_stars(field):
    """Injected faint stars are recovered when detected within 1.5 px with S/N >= 5 in APPHOT; the
    magnitude of 50 % recovery (logistic fit) is within 0.2 mag of M5SIGMA."""
    from scipy.optimize import curve_fit

    p, _ = field["prod"]["PRIMARY"]
    _, t = field["prod"]["APPHOT"]
    t = Table(t)
    ok, j = _matched(field, t, radius=1.5)          # ~2 sigma of an S/N 5 centroid (FWHM / S/N)
    faint = np.asarray(field["sim"].stars["faint"])
    mag = np.asarray(field["sim"].stars["mag"])[faint]
    rec = (ok & (np.asarray(t["snr"])[j] >= 5))[faint].astype(float)

    def logistic(m, m50, w):
        return 1 / (1 + np.exp((m - m50) / w))

    (m50, _), _ = curve_fit(logistic, mag, rec, p0=[float(p["M5SIGMA"]), 0.3])
    assert 0.05 < rec.mean() < 0.95                 # the injected range brackets the limit
    assert float(p["M5SIGMA"]) == pytest.approx(m50, abs=0.2)
