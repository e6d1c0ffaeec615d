"""Streaming kernel and drivers: streaming == traditional, flags, re-acquisition, bad input."""
import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).parent))

import logging
import shutil

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from _streaming_synth import expected_fluxes, synth_instrument, write_masters, write_raw_frames
from bandersnake.photometry import kernel as K
from bandersnake.fitsio import read_table
from bandersnake.photometry.drivers import CoreSettings, centroid_and_photometry_from_reduced, run_streaming
from bandersnake.calibration.reduce import load_calibration, reduce_frames
from bandersnake.photometry.targets import TargetEntry

SHAPE = (240, 260)
POS = np.array([[70.3, 60.7], [150.6, 120.2], [60.1, 180.9], [200.5, 50.4], [252.0, 200.0]])
FLUX = [4e4, 2e5, 3e4, 8e4, 5e4]      # star 4 sits on the right edge (partly off the chip)
FLUX_WRITTEN = FLUX[:3] + [4e6] + FLUX[4:]   # star 3 saturates (peak ~0.04 F / gain > 60000 ADU)
SETTINGS = {"centroid_settings": {"boxsize": 12, "reacquire_radius": 35},
            "photometry_settings": {"aper_min": 2, "aper_max": 8, "SKYRAD_inner": 12, "SKYRAD_outer": 18}}


