"""A (night, target) whose analysis the data make impossible is published, marked failed, saying why.

Data conditions (target off chip in every frame, too few frames, an empty photometry table) go
through every analysis stage and give the declared products marked ``ANASTAT = 'FAILED'`` with the
reason; a genuine bug (TypeError) or a broken product still fails the job.
"""

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from matplotlib.image import imread

from _analysis_synth import make_night
from bandersnake.analysis import stages
from bandersnake.analysis.differential import MIN_KEPT_FRAMES, read_differential, run_differential
from bandersnake.analysis.io import FLAG_OFF_CHIP, ProductError
from bandersnake.analysis.plots import PLOTS, plot_precision_vs_brightness
from bandersnake.analysis.precision import METRIC_COLUMNS, read_precision_metrics
from bandersnake.analysis.status import analysis_failure
from bandersnake.batch import night_status
from bandersnake.errors import AnalysisNotPossible
from bandersnake.publish.summary import night_summary
from bandersnake.transitfit import transit_fit_stage, transit_plots_stage

NIGHT, TARGET = "SYNTH_20240101", "T-1"


def _masters(root):
    bias, dark = root / "master_bias.fits", root / "master_dark.fits"
    fits.PrimaryHDU(header=fits.Header({"RDNOISE": 12.0})).writeto(bias, overwrite=True)
    fits.PrimaryHDU(header=fits.Header({"DARKCUR": 0.05})).writeto(dark, overwrite=True)
    return bias, dark


def _outputs(base):
    """Declared outputs of the analysis rules under a target folder ``base``."""
    phot = base / "photometry"
    return dict(
        differential={"differential": phot / "differential.fits", "summary": phot / "differential_summary.txt",
                      "metrics": phot / "precision_metrics.fits"},
        plots={name: base / "plots" / f"{name}.png" for name in PLOTS},
        exports={"juliet": base / "exports" / "lc.dat", "aavso": base / "exports" / f"{TARGET}_aavso.txt"},
        transit={k: base / "transit" / f"transit_fit{ext}" for k, ext in
                 (("fit", ".yaml"), ("lc", "_lc.ecsv"), ("samples", "_samples.fits"))},
        transit_plots={k: base / "transit" / f"transit_fit{ext}" for k, ext in
                       (("plot", ".png"), ("corner", "_corner.png"))},
    )


def _target_off_chip(night, frames=slice(None)):
    """Flag the target off chip (flux NaN, as the photometry writes it) in ``frames`` of every aperture."""
    for path in night["phot_paths"]:
        with fits.open(path, mode="update") as hdul:
            data = hdul["PHOTOMETRY"].data
            flag, flux = data["flag"].copy(), data["flux"].copy()
            flag[frames, 0] |= FLAG_OFF_CHIP
            flux[frames, 0] = np.nan
            data["flag"], data["flux"] = flag, flux


def _run_stages(night, base):
    """Every analysis stage of one (night, target), as the rules call them."""
    out = _outputs(base)
    bias, dark = _masters(base)
    result = stages.differential_stage(night["phot_paths"], night["centroid_path"], bias, dark, night["instrument"],
                                       {}, out["differential"], night=NIGHT, target=TARGET)
    d = out["differential"]
    stages.plots_stage(d["differential"], night["centroid_path"], d["metrics"], out["plots"])
    stages.exports_stage(d["differential"], night["centroid_path"], out["exports"], "SYNTH", TARGET, "I")
    report = transit_fit_stage(d["differential"], night["centroid_path"], out["transit"],
                               {"window": [2460000.6, 2460000.8]})
    t = out["transit"]
    transit_plots_stage(t["fit"], t["lc"], t["samples"], d["differential"], out["transit_plots"])
    return result, report, out


@pytest.fixture(scope="module")
def off_chip(tmp_path_factory):
    """The target off chip in every frame (a wrong targets.yaml position, or a pointing error)."""
    base = tmp_path_factory.mktemp("offchip") / TARGET
    night = make_night(base, seed=5, n_frames=60, radii=(4, 5), outliers=False)
    _target_off_chip(night)
    result, report, out = _run_stages(night, base)
    return dict(night=night, base=base, result=result, report=report, out=out)


