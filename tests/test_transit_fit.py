"""The project's own transit model (quadratic limb darkening) and its quick least-squares fit (used by
tests as a depth check); the workflow's transit fit (batman, emcee) is tested in test_transitfit.py,
here through its stage on a simulated night's products."""

import math

import numpy as np
import pytest
import yaml

from _analysis_synth import make_night
from bandersnake.analysis.differential import run_differential
from bandersnake.analysis.transit import fit_transit, occulted_flux, overlap_area, separation, transit_model
from bandersnake.transitfit import transit_fit_stage, transit_plots_stage
from bandersnake.transitfit.stages import read_samples


def brute_force_flux(z, p, u1, u2, n=3000):
    """2-D pixel integration of the limb-darkened disc (independent of the model's quadrature)."""
    x = (np.arange(n) + 0.5) / n * 2 - 1
    xx, yy = np.meshgrid(x, x)
    r2 = xx**2 + yy**2
    mu = np.sqrt(np.clip(1 - r2, 0, None))
    intensity = np.where(r2 < 1, 1 - u1 * (1 - mu) - u2 * (1 - mu) ** 2, 0)
    return 1 - intensity[(xx - z) ** 2 + yy**2 < p * p].sum() / intensity.sum()


@pytest.mark.parametrize("z", [0.0, 0.4, 0.88, 0.97, 1.06])
def test_model_against_brute_force(z):
    # a 3000^2 grid resolves the planet disc (r = 0.1) with ~70000 pixels: edge pixelisation
    # error ~1e-6 in flux, far below photometric noise
    assert occulted_flux([z], 0.1, 0.4, 0.25)[0] == pytest.approx(brute_force_flux(z, 0.1, 0.4, 0.25), abs=3e-6)


def test_model_limits():
    # uniform disc: flux = 1 - overlap/pi (Mandel & Agol's lambda^e)
    z = np.linspace(0, 1.3, 50)
    np.testing.assert_allclose(occulted_flux(z, 0.12), 1 - overlap_area(1.0, 0.12, z) / math.pi, atol=1e-15)
    # small planet at disc centre: depth = p^2 I(1) / <I> = p^2 / (1 - u1/3 - u2/6), up to the
    # intensity drop across the planet's own disc, O(u1 p^2 / 4) ~ 1e-5 relative for p = 0.01
    assert 1 - occulted_flux([0.0], 0.01, 0.4, 0.25)[0] == pytest.approx(1e-4 / (1 - 0.4 / 3 - 0.25 / 6), rel=3e-5)
    # full overlap of the disc by a huge planet
    assert occulted_flux([0.0], 1.5, 0.3, 0.2)[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(occulted_flux([1.2, 5.0], 0.1, 0.4, 0.25) == 1.0)


def test_circular_orbit_matches_chord_for_long_periods():
    t = 2460000.7 + np.linspace(-0.06, 0.06, 200)
    chord = separation(t, 2460000.7, 0.1, 2 / 24, 0.3)
    orbit = separation(t, 2460000.7, 0.1, 2 / 24, 0.3, period=30.0)
    # both reach z = 1 + p at +-T14/2 by construction; the orbit's curvature is O((T14/P)^2)
    np.testing.assert_allclose(orbit, chord, atol=2e-4)


def test_noise_free_fit_is_exact():
    t = 2460000.55 + np.arange(300) / 1440
    y = transit_model(t, 2460000.70, 0.1, 2 / 24, 0.3, 0.4, 0.25) * (1 + 0.007 * (t - t.mean()))
    f = fit_transit(t, y, np.full(300, 0.002), b=0.3)
    assert f["t0"] == pytest.approx(2460000.70, abs=1e-7)   # 9 ms
    assert f["rp_rs"] == pytest.approx(0.1, rel=1e-6)
    assert f["duration"] == pytest.approx(2 / 24, rel=1e-6)


def test_uncertainties_are_honest():
    """Coverage over 25 noise realisations: |error| < 1 sigma in ~68 %, < 2 sigma in ~95 %."""
    rng = np.random.default_rng(5)
    t = 2460000.55 + np.arange(300) / 1440
    model = transit_model(t, 2460000.70, 0.1, 2 / 24, 0.3, 0.4, 0.25)
    true_depth = 1 - occulted_flux([0.3], 0.1, 0.4, 0.25)[0]
    pulls = {"depth_model": [], "t0": [], "duration": []}
    truth = {"depth_model": true_depth, "t0": 2460000.70, "duration": 2 / 24}
    for _ in range(25):
        y = model * (1 + 0.007 * (t - t.mean())) + 0.002 * rng.standard_normal(300)
        f = fit_transit(t, y, np.full(300, 0.002), b=0.3)
        for k in pulls:
            pulls[k].append((f[k] - truth[k]) / f[k + "_err"])
    for k, v in pulls.items():
        v = np.abs(v)
        # binomial(25, 0.68): 1-sigma fraction in [0.44, 0.92] at ~2.5 sigma; 2-sigma fraction >= 0.8
        assert 0.44 <= np.mean(v < 1) <= 0.92, (k, np.mean(v < 1))
        assert np.mean(v < 2) >= 0.8, k


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfit")
    n = make_night(root, seed=25, radii=(4, 5, 6))
    s = run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=root / "photometry")
    return n, s, root


