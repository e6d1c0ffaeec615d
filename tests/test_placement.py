"""Targets given on the sky (bandersnake.placement): placement, comparison choice, the workflow."""

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from bandersnake.errors import ConfigError
from bandersnake.placement import needs_placement
from bandersnake.placement.place import header_wcs, sky_position, star_coords

from _analysis_night import make_analysis_night
from conftest import run_snakemake


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


@pytest.mark.slow
def test_sky_target_transit_matches_hand_picked(tmp_path):
    """The demo-like night (6 stars, 120 frames, a 41-min transit, drift and a re-acquisition jump)
    with the target given only by RA/Dec (frames carry their WCS, as PinPoint writes it): the
    pipeline places it, picks the comparisons itself, and the transit and scatter match the run
    with hand-typed positions (truth positions of the listed stars)."""
    hand = tmp_path / "hand"
    night = make_analysis_night(hand, n_science=120, readout_s=10.0, n_stars=6, transit_period_d=0.5, a_rs=6.0,
                                transit_offset_min=0.0, header_wcs=True)
    target, name = night["target"], night["night"]
    fit_file = f"work/{name}/{target}/transit/transit_fit.yaml"
    diff_file = f"work/{name}/{target}/photometry/differential.fits"
    run_snakemake(hand, [fit_file, diff_file], config=night["config"])
    sky = tmp_path / "sky"
    sky.mkdir()
    tr = night["truth"]["target"]
    (sky / "targets.yaml").write_text(yaml.safe_dump(
        {"targets": {target: [{"start_date": "20200101", "ra": float(tr["ra_deg"]), "dec": float(tr["dec_deg"])}]}}))
    config = dict(night["config"], targets_file=sky / "targets.yaml")
    run_snakemake(sky, [fit_file, diff_file], config=config)
    resolved = yaml.safe_load((sky / f"work/{name}/{target}/targets_resolved.yaml").read_text())
    entry = resolved["targets"][target][0]
    # The target lands on its true first-frame position (the detection's centroid: < 0.3 px).
    true0 = np.array([night["truth"]["stars"][0]["x_first"], night["truth"]["stars"][0]["y_first"]])
    assert np.hypot(*(np.array(entry["all_star_positions"][0]) - true0)) < 0.3
    assert len(entry["all_star_positions"]) >= 3
    fits_hand = yaml.safe_load((hand / fit_file).read_text())
    fits_sky = yaml.safe_load((sky / fit_file).read_text())
    depth_true = night["truth"]["transit"]["depth_at_t0"]
    # Transit depth within 1 sigma of the truth (the bar).
    assert fits_sky["success"]
    assert abs(fits_sky["depth_model"] - depth_true) < fits_sky["depth_model_err"]
    # Out-of-transit scatter within 10 % of the hand-picked run's.
    s_hand, s_sky = (_oot_scatter(root / diff_file, night["truth"]["transit"]) for root in (hand, sky))
    assert abs(s_sky - s_hand) <= 0.1 * s_hand, (s_sky, s_hand)


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