def _assert_png(path):
    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200 and img[..., :3].std() > 0.01  # a drawn figure


# ----------------------------------------------------------------------------- failed products

def test_off_chip_target_is_a_failed_analysis_with_the_reason(off_chip):
    r = off_chip["result"]
    assert r["status"] == "FAILED"
    assert "unusable in every frame of every aperture" in r["reason"]
    assert "off chip in 60/60 frames" in r["reason"]


def test_failed_fits_products_have_empty_tables_and_status(off_chip):
    d = off_chip["out"]["differential"]
    reason = off_chip["result"]["reason"]
    with fits.open(d["differential"]) as hdul:
        assert hdul[0].header["ANASTAT"] == "FAILED" and hdul[0].header["ANAWHY"] == reason
        assert hdul[0].header["TARGET"] == TARGET and hdul[0].header["NIGHT"] == NIGHT
        assert len(hdul) == 2 and len(hdul[1].data) == 0 and hdul[1].header["ANASTAT"] == "FAILED"
    m = read_precision_metrics(d["metrics"])
    assert len(m) == 0 and m.meta["ANASTAT"] == "FAILED" and m.meta["ANAWHY"] == reason
    assert m.colnames == [c[0] for c in METRIC_COLUMNS]      # same layout as a successful product
    assert f"analysis not possible: {reason}" in d["summary"].read_text()
    assert analysis_failure(d["differential"]) == reason == analysis_failure(d["metrics"])


def test_readers_of_a_failed_product_raise_analysis_not_possible(off_chip):
    with pytest.raises(AnalysisNotPossible, match=f"{NIGHT}/{TARGET}: analysis not possible: target"):
        read_differential(off_chip["out"]["differential"]["differential"])


def test_plots_say_analysis_not_possible(off_chip):
    for name, path in off_chip["out"]["plots"].items():
        _assert_png(path)


def test_exports_hold_no_fake_data(off_chip):
    reason = off_chip["result"]["reason"]
    for path in off_chip["out"]["exports"].values():
        lines = Path(path).read_text().splitlines()
        assert lines == [f"# {TARGET}: analysis not possible: {reason}"]
        # numpy (and hence juliet's loader) sees no observation in it
        with pytest.warns(UserWarning, match="no data"):
            assert np.loadtxt(path, ndmin=2).size == 0


def test_transit_fit_reports_the_failure(off_chip):
    fit_yaml, fit_png = off_chip["out"]["transit"]["fit"], off_chip["out"]["transit_plots"]["plot"]
    report = yaml.safe_load(fit_yaml.read_text())
    assert report["success"] is False and report["analysis_status"] == "FAILED"
    assert report["message"] == f"analysis not possible: {off_chip['result']['reason']}"
    _assert_png(fit_png)


def test_precision_summary_skips_failed_nights(off_chip, tmp_path):
    ok_dir = tmp_path / "ok"
    n = make_night(ok_dir, seed=6, n_frames=120, radii=(4, 5), outliers=False)
    s = run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=ok_dir / "photometry")
    failed = off_chip["out"]["differential"]["metrics"]
    _assert_png(stages.precision_summary_stage([failed, s["paths"]["metrics"]], tmp_path / "pvb.png"))
    # every night failed: still a figure (saying so), not a crashed rule
    _assert_png(plot_precision_vs_brightness([failed], tmp_path / "none.png"))


def test_night_summary_lists_the_failed_analysis(off_chip, tmp_path):
    ok_dir = tmp_path / "OK-2"
    n = make_night(ok_dir, seed=7, n_frames=120, radii=(4, 5), outliers=False)
    s = run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=ok_dir / "photometry")
    products = [str(off_chip["out"]["differential"]["differential"]), str(s["paths"]["differential"])]
    text = night_summary(NIGHT, products, tmp_path / "night_summary.txt")
    assert f"  {TARGET}: analysis FAILED: analysis not possible: {off_chip['result']['reason']}" in text
    assert f"  OK-2: analysis OK, best aperture {s['best_aperture']:g} px, ensemble of" in text