def _outputs(root, name):
    return {k: root / name / f"transit_fit{ext}" for k, ext in
            (("fit", ".yaml"), ("lc", "_lc.ecsv"), ("samples", "_samples.fits"))}


def _plots(root, name):
    return {"plot": root / name / "transit_fit.png", "corner": root / name / "transit_fit_corner.png"}


@pytest.mark.slow
def test_stage_recovers_injected_transit(fitted):
    """The workflow's fit (transitfit stage) on a simulated night's products: (Rp/R*)^2, T0 and the
    deepest flux drop hold the injected values within their 95 % intervals (a 1-in-20 miss each for
    honest intervals; seed fixed; the coverage benchmark measures the rates)."""
    n, s, root = fitted
    tr = n["truth"]
    out = _outputs(root, "free")
    report = transit_fit_stage(s["paths"]["differential"], n["centroid_path"], out,
                               {"window": [tr["t0"] - 0.04, tr["t0"] + 0.04], "u1": tr["u1"], "u2": tr["u2"],
                                "detrend": ["airmass"]}, filter_name="I")
    assert report["success"], report["message"]
    true_drop = 1 - occulted_flux([tr["b"]], tr["rp_rs"], tr["u1"], tr["u2"])[0]
    for key, truth in (("rp_rs_sq", tr["rp_rs"] ** 2), ("t0", tr["t0"]), ("max_flux_drop", true_drop)):
        assert report[key]["p2.5"] <= truth <= report[key]["p97.5"], (key, report[key], truth)
    on_disk = yaml.safe_load(out["fit"].read_text())
    assert on_disk["aperture"] == s["best_aperture"]
    assert on_disk["rp_rs_sq"]["median"] == pytest.approx(report["rp_rs_sq"]["median"])
    assert set(on_disk["baseline"]) == {"c0", "c1", "k_airmass"}
    assert on_disk["priors"]["limb_darkening"]["source"].startswith("user values")
    # the samples on disk are the posterior the summaries describe
    samples = read_samples(out["samples"])
    assert np.median(samples["rp_rs_sq"]) == pytest.approx(report["rp_rs_sq"]["median"], rel=1e-9)
    assert np.percentile(samples["t0"], 84) == pytest.approx(report["t0"]["p84"], abs=1e-9)
    figures = _plots(root, "free")
    transit_plots_stage(out["fit"], out["lc"], out["samples"], s["paths"]["differential"], figures)
    for path in (*figures.values(), out["lc"]):
        assert path.stat().st_size > 1000, path


@pytest.mark.slow
def test_stage_with_known_geometry(fitted):
    """Period, impact parameter and limb darkening fixed at the truth: (Rp/R*)^2 within its 95 %."""
    n, s, root = fitted
    tr = n["truth"]
    report = transit_fit_stage(s["paths"]["differential"], n["centroid_path"], _outputs(root, "fixed"),
                               {"t0": tr["t0"] - 0.003, "period": 3.0, "b": tr["b"], "duration": 0.09,
                                "u1": tr["u1"], "u2": tr["u2"], "ld_sigma": 0.0})
    assert report["b"]["fixed"] and report["u1"]["fixed"]
    assert report["rp_rs_sq"]["p2.5"] <= tr["rp_rs"] ** 2 <= report["rp_rs_sq"]["p97.5"]


def test_search_without_ephemeris_finds_the_dip():
    rng = np.random.default_rng(9)
    t = 2460000.55 + np.arange(300) / 1440
    y = transit_model(t, 2460000.66, 0.1, 1.5 / 24, 0.2, 0.4, 0.25) + 0.002 * rng.standard_normal(300)
    f = fit_transit(t, y, np.full(300, 0.002))
    assert abs(f["t0"] - 2460000.66) < 3 * f["t0_err"]


def test_too_few_points_is_a_clear_error():
    with pytest.raises(ValueError, match="too few for a transit fit"):
        fit_transit(np.arange(5.0), np.ones(5), np.full(5, 1e-3))