def read(path):
    return read_table(path, mask_invalid=False)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """8 frames: drift, a 12 px jump at frame 5, a saturated star, a bad pixel, a corrupt frame."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("night")
    masters, m = write_masters(root / "calib", SHAPE, rng, bad=[(71, 61), (152, 118)])
    offs = [(0.15 * k, -0.1 * k) for k in range(8)]
    offs[5:] = [(x + 12.0, y - 4.0) for x, y in offs[5:]]
    raw, truth = write_raw_frames(root / "raw", m, POS, FLUX_WRITTEN, offs, rng)
    # Frame 3: corrupt (truncated mid-data); frame 6: a NaN block near star 2 (float32 frame).
    data = open(raw[3], "rb").read()
    open(raw[3], "wb").write(data[: len(data) // 2])
    with fits.open(raw[6]) as h:
        img = h[0].data.astype(np.float32)
        hdr = h[0].header.copy()
    x2, y2 = truth[6, 2]
    img[int(y2) - 1:int(y2) + 2, int(x2) - 1:int(x2) + 2] = np.nan     # on star 2's core
    for k in ("BZERO", "BSCALE"):
        hdr.remove(k, ignore_missing=True)
    fits.writeto(raw[6], img, hdr, overwrite=True)
    tgt = TargetEntry("SYNTH", POS + rng.normal(0, 0.7, POS.shape), tracking_star=1)
    inst = synth_instrument(SHAPE)
    out_s = root / "stream"
    run_streaming(raw, masters, inst, SETTINGS, tgt, out_s, threads=2)
    report = reduce_frames(raw, masters, inst, root / "reduced", threads=2)
    out_t = root / "trad"
    centroid_and_photometry_from_reduced(raw, root / "reduced", inst, SETTINGS, tgt, out_t, threads=1)
    return dict(root=root, raw=raw, truth=truth, masters=masters, m=m, tgt=tgt, inst=inst,
                out_s=out_s, out_t=out_t, report=report)


def test_streaming_equals_traditional(night):
    # Both paths feed the same float32-rounded calibrated values to the same numba functions,
    # so they agree to rounding; the contract asks 1e-9 relative.
    for name in ["centroiding/centroids.fits"] + [f"photometry/photometry_aper{n}.fits" for n in range(2, 9)]:
        a, b = read(night["out_s"] / name), read(night["out_t"] / name)
        assert a.colnames == b.colnames
        assert len(a) == len(night["raw"])
        for col in a.colnames:
            if a[col].dtype.kind in "fi":
                np.testing.assert_allclose(np.asarray(a[col], float), np.asarray(b[col], float),
                                           rtol=1e-9, atol=0, equal_nan=True, err_msg=f"{name}:{col}")
            else:
                assert list(a[col]) == list(b[col])


def test_columns_units_and_headers(night):
    with fits.open(night["out_s"] / "photometry" / "photometry_aper5.fits") as h:
        hdr = h["PHOTOMETRY"].header
        names = [hdr[f"TTYPE{i}"] for i in range(1, hdr["TFIELDS"] + 1)]
        assert names == ["BJD_TDB", "JD_UTC", "File", "airmass", "exptime", "xc", "yc", "flux", "flux_err",
                         "sky", "sky_err", "n_bad_pixels", "flag"]
        units = {hdr[f"TTYPE{i}"]: hdr.get(f"TUNIT{i}") for i in range(1, hdr["TFIELDS"] + 1)}
        assert units["flux"] == "electron" and units["xc"] == "pix" and units["BJD_TDB"] == "d"
        assert hdr["APERRAD"] == 5.0 and hdr["SKYRIN"] == 12 and hdr["SKYROUT"] == 18
        assert hdr["PIXCONV"].startswith("0-based")
    p = read(night["out_s"] / "photometry" / "photometry_aper5.fits")
    assert p["flux"].unit == u.electron and p["sky"].unit == u.electron / u.pix and p["xc"].unit == u.pix
    c = read(night["out_s"] / "centroiding" / "centroids.fits")
    assert c["xc"].shape == (8, 5) and c["peak_value"].unit == u.electron
    for col in ("x_width", "y_width", "peak_x", "peak_y", "peak_value", "n_pixels_above", "sig3_pixels",
                "sig5_pixels", "sig10_pixels", "flag", "airmass", "exptime"):
        assert col in c.colnames


def test_centroids_follow_drift_and_jump(night):
    c = read(night["out_s"] / "centroiding" / "centroids.fits")
    ok = [0, 1, 2, 4, 5, 7]                         # 3 corrupt, 6 has NaNs near star 2
    truth = night["truth"]
    for s in (0, 1, 2):                             # bright, unsaturated, on the chip
        ex = np.asarray(c["xc"][ok, s]) - truth[ok, s, 0]
        ey = np.asarray(c["yc"][ok, s]) - truth[ok, s, 1]
        # SNR 130-500: windowed-centroid noise <= 0.02 px per axis; 6 frames give a noisy RMS,
        # hence 0.035, and 0.08 px (4 sigma radial) for the worst frame.
        assert np.sqrt(np.mean(ex ** 2 + ey ** 2) / 2) < 0.035, (s, ex, ey)
        assert np.hypot(ex, ey).max() < 0.08, (s, ex, ey)
    assert c["flag"][5, 0] & K.FLAG_REACQUIRED     # 12.6 px jump > boxsize/2 flagged
    assert not (c["flag"][[0, 1, 2, 4, 7], 0] & K.FLAG_REACQUIRED).any()
    assert (c["flag"][:, 3] & K.FLAG_SATURATED)[ok].all()
    assert (c["flag"][[5, 7], 4] & K.FLAG_OFF_CHIP).all()     # x > 259.5 after the jump
    p = read(night["out_s"] / "photometry" / "photometry_aper8.fits")
    assert (p["flag"][ok, 4] & K.FLAG_OFF_CHIP).all()        # r = 8 crosses the right edge


def test_corrupt_frame_row(night, caplog):
    c = read(night["out_s"] / "centroiding" / "centroids.fits")
    p = read(night["out_s"] / "photometry" / "photometry_aper4.fits")
    assert (c["flag"][3] == K.FLAG_CORRUPT).all() and (p["flag"][3] == K.FLAG_CORRUPT).all()
    assert np.isnan(c["xc"][3]).all() and np.isnan(p["flux"][3]).all()
    assert c["File"][3] == night["raw"][3]
    assert np.isfinite(p["flux"][[0, 1, 2, 4, 5, 7], :4]).all()
    assert [r["reduced"] is None for r in night["report"]] == [k == 3 for k in range(8)]
    assert "unreadable" in night["report"][3]["reason"]


def test_nan_and_bad_pixel_flags(night):
    p = read(night["out_s"] / "photometry" / "photometry_aper4.fits")
    assert p["flag"][6, 2] & K.FLAG_NAN and np.isnan(p["flux"][6, 2])
    assert not (p["flag"][[0, 1, 2, 4, 5, 7], 2] & K.FLAG_NAN).any()
    assert c_flag(night)[6, 2] & K.FLAG_NAN
    # Bad pixel (71, 61) is ~0.3 px from star 0's centre in frame 0: counted and flagged.
    assert p["n_bad_pixels"][0, 0] >= 1 and p["flag"][0, 0] & K.FLAG_BAD_PIXEL


def c_flag(night):
    return np.asarray(read(night["out_s"] / "centroiding" / "centroids.fits")["flag"])


def test_fluxes_match_truth(night):
    # Expected flux from the noise-free rendering through photutils (expected_fluxes), at the
    # true positions. Tolerance 4 sigma of the reported flux_err: ~100 Gaussian comparisons.
    # Star 0 is skipped before the jump: a bad pixel sits on its core (interpolated value).
    radii = [3, 5, 8]
    tables = {n: read(night["out_s"] / "photometry" / f"photometry_aper{n}.fits") for n in radii}
    for k in (0, 1, 2, 4, 5, 7):
        for s in (0, 1, 2):
            if s == 0 and k < 5:
                continue
            expect = expected_fluxes(SHAPE, night["truth"][k], FLUX_WRITTEN, s, radii, 12, 18)
            for n, e in zip(radii, expect):
                z = (tables[n]["flux"][k, s] - e) / tables[n]["flux_err"][k, s]
                assert abs(z) < 4, (k, s, n, z)


def test_save_reduced_frames_same_tables(night, tmp_path):
    out = tmp_path / "with_save"
    run_streaming(night["raw"], night["masters"], night["inst"], SETTINGS, night["tgt"], out, threads=1,
                  save_reduced_dir=tmp_path / "red")
    a = read(out / "photometry" / "photometry_aper6.fits")
    b = read(night["out_s"] / "photometry" / "photometry_aper6.fits")
    np.testing.assert_array_equal(np.asarray(a["flux"]), np.asarray(b["flux"]))
    with fits.open(tmp_path / "red" / "synth_0000.fits") as h, \
            fits.open(night["root"] / "reduced" / "synth_0000.fits") as g:
        np.testing.assert_array_equal(h["SCI"].data, g["SCI"].data)
        assert h["SCI"].data.dtype == np.dtype(">f4") and h["MASK"].data.dtype == np.uint8


def test_mask_centroid_pixels_changes_flux(tmp_path):
    # A bright neighbour 14 px from star 0 lies in its 10-20 px annulus. Sigma clipping removes
    # its core but not its wings; leaving its centroid pixels out of the sky lowers the sky and
    # raises star 0's flux towards the truth.
    rng = np.random.default_rng(3)
    shape = (160, 160)
    masters, m = write_masters(tmp_path / "calib", shape, rng)
    pos = np.array([[60.4, 70.2], [74.1, 70.6], [110.0, 120.0]])
    flux = [5e4, 5e5, 1e5]
    raw, _ = write_raw_frames(tmp_path / "raw", m, pos, flux, [(0, 0)] * 3, rng, fwhm=5.0)
    tgt = TargetEntry("X", pos, tracking_star=2)
    res = {}
    for flag in (False, True):
        s = {"centroid_settings": {"boxsize": 8, "mask_centroid_pixels": flag},
             "photometry_settings": {"aper_min": 6, "aper_max": 6, "SKYRAD_inner": 10, "SKYRAD_outer": 20}}
        run_streaming(raw, masters, synth_instrument(shape), s, tgt, tmp_path / f"o{flag}", threads=1)
        res[flag] = read(tmp_path / f"o{flag}" / "photometry" / "photometry_aper6.fits")
    # After flat-fielding the true background is exactly 300 e-/px: the masked sky is closer.
    s0, s1 = np.asarray(res[False]["sky"][:, 0]), np.asarray(res[True]["sky"][:, 0])
    assert np.all(np.abs(s1 - 300.0) < np.abs(s0 - 300.0)) and np.all(s0 - s1 > 1.0)
    # And the flux changes by exactly area * delta sky (area = pi r^2 inside the chip).
    f0, f1 = np.asarray(res[False]["flux"][:, 0]), np.asarray(res[True]["flux"][:, 0])
    np.testing.assert_allclose(f1 - f0, np.pi * 36 * (s0 - s1), rtol=1e-9)
    with fits.open(tmp_path / "oTrue" / "photometry" / "photometry_aper6.fits") as h:
        assert h[1].header["MASKCPIX"] is True


def test_large_jump_and_lost_star(tmp_path, caplog):
    # Jump of 25 px (beyond the 12 px stamp): recovered by the widened search (flag 64).
    # Frame 3 is blank sky: tracking star lost (flag 1), previous offset kept, night goes on.
    rng = np.random.default_rng(8)
    shape = (200, 200)
    masters, m = write_masters(tmp_path / "calib", shape, rng)
    pos = np.array([[60.0, 60.0], [120.0, 100.0], [80.0, 150.0]])
    offs = [(0, 0), (0.2, 0.1), (25.0, 3.0), (25.0, 3.0), (25.3, 3.1), (25.2, 3.2)]
    raw, truth = write_raw_frames(tmp_path / "raw", m, pos, [5e4, 2e5, 5e4], offs, rng)
    blank, _ = write_raw_frames(tmp_path / "blank", m, pos, [0, 0, 0], [(0, 0)], rng)
    shutil.copy(blank[0], raw[3])
    s = {"centroid_settings": {"boxsize": 12, "reacquire_radius": 40},
         "photometry_settings": {"aper_min": 3, "aper_max": 4, "SKYRAD_inner": 10, "SKYRAD_outer": 15}}
    with caplog.at_level(logging.WARNING, logger="bandersnake"):
        run_streaming(raw, masters, synth_instrument(shape), s, TargetEntry("X", pos, 1), tmp_path / "o", threads=2)
    c = read(tmp_path / "o" / "centroiding" / "centroids.fits")
    assert c["flag"][2, 1] & K.FLAG_REACQUIRED and c["flag"][3, 1] & K.FLAG_LOST
    good = [0, 1, 2, 4, 5]
    err = np.hypot(c["xc"][good] - truth[good, :, 0], c["yc"][good] - truth[good, :, 1])
    assert err.max() < 0.1
    assert "tracking star lost" in caplog.text and "synth_0003" in caplog.text


def test_settings_from_rule_params():
    st = CoreSettings.from_night({"centroid": {"boxsize": 9, "star0_positions": {}},
                                  "photometry": {"aper_min": 3, "aper_max": 5, "PHPADU": 1.0}})
    assert st.boxsize == 9 and list(st.radii) == [3.0, 4.0, 5.0]
    assert st.ipar()[K.IP_BOXSIZE] == 9 and st.fpar()[K.FP_JUMP] == 4.5


def test_calibrate_full_matches_numpy(night):
    from bandersnake.calibration.reduce import calibrate_frame, read_raw

    cal = load_calibration(night["masters"], night["inst"])
    fr = read_raw(night["raw"][0], night["inst"], cal.shape)
    sci, err, msk = calibrate_frame(fr, cal)
    m = night["m"]
    c = (fr.data.astype(float) - m["bias"]) * 2.0
    ref = (c - m["dark"] * fr.exptime * 2.0) / m["flat"]
    good = m["bpm"] == 0
    # float32 storage: relative rounding 6e-8 of values up to ~1e5 e-.
    np.testing.assert_allclose(sci[good], ref[good], rtol=2e-7, atol=1e-3)
    np.testing.assert_allclose(err[good], (np.sqrt(np.maximum(c, 0) + 64.0) / m["flat"])[good], rtol=2e-7)
    y, x = 61, 71
    neigh = [ref[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0)]
    assert sci[y, x] == pytest.approx(np.mean(neigh), rel=1e-6)
    assert msk[y, x] & 1 and msk[y, x + 1] & 8 and not msk[0, 0]


# ------------------------------------------------------------------------------------------
# Simulated night (bandersnake.sim.night, small preset) against its truth.

@pytest.fixture(scope="module")
def simnight(tmp_path_factory):
    simulate = pytest.importorskip("bandersnake.sim.night")
    from bandersnake.config import load_instrument
    from bandersnake.ingest.inventory import raw_files  # noqa: F401  (the workflow's own discovery)
    from bandersnake.photometry.targets import resolve_target
    from pathlib import Path as _P

    root = tmp_path_factory.mktemp("sim")
    inst = load_instrument(str(_P(__file__).resolve().parents[1] / "config" / "instruments"), "SPIRIT2")
    truth = simulate.simulate_night(root / "raw", root / "truth", simulate.small_config(), inst)
    inst = dict(inst, shape=truth["night"]["shape"])
    masters = {}
    with fits.open(root / "truth" / "master_truth.fits") as h:       # true masters: isolate this stage
        for name, ext in (("bias", "BIAS"), ("dark", "DARK"), ("flat", "FLAT"), ("bpm", "BPM")):
            masters[name] = str(root / f"{name}.fits")
            fits.writeto(masters[name], h[ext].data, h[ext].header if name == "bias" else None)
    frames = Table.read(root / "truth" / "frames.ecsv")
    sci = frames[frames["type"] == "science"]
    paths = [str(_P(truth["night"]["raw_dir"]) / f) for f in sci["file"]]
    tgt = resolve_target(root / "truth" / "targets.yaml", "SIM-1b", "20251215")
    out = root / "out"
    run_streaming(paths, masters, inst, {}, tgt, out, threads=2)
    stars = Table.read(root / "truth" / "stars.ecsv")
    return dict(truth=truth, stars=stars[stars["listed"]], out=out, sci=sci, root=root,
                cr=Table.read(root / "truth" / "cosmic_rays.ecsv"))


def test_simulated_night_centroids(simnight):
    c = read(simnight["out"] / "centroiding" / "centroids.fits")
    st = simnight["stars"]
    jump = simnight["truth"]["pointing"]["jump_frame"]
    n = len(c)
    tx = np.zeros((n, 4))
    ty = np.zeros((n, 4))
    for r in st:
        tx[r["frame"], r["star"]] = r["x"]
        ty[r["frame"], r["star"]] = r["y"]
    ex, ey = np.asarray(c["xc"]) - tx, np.asarray(c["yc"]) - ty
    assert c["flag"][jump, 1] & K.FLAG_REACQUIRED
    for part in (slice(0, jump), slice(jump, n)):
        # All four listed stars have SNR > 250 in an 8 px aperture: contract <= 0.03 px RMS.
        rms_x = np.sqrt(np.mean(ex[part] ** 2, axis=0))
        rms_y = np.sqrt(np.mean(ey[part] ** 2, axis=0))
        print("centroid RMS x", rms_x.round(4), "y", rms_y.round(4))
        assert (rms_x <= 0.03).all() and (rms_y <= 0.03).all(), (rms_x, rms_y)


def test_simulated_night_fluxes(simnight):
    from photutils.aperture import CircularAnnulus, CircularAperture, aperture_photometry

    from _streaming_synth import add_moffat

    st = simnight["stars"]
    cr = simnight["cr"]
    beta = simnight["truth"]["psf"]["beta"]
    half = simnight["truth"]["psf"]["stamp_half_px"]
    tables = {n: read(simnight["out"] / "photometry" / f"photometry_aper{n}.fits") for n in (3, 5, 8, 12)}
    z_all = []
    for r in st:
        k, s = int(r["frame"]), int(r["star"])
        # Enclosed fraction computed numerically: the simulator's pixel-integrated Moffat with all
        # its flux inside a +-half px stamp, rendered on a fine sub-pixel grid, through photutils.
        img = np.zeros((2 * half + 41, 2 * half + 41))
        cx = half + 20 + (r["x"] - np.floor(r["x"]))
        cy = half + 20 + (r["y"] - np.floor(r["y"]))
        add_moffat(img, cx, cy, 1.0, fwhm=r["fwhm_px"], beta=beta, oversample=7, half=half)
        img /= img.sum()
        level = CircularAnnulus((cx, cy), 15, 25).to_mask(method="center").get_values(img).mean()
        hits = cr[(cr["file"] == r["file"]) & (np.hypot(cr["x"] - r["x"], cr["y"] - r["y"]) < 26)]
        for n, t in tables.items():
            if t["flag"][k, s] & (K.FLAG_BAD_PIXEL | K.FLAG_SATURATED) or len(hits):
                continue              # interpolated bad pixel or a cosmic ray near the star
            ap = CircularAperture((cx, cy), n)
            frac = aperture_photometry(img, ap, method="exact")["aperture_sum"][0] - ap.area * level
            z_all.append((t["flux"][k, s] - r["expected_e"] * frac) / t["flux_err"][k, s])
    z = np.array(z_all)
    print(f"flux z-scores: n={z.size} mean {z.mean():+.2f} std {z.std():.2f} max|z| {np.abs(z).max():.2f}")
    assert z.size > 300
    # Within 3 sigma of truth x enclosed fraction: 0.3 % of Gaussian z exceed 3, so allow 1 %,
    # and nothing beyond 5; the reported errors must be realistic (std of z near 1).
    assert np.mean(np.abs(z) > 3) < 0.01 and np.abs(z).max() < 5
    assert 0.6 < z.std() < 1.4 and abs(z.mean()) < 0.5


def test_photometry_tables_bytes_equal_astropy(night, tmp_path):
    # All apertures but the first are written by patching the first file's bytes; they must
    # be the very bytes astropy writes for them.
    from bandersnake.photometry.drivers import _FrameRunner, write_photometry_table, write_photometry_tables

    st = CoreSettings.from_night(SETTINGS)
    cal = load_calibration(night["masters"], night["inst"])
    runner = _FrameRunner(night["tgt"], st, cal, 3)
    rng = np.random.default_rng(0)
    res = runner.res
    res.phot[:] = rng.normal(size=res.phot.shape)
    res.phot[1, 2] = np.nan
    res.pflag[:] = rng.integers(0, 128, res.pflag.shape)
    res.files = ["/a/b/f0.fits", "/a/b/frame_00001.fits", "/c/x.fits"]
    res.bjd = res.jd = np.array([2460000.1, 2460000.2, np.nan])
    meta = [("TARGET", "SYNTH", "target"), ("SKYRIN", 12.0, "[px]")]
    fast = write_photometry_tables(tmp_path / "fast", res, st, meta)
    for k, r in enumerate(st.radii):
        slow = write_photometry_table(tmp_path / "slow" / f"p{k}.fits", res, k, r, st, meta)
        assert fast[k].read_bytes() == slow.read_bytes(), r


def test_two_threads_same_tables_as_one(night, tmp_path):
    # Frames measured in parallel threads: identical tables (each frame is independent).
    run_streaming(night["raw"], night["masters"], night["inst"], SETTINGS, night["tgt"], tmp_path / "one",
                  threads=1)
    for name in ["centroiding/centroids.fits", "photometry/photometry_aper5.fits"]:
        a, b = read(tmp_path / "one" / name), read(night["out_s"] / name)
        for col in a.colnames:
            if a[col].dtype.kind == "f":
                np.testing.assert_array_equal(np.asarray(a[col]), np.asarray(b[col]), err_msg=col)


def test_windows_equal_whole_frame_photometry(tmp_path):
    """The kernel calibrates only the pixels its windows need (stamp square, then the annulus disc
    around the centroid): its tables must equal the whole-image wrappers run on the whole
    calibrated frame at the same centroids. Bad pixels sit in the annulus beyond the stamp
    square, and one star is cut by the right edge, so a pixel left out of a window, or filled
    without its bad-pixel interpolation or off-image mark, changes a sky or a sum."""
    from bandersnake.photometry.aperture import annulus_stats, aperture_sum
    from bandersnake.calibration.reduce import calibrate_frame, read_raw

    rng = np.random.default_rng(5)
    # Bad pixels 13-17 px from stars 0, 1 and 4 (annulus 12..18, stamp half-width 12), and one
    # in star 0's core.
    bad = [(71, 61)] + [(int(x + d * c), int(y + d * s)) for x, y in POS[[0, 1, 4]]
                        for d in (13.5, 15.5, 17.2) for c, s in ((1, 0), (0, 1), (-1, 0), (0.6, -0.8))
                        if 0 <= x + d * c < SHAPE[1] and 0 <= y + d * s < SHAPE[0]]
    masters, m = write_masters(tmp_path / "calib", SHAPE, rng, bad=bad)
    offs = [(0.0, 0.0), (0.4, -0.3), (1.2, 0.9)]
    raw, _ = write_raw_frames(tmp_path / "raw", m, POS, FLUX, offs, rng)
    inst = synth_instrument(SHAPE)
    tgt = TargetEntry("SYNTH", POS, tracking_star=1)
    run_streaming(raw, masters, inst, SETTINGS, tgt, tmp_path / "out", threads=1)
    st = CoreSettings.from_night(SETTINGS)
    cal = load_calibration(masters, inst)
    n_checked = 0
    for r in range(2, 9):
        p = read(tmp_path / "out" / "photometry" / f"photometry_aper{r}.fits")
        for k, path in enumerate(raw):
            sci, err, msk = calibrate_frame(read_raw(path, inst, cal.shape), cal)
            for s in range(len(POS)):
                x, y = float(p["xc"][k, s]), float(p["yc"][k, s])
                ap = aperture_sum(sci, x, y, [float(r)], error=err, mask=msk)
                sky, _, sky_sd, n_sky = annulus_stats(sci, x, y, 12.0, 18.0, st.sky_clip_sigma,
                                                      st.sky_clip_iters, mask=msk)
                # Same numba code on the same float32-rounded values, summed in the same order:
                # only the window origin differs, so 1e-12 is rounding headroom, far below 1e-9.
                assert p["sky"][k, s] == pytest.approx(sky, rel=1e-12), (r, k, s)
                assert p["sky_err"][k, s] == pytest.approx(sky_sd, rel=1e-12), (r, k, s)
                assert p["n_bad_pixels"][k, s] == ap["n_bad"][0], (r, k, s)
                flux = ap["sum"][0] - sky * ap["area"][0]
                flux_err = np.sqrt(ap["var"][0] + ap["area"][0] ** 2 * sky_sd ** 2 / n_sky)
                assert p["flux"][k, s] == pytest.approx(flux, rel=1e-12), (r, k, s)
                assert p["flux_err"][k, s] == pytest.approx(flux_err, rel=1e-12), (r, k, s)
                n_checked += 1
    assert n_checked == 7 * 3 * len(POS)
    p8 = read(tmp_path / "out" / "photometry" / "photometry_aper8.fits")
    assert (p8["n_bad_pixels"] > 0).any()     # the bad pixels do reach the apertures somewhere