def test_batch_status_shows_a_warning(off_chip, tmp_path):
    results = tmp_path / "results"
    night_dir = results / NIGHT
    (night_dir / TARGET / "photometry").mkdir(parents=True)
    (night_dir / "logs").mkdir()
    (night_dir / "logs" / f"differential_{TARGET}.log").write_text("warning\n")
    (night_dir / TARGET / "photometry" / "differential.fits").write_bytes(
        off_chip["out"]["differential"]["differential"].read_bytes())
    good = results / "SYNTH_20240102"
    good.mkdir()
    rows = night_status([NIGHT, "SYNTH_20240102"], [], lambda n: [str(results / n)], started=time.time() - 60,
                        returncode=0, interrupted=False)
    assert rows[0]["status"] == "warning" and rows[0]["rule"] == "differential"
    assert rows[0]["note"] == f"{TARGET}: analysis not possible: {off_chip['result']['reason']}"
    assert rows[0]["log"].endswith(f"differential_{TARGET}.log")
    assert rows[1]["status"] == "success"


# ----------------------------------------------------------------------------- other data conditions

def test_too_few_frames_left_after_rejection(tmp_path):
    n = make_night(tmp_path, seed=8, n_frames=60, radii=(4,), outliers=False)
    _target_off_chip(n, slice(3, None))   # the target is usable in 3 frames only
    with pytest.raises(AnalysisNotPossible) as err:
        run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=tmp_path,
                         night=NIGHT, target=TARGET)
    reason = err.value.reason
    assert "only 3 of 60 frames left after rejection" in reason and f"at least {MIN_KEPT_FRAMES}" in reason
    assert "off chip in 57/60 frames" in reason
    assert str(err.value).startswith(f"{NIGHT}/{TARGET}: analysis not possible")


def test_fewer_frames_than_a_light_curve_needs(tmp_path):
    # 2 frames used to end in numpy's "All-NaN slice" ValueError inside the ensemble selection
    n = make_night(tmp_path, seed=9, n_frames=2, radii=(4,), outliers=False)
    with pytest.raises(AnalysisNotPossible, match="only 2 frame"):
        run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=tmp_path)


def test_empty_photometry_table(tmp_path):
    n = make_night(tmp_path, seed=10, n_frames=20, radii=(4,), outliers=False)
    with fits.open(n["phot_paths"][0]) as hdul:   # the same columns, no row
        table = hdul["PHOTOMETRY"]
        empty = fits.BinTableHDU(table.data[:0], header=table.header)
        fits.HDUList([fits.PrimaryHDU(), empty]).writeto(n["phot_paths"][0], overwrite=True)
    assert fits.getdata(n["phot_paths"][0], "PHOTOMETRY").size == 0
    base = tmp_path
    r, report, out = _run_stages(n, base)
    assert r["status"] == "FAILED" and "no frame was measured" in r["reason"]
    assert report["analysis_status"] == "FAILED"


def test_long_cadence_is_not_a_failure(tmp_path):
    """5-min cadence: no 10-min window holds 4 points, the best aperture comes from point-to-point scatter."""
    n = make_night(tmp_path, seed=12, n_frames=50, cadence_s=300, exptime=280, radii=(4, 6), outliers=False)
    s = run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=tmp_path)
    assert "point-to-point" in s["criterion"] and s["best_aperture"] in (4.0, 6.0)
    assert fits.getheader(s["paths"]["differential"])["ANASTAT"] == "OK"


def test_single_star_gives_a_target_only_light_curve_and_plots(tmp_path):
    """One star in targets.yaml: not a failure but a target-only light curve (COMPMODE); the plots
    used to crash on its scalar per-star columns (IndexError)."""
    n = make_night(tmp_path, seed=13, n_frames=80, comp_fluxes=(), variable_comp=None, radii=(4, 5),
                   outliers=False)
    r, report, out = _run_stages(n, tmp_path)
    assert r["status"] == "OK"
    d = read_differential(out["differential"]["differential"])
    assert d["_header"]["COMPMODE"] == "target-only" and d["flux_norm"].shape == (80, 1)
    for path in out["plots"].values():
        _assert_png(path)


