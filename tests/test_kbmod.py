"""KBMOD-ready output (bandersnake.astrometry.kbmod): layout, round trip, mask translation, time."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from bandersnake.astrometry import kbmod
from bandersnake.errors import FrameError
from bandersnake.astrometry.tycho import add_stars, tan_wcs

SHAPE = (120, 150)


def _calibrated(tmp_path, with_wcs=True, with_err=True):
    rng = np.random.default_rng(4)
    sci = rng.normal(500.0, 22.0, SHAPE).astype(np.float32)
    add_stars(sci, [40.3, 100.7], [60.2, 30.9], [2e4, 5e4], fwhm_px=3.0)
    err = np.sqrt(np.clip(sci, 1, None) + 100.0).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    mask[5, 6], mask[7, 8], mask[9, 10], mask[11, 12] = 1, 2, 4, 8
    mask[13, 14] = 1 | 2
    sci[20, 20] = np.nan
    prim = fits.Header({"OBJECT": "field", "FILTER": "z", "EXPTIME": 60.0, "DATE-OBS": "2025-06-02T04:10:00.000"})
    wcs = tan_wcs(150.0, 2.0, 0.67, SHAPE, rotation_deg=10)
    if with_wcs:
        prim.update(wcs.to_header())
    hdus = [fits.PrimaryHDU(header=prim), fits.ImageHDU(sci, name="SCI")]
    if with_err:
        hdus.append(fits.ImageHDU(err, name="ERR"))
    hdus.append(fits.ImageHDU(mask, name="MASK"))
    path = tmp_path / "cal.fits"
    fits.HDUList(hdus).writeto(path)
    return path, sci, err, mask, wcs


def test_round_trip_layout(tmp_path):
    path, sci, err, mask, wcs = _calibrated(tmp_path)
    out = tmp_path / "kb.fits"
    kbmod.kbmod_from_calibrated(path, out, subtract_background=False)
    with fits.open(out) as h:
        # KBMOD reads by position: 1 science, 2 mask, 3 variance; MJD (float) in HDU 0.
        assert [x.name for x in h] == ["PRIMARY", "SCI", "MASK", "VAR"]
        assert isinstance(h[0].header["MJD"], float)
        assert h[0].header["DATE-AVG"].startswith("2025-06-02T04:10:30")
        assert h[0].header["FILTER"] == "z"
    k = kbmod.read_kbmod_frame(out)
    np.testing.assert_array_equal(k["sci"], sci)  # exact: no background subtraction asked
    np.testing.assert_allclose(k["var"], err.astype(np.float64) ** 2, rtol=1e-6)  # float32 rounding
    # Mid-exposure = DATE-OBS + EXPTIME/2 = 04:10:30 UTC; 1 ms tolerance (float64 MJD ~ 1 us).
    assert abs(k["mjd"] - Time("2025-06-02T04:10:30", scale="utc").mjd) * 86400 < 1e-3
    yy, xx = np.mgrid[0:120:20, 0:150:30]
    np.testing.assert_allclose(k["wcs"].all_pix2world(xx, yy, 0), wcs.all_pix2world(xx, yy, 0), atol=1e-9)


def test_mask_translation(tmp_path):
    path, *_ = _calibrated(tmp_path)
    out = tmp_path / "kb.fits"
    kbmod.kbmod_from_calibrated(path, out)
    m = kbmod.read_kbmod_frame(out)["mask"]
    # bad->BAD 1, CR->CR 8, saturated->SAT 2, neighbour->SUSPECT 128, NaN->NO_DATA 256.
    assert (m[5, 6], m[7, 8], m[9, 10], m[11, 12], m[13, 14], m[20, 20]) == (1, 8, 2, 128, 9, 256)
    assert (m > 0).sum() == 6  # nothing else masked


def test_background_subtracted(tmp_path):
    path, *_ = _calibrated(tmp_path)
    out = tmp_path / "kb.fits"
    kbmod.kbmod_from_calibrated(path, out)
    k = kbmod.read_kbmod_frame(out)
    # Sky 500 e-, noise 22 e-: the median of the subtracted image is ~0 within 3 e-
    # (a mesh median over 64x64 boxes is precise to ~22/sqrt(4000)*1.25 ~ 0.5 e-).
    assert abs(np.nanmedian(k["sci"])) < 3.0
    assert abs(fits.getheader(out)["SKYSUB"] - 500.0) < 3.0


def test_explicit_wcs_and_time(tmp_path):
    path, *_ = _calibrated(tmp_path, with_wcs=False)
    with pytest.raises(FrameError, match="no celestial WCS"):
        kbmod.kbmod_from_calibrated(path, tmp_path / "kb.fits")
    w = tan_wcs(10.0, -30.0, 1.0, SHAPE)
    kbmod.kbmod_from_calibrated(path, tmp_path / "kb.fits", wcs=w, mjd_mid=60828.5)
    k = kbmod.read_kbmod_frame(tmp_path / "kb.fits")
    assert k["mjd"] == 60828.5
    np.testing.assert_allclose(k["wcs"].wcs.crval, [10.0, -30.0])


def test_missing_err_is_frame_error(tmp_path):
    path, *_ = _calibrated(tmp_path, with_err=False)
    with pytest.raises(FrameError, match="ERR"):
        kbmod.kbmod_from_calibrated(path, tmp_path / "kb.fits")


def test_mid_exposure_mjd_sources():
    assert kbmod.mid_exposure_mjd(fits.Header({"JD_UTC": 2460828.75})) == pytest.approx(60828.25, abs=1e-9)
    h = fits.Header({"DATE-OBS": "2025-06-02T00:00:00", "EXPTIME": 120.0})
    assert kbmod.mid_exposure_mjd(h) == pytest.approx(Time("2025-06-02T00:01:00").mjd, abs=1e-9)
    assert kbmod.mid_exposure_mjd(h, date_obs_is="mid") == pytest.approx(Time("2025-06-02").mjd, abs=1e-9)
    with pytest.raises(ValueError):
        kbmod.mid_exposure_mjd(fits.Header({"DATE-OBS": "2025-06-02T00:00:00"}))
