"""juliet lc.dat and AAVSO Extended Format exports."""

import numpy as np
import pytest

from _analysis_synth import make_night
from bandersnake.analysis.differential import read_differential, run_differential
from bandersnake.analysis.exports import scale_to_unit, write_exports, write_juliet
from bandersnake.analysis.io import MissingProductError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    n = make_night(root, seed=3, radii=(4, 5))
    s = run_differential(n["phot_paths"], n["centroid_path"], n["instrument"], out_dir=root / "photometry")
    out = write_exports(s["paths"]["differential"], n["centroid_path"], root / "exports", "SPIRIT2", "TOI-9 b",
                        filter_name="I")
    return n, s, out


def test_scale_to_unit():
    np.testing.assert_allclose(scale_to_unit([2.0, 4.0, 3.0]), [-1.0, 1.0, 0.0])
    assert np.all(scale_to_unit([5.0, 5.0]) == 0)


def test_juliet_file(exported):
    n, s, out = exported
    rows = [ln.split() for ln in out["juliet"].read_text().splitlines()]
    d = read_differential(s["paths"]["differential"])
    ok = d["frame_ok"]
    assert len(rows) == ok.sum() == out["n_frames"]
    assert all(len(r) == 10 and r[3] == "SPIRIT2" for r in rows)
    data = np.array([[float(x) for i, x in enumerate(r) if i != 3] for r in rows])
    # times, fluxes and errors are the kept frames of the best aperture (printed to 1e-8 d, 9 digits)
    np.testing.assert_allclose(data[:, 0], d["BJD_TDB"][ok], atol=1e-8)
    np.testing.assert_allclose(data[:, 1], d["diff_flux"][ok], rtol=1e-8)
    np.testing.assert_allclose(data[:, 2], d["diff_flux_err"][ok], rtol=1e-8)
    regs = data[:, 3:]
    assert np.all(regs.min(axis=0) == -1) and np.all(regs.max(axis=0) == 1)
    # the last regressor is the airmass, scaled: it must follow the frames' airmass monotonically
    am = d["airmass"][ok]
    assert np.corrcoef(regs[:, 5], am)[0, 1] > 0.999999


def test_aavso_file(exported):
    n, s, out = exported
    lines = out["aavso"].read_text().splitlines()
    params = [ln for ln in lines if ln.startswith("#") and "=" in ln]
    keys = {p.split("=")[0].upper() for p in params}
    assert {"#TYPE", "#OBSCODE", "#SOFTWARE", "#DELIM", "#DATE", "#OBSTYPE"} <= keys
    assert "#DATE=JD" in lines and "#TYPE=EXTENDED" in lines
    obs = [ln.split(",") for ln in lines if not ln.startswith("#")]
    assert all(len(o) == 15 for o in obs)
    d = read_differential(s["paths"]["differential"])
    ok = d["frame_ok"]
    jd = np.array([float(o[1]) for o in obs])
    mag = np.array([float(o[2]) for o in obs])
    # AAVSO takes JD (UTC), not BJD: dates are the JD_UTC column to the 6 printed decimals
    np.testing.assert_allclose(jd, d["JD_UTC"][ok], atol=1e-6)
    np.testing.assert_allclose(mag, -2.5 * np.log10(d["diff_flux"][ok]), atol=1e-4)
    assert {o[6] for o in obs} == {"DIF"} and {o[7] for o in obs} == {"ENSEMBLE"}
    assert all(len(o[2]) <= 8 and len(o[3]) <= 6 for o in obs)   # field limits of the format


def test_missing_differential_names_the_rule(tmp_path):
    path = tmp_path / "photometry" / "differential.fits"
    with pytest.raises(MissingProductError, match="run the differential rule first"):
        write_juliet(path, tmp_path / "centroids.fits", tmp_path / "lc.dat", "X")
