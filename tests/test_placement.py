"""Targets given on the sky (bandersnake.placement); the workflow run is in test_analysis_workflow."""

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bandersnake.errors import ConfigError
from bandersnake.placement import needs_placement
from bandersnake.placement.place import header_wcs, sky_position, star_coords



def test_needs_placement():
    assert needs_placement({"ra": 10.0, "dec": 5.0})
    assert needs_placement({"all_star_coords": [[10.0, 5.0]]})
    assert not needs_placement({"all_star_positions": [[1, 2]], "tracking_star": 0, "ra": 1.0, "dec": 2.0})


def test_sky_position_with_proper_motion():
    # Barnard's star: 10.3"/yr mostly north; 25 yr from J2000 moves it ~ +0.0713 deg in Dec.
    e = {"ra": 269.452, "dec": 4.6934, "pm_ra": -801.551, "pm_dec": 10362.394, "epoch": 2000.0}
    jd = 2451545.0 + 25 * 365.25
    ra, dec = sky_position(e, jd)
    assert dec - 4.6934 == pytest.approx(10362.394 * 25 / 3.6e6, rel=1e-6)
    assert (ra - 269.452) * math.cos(math.radians(4.6934)) == pytest.approx(-801.551 * 25 / 3.6e6, rel=1e-3)
    assert sky_position({"ra": "17 57 48.5", "dec": "+04 41 36"}) == pytest.approx((269.452083, 4.693333), abs=1e-5)
    with pytest.raises(ConfigError, match="ra/dec"):
        sky_position({"dec": 3.0})
    assert star_coords({"all_star_coords": [[1.0, 2.0], ["00 00 48", "+03 00 00"]]})[1] == pytest.approx([0.2, 3.0])


def test_header_wcs():
    h = fits.Header({"NAXIS": 2, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 5.0,
                     "CRPIX1": 1.0, "CRPIX2": 1.0, "CD1_1": -1e-3, "CD2_2": 1e-3, "CD1_2": 0.0, "CD2_1": 0.0})
    assert header_wcs(h) is not None
    assert header_wcs(fits.Header({"OBJECT": "x"})) is None


def _oot_scatter(path, transit):
    """Robust std (1.4826 MAD) of the best aperture's differential flux outside the transit."""
    with fits.open(path) as h:
        t = h[f"APER{int(h[0].header['BESTAPER'])}"].data
        time = np.asarray(t["BJD_TDB"], float)
        flux = np.asarray(t["diff_flux"], float)
        ok = np.asarray(t["frame_ok"], bool)
    half = transit["t14_min"] / 2 / 1440.0
    phase = (time - transit["t0_bjd_tdb"] + 0.5 * transit["period_d"]) % transit["period_d"] - 0.5 * transit["period_d"]
    oot = (np.abs(phase) > half * 1.1) & np.isfinite(flux) & ok
    f = flux[oot] / np.median(flux[oot])
    return float(1.4826 * np.median(np.abs(f - np.median(f))))


@pytest.mark.skipif(not Path("/usr/share/astrometry/index-tycho2-09.littleendian.fits").exists()
                    or not __import__("shutil").which("solve-field"), reason="solve-field / Tycho-2 index absent")
def test_reference_wcs_solved_when_headers_have_none():
    """Streaming path: no calibrated frames and no header WCS -> solve-field on one frame in memory."""
    from bandersnake.astrometry import tycho
    from bandersnake.astrometry.solve import detect_sources
    from bandersnake.placement.place import _reference_wcs

    shape = (500, 650)
    truth = tycho.tan_wcs(303.2, 46.0, 5.2, shape, 20.0)
    stars = tycho.stars_in_cone(303.2, 46.0, 1.0)
    img, _ = tycho.render_field(truth, shape, stars, zeropoint_mag=21.0, fwhm_px=2.5, sky_e=300.0, rng=4)
    frame = dict(sci=img, msk=np.zeros(shape, np.uint8), sources=detect_sources(img), header=fits.Header(),
                 ra=None, dec=None)
    inst = {"plate_scale_arcsec_per_px": 5.2}
    w, k, how = _reference_wcs([frame], [0], ["f.fits"], inst, {"ra": 303.25, "dec": 46.05}, {"timeout_s": 20},
                               shape)
    assert k == 0 and "solve-field" in how
    gy, gx = np.mgrid[0:500:50, 0:650:50]
    x2, y2 = w.all_world2pix(*truth.all_pix2world(gx, gy, 0), 0)
    assert np.hypot(x2 - gx, y2 - gy).max() < 0.5  # solve-field's own solution, tweak order 2 on ~20 stars