# ----------------------------------------------------------------------------- software errors fail loudly

def _raises(exc):
    def fake(*args, **kwargs):
        raise exc
    return fake


@pytest.mark.parametrize("exc", [TypeError("unsupported operand type(s)"), ProductError("x.fits", "unreadable")])
def test_a_bug_or_broken_product_is_not_swallowed(tmp_path, monkeypatch, exc):
    n = make_night(tmp_path, seed=14, n_frames=20, radii=(4,), outliers=False)
    out = _outputs(tmp_path)["differential"]
    monkeypatch.setattr(stages, "run_differential", _raises(exc))
    bias, dark = _masters(tmp_path)
    with pytest.raises(type(exc)):
        stages.differential_stage(n["phot_paths"], n["centroid_path"], bias, dark, n["instrument"], {}, out)
    assert not any(Path(p).exists() for p in out.values())   # nothing published as if it were data


def test_a_bug_in_a_later_stage_is_not_swallowed(tmp_path, monkeypatch):
    """A successful analysis whose plotting hits a bug fails the plots job."""
    n = make_night(tmp_path, seed=15, n_frames=60, radii=(4,), outliers=False)
    s = run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=tmp_path / "photometry")
    monkeypatch.setattr(stages, "make_plots", _raises(TypeError("bug")))
    with pytest.raises(TypeError, match="bug"):
        stages.plots_stage(s["paths"]["differential"], n["centroid_path"], s["paths"]["metrics"],
                           {name: tmp_path / f"{name}.png" for name in PLOTS})


# ----------------------------------------------------------------------------- the workflow

@pytest.mark.slow
def test_workflow_publishes_a_night_whose_analysis_is_impossible(tmp_path, monkeypatch):
    """A 20-frame simulated night whose targets.yaml puts the target off the chip, through
    bandersnake-batch: the night is published (~40 s), with the analysis marked failed everywhere."""
    from _analysis_night import make_analysis_night

    from bandersnake.batch import run_batch
    from conftest import ROOT

    night = make_analysis_night(tmp_path, n_science=20)
    targets = yaml.safe_load((tmp_path / "targets.yaml").read_text())
    targets["targets"][night["target"]][0]["all_star_positions"][0] = [-400.0, -400.0]
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump(targets))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "workflow"))
    args = ["--cores", "2", "--config"] + [f"{k}={v}" for k, v in night["config"].items()]
    code, rows = run_batch(args, nights=[night["night"]], snakefile=ROOT / "Snakefile", echo=None,
                           targets=["{results}/{night}", "{work}/summary/precision_vs_brightness.png"])
    assert code == 0
    row = rows[0]
    assert row["status"] == "warning" and row["rule"] == "differential"
    assert "analysis not possible: target (star 0) unusable in every frame" in row["note"]
    base = tmp_path / "results" / night["night"]
    tgt = base / night["target"]
    assert fits.getheader(tgt / "photometry" / "differential.fits")["ANASTAT"] == "FAILED"
    assert (base / "calib" / "master_bias.fits").is_file()            # the rest of the night is published
    assert (tgt / "photometry" / "photometry_aper5.fits").is_file()
    for name in PLOTS:
        _assert_png(tgt / "plots" / f"{name}.png")
    assert (tgt / "exports" / "lc.dat").read_text().startswith(f"# {night['target']}: analysis not possible")
    assert yaml.safe_load((tgt / "transit" / "transit_fit.yaml").read_text())["analysis_status"] == "FAILED"
    assert f"{night['target']}: analysis FAILED: analysis not possible" in (base / "night_summary.txt").read_text()
    _assert_png(tmp_path / "work" / "summary" / "precision_vs_brightness.png")
