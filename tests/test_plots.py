"""Diagnostic plots: every plot is written as a real PNG and has a report caption."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from _analysis_synth import make_night
from bandersnake.analysis.differential import read_differential, run_differential
from bandersnake.analysis.plots import (
    PLOTS, bin_series, make_plots, plot_precision_vs_brightness)
from bandersnake.transitfit.fit import fit_night
from bandersnake.transitfit.plots import plot_corner, plot_night_fit

REPORT = Path(__file__).resolve().parents[1] / "workflow" / "report"


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    out = []
    for seed in (1, 2):
        root = tmp_path_factory.mktemp(f"plots{seed}")
        n = make_night(root, seed=seed, radii=(4, 5, 6), n_frames=240)
        s = run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=root / "photometry",
                             night=f"SYNTH_2023010{seed}", target="T")
        out.append((root, n, s))
    return out


def _assert_png(path, min_kb=10):
    path = Path(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_kb * 1024          # an empty axes PNG is ~5 kB
    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.05                    # not a blank canvas


def test_make_plots_writes_every_plot(nights):
    root, n, s = nights[0]
    paths = make_plots(s["paths"]["differential"], n["centroid_path"], s["paths"]["metrics"], root / "plots")
    assert set(paths) == set(PLOTS)
    for p in paths.values():
        _assert_png(p)


def test_multi_night_and_transit_plots(nights, tmp_path):
    p = plot_precision_vs_brightness([s["paths"]["metrics"] for _, _, s in nights], tmp_path / "pvb.png")
    _assert_png(p)
    root, n, s = nights[0]
    d = read_differential(s["paths"]["differential"])
    ok = d["frame_ok"]
    fit = fit_night(d["BJD_TDB"][ok], d["diff_flux"][ok], d["diff_flux_err"][ok], {"n_tau": 20, "max_steps": 1500},
                    ld={"u1": 0.4, "u2": 0.25, "sigma": 0.1})
    _assert_png(plot_night_fit(fit, tmp_path / "fit.png"))
    _assert_png(plot_corner(fit["samples"], tmp_path / "corner.png"))


def test_every_plot_has_a_caption():
    for name in (*PLOTS, "precision_vs_brightness", "transit_fit", "transit_fit_corner", "joint_fit"):
        text = (REPORT / f"{name}.rst").read_text()
        assert len(text.split()) > 15, name


def test_bin_series_means():
    t = np.arange(40) / 1440                  # 1-min cadence, 10-min bins -> 4 bins of 10
    y = np.repeat([1.0, 2.0, 3.0, 4.0], 10) + np.tile([0.1, -0.1], 20)
    tb, yb, eb = bin_series(t, y, 10)
    np.testing.assert_allclose(yb, [1, 2, 3, 4], atol=1e-12)
    np.testing.assert_allclose(eb, 0.1 * np.sqrt(10 / 9) / np.sqrt(10), rtol=1e-9)
