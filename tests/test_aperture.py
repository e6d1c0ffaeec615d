"""Exact circle-pixel overlap and annulus statistics against photutils (the reference library)."""

import math

import numpy as np
import pytest
from astropy.stats import SigmaClip
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

from bandersnake.photometry.aperture import (MASK_BAD, aperture_sum, annulus_stats, circle_rect_overlap, pixel_weight)

# Both sides compute the overlap analytically in float64; differences are rounding (~1e-15).
# The contract asks 1e-9 relative.
RTOL = 1e-9


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    return rng.normal(100.0, 10.0, (70, 90)) + rng.uniform(0, 50, (70, 90))


def test_overlap_tiles_the_circle():
    # The weights of all pixels add up to pi r^2 for any centre and radius (incl. r < 1).
    rng = np.random.default_rng(0)
    for _ in range(50):
        r = rng.choice([rng.uniform(0.05, 1.0), rng.uniform(1.0, 9.0)])
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        n = int(r) + 2
        total = sum(pixel_weight(i - cx, j - cy, r) for i in range(-n, n + 1) for j in range(-n, n + 1))
        assert total == pytest.approx(math.pi * r * r, rel=1e-12)


def test_overlap_limits():
    assert pixel_weight(0.0, 0.0, 5.0) == 1.0
    assert pixel_weight(10.0, 0.0, 5.0) == 0.0
    assert pixel_weight(0.0, 0.0, 0.5) == pytest.approx(math.pi / 4, rel=1e-14)
    # Quadrant of a unit circle in a 1x1 square at the origin corner: pi/4.
    assert circle_rect_overlap(0.0, 1.0, 0.0, 1.0, 1.0) == pytest.approx(math.pi / 4, rel=1e-14)
    assert circle_rect_overlap(-2.0, 2.0, -2.0, 2.0, 1.5) == pytest.approx(math.pi * 2.25, rel=1e-14)


def test_asin_within_two_ulp_of_libm():
    # The overlap's angles use a vectorisable asin (fdlibm's method); libm's is the reference.
    # 2 ulp of an angle <= pi/2 moves a pixel weight by < 1e-14 px**2, far inside RTOL.
    import numba
    from bandersnake.photometry.aperture import _asin, _p_at

    @numba.njit
    def asin_all(u):
        out = np.empty_like(u)
        for k in range(u.shape[0]):
            out[k] = _asin(u[k])
        return out

    rng = np.random.default_rng(4)
    u = np.concatenate([rng.uniform(-1, 1, 200_000), rng.uniform(-1e-6, 1e-6, 1000),
                        1 - rng.uniform(0, 1e-6, 1000), [0.0, 1.0, -1.0, 0.5, -0.5, 0.975, 1e-300,
                                                         np.nextafter(0.5, 0.0), np.nextafter(1.0, 0.0)]])
    ref = np.arcsin(u)
    assert np.all(np.abs(asin_all(u) - ref) <= 2 * np.spacing(np.abs(ref)))
    assert asin_all(np.array([1.0]))[0] == math.pi / 2
    # The vectorised table of the integral _p(x, r) = x sqrt(r**2 - x**2) + r**2 asin(x / r).
    x = rng.uniform(-7.5, 7.5, 1000)
    table = np.empty_like(x)
    _p_at(x, 7.0, table)
    xc = np.clip(x, -7.0, 7.0)
    expected = xc * np.sqrt(49.0 - xc * xc) + 49.0 * np.arcsin(xc / 7.0)
    np.testing.assert_allclose(table, expected, rtol=1e-14, atol=1e-13)


def test_aperture_sums_match_photutils_exact(image):
    rng = np.random.default_rng(2)
    ny, nx = image.shape
    n_edge = 0
    for _ in range(300):
        # Random centres including ones whose apertures cross or leave the image edges.
        x, y = rng.uniform(-3, nx + 2), rng.uniform(-3, ny + 2)
        radii = [rng.uniform(0.05, 1.0), rng.uniform(1.0, 4.0), rng.uniform(4.0, 14.0)]
        ours = aperture_sum(image, x, y, radii)
        for r, s, off in zip(radii, ours["sum"], ours["n_off"]):
            ref = aperture_photometry(image, CircularAperture((x, y), r), method="exact")["aperture_sum"][0]
            n_edge += off > 0
            if not np.isfinite(ref):       # photutils: no overlap with the image at all
                assert s == 0 and off > 0
            else:
                assert s == pytest.approx(ref, rel=RTOL), (x, y, r)
    assert n_edge > 20        # the edge case was exercised


def test_area_error_and_counts():
    img = np.ones((40, 40))
    err = np.full((40, 40), 2.0)
    mask = np.zeros((40, 40), np.uint8)
    mask[20, 20] = MASK_BAD
    out = aperture_sum(img, 20.3, 19.8, [3.0, 0.4], error=err, mask=mask)
    np.testing.assert_allclose(out["area"], np.pi * np.array([9.0, 0.16]), rtol=1e-12)
    np.testing.assert_allclose(out["sum"], out["area"], rtol=1e-12)
    assert list(out["n_bad"]) == [1, 1]
    # var = sum(w^2) * 4 <= area * 4, equality only for whole pixels.
    assert out["var"][0] < 4 * out["area"][0] and out["var"][0] > 3.5 * out["area"][0]


@pytest.mark.parametrize("sigma,maxiters", [(3.0, 5), (2.5, 10), (3.0, 1)])
def test_annulus_stats_match_apertureStats(image, sigma, maxiters):
    img = image.copy()
    rng = np.random.default_rng(4)
    img[rng.integers(0, 70, 40), rng.integers(0, 90, 40)] += 500.0    # outliers to clip
    sc = SigmaClip(sigma=sigma, maxiters=maxiters)
    for _ in range(60):
        x, y = rng.uniform(-5, 95), rng.uniform(-5, 75)
        rin, rout = rng.uniform(2, 8), rng.uniform(9, 20)
        mean, med, std, n = annulus_stats(img, x, y, rin, rout, sigma, maxiters)
        st = ApertureStats(img, CircularAnnulus((x, y), rin, rout), sigma_clip=sc)
        assert mean == pytest.approx(st.mean, rel=RTOL)
        assert med == pytest.approx(st.median, rel=RTOL)
        assert std == pytest.approx(st.std, rel=RTOL)
        # Unclipped pixel count of the centre-method annulus, as photutils' mask.
        m = CircularAnnulus((x, y), rin, rout).to_mask(method="center")
        kept = sc(m.get_values(img), masked=False)
        assert n == kept.size


def test_annulus_excludes_nan_bad_and_masked():
    img = np.full((50, 50), 10.0)
    img[25, 35] = np.nan
    img[25, 15] = 1e6
    mask = np.zeros((50, 50), np.uint8)
    mask[25, 15] = MASK_BAD
    excl = np.zeros((50, 50), bool)
    excl[35, 25] = True
    img[35, 25] = -1e6
    mean, med, std, n = annulus_stats(img, 25, 25, 5, 12, 3, 5, mask=mask, exclude=excl)
    assert mean == 10.0 and std == 0.0
    full = CircularAnnulus((25, 25), 5, 12).to_mask(method="center").data.sum()
    assert n == full - 3


def test_radix_sort_equals_numpy_sort():
    # Exact equality: sums over sorted values (sky statistics) must not change with the sort.
    from bandersnake.photometry.aperture import radix_sort
    rng = np.random.default_rng(4)
    star = rng.normal(600, 30, 1225)
    star[:40] += rng.uniform(1e3, 1e5, 40)
    cases = [rng.normal(600, 30, 1250).astype(np.float32).astype(float),      # a sky annulus (3 passes)
             star.astype(np.float32).astype(float),                           # a stamp with its star
             -star.astype(np.float32).astype(float),                          # negative values
             rng.normal(5, 25, 1250).astype(np.float32).astype(float),        # low sky: both signs
             (star - 700).astype(np.float32).astype(float),                   # both signs, star
             np.concatenate([rng.normal(5, 25, 99).astype(np.float32), [0.1]]),  # one not float32-exact
             rng.integers(-3, 3, 500).astype(np.float32).astype(float),       # float32-exact ties, +-0
             rng.normal(size=999) * 10.0 ** rng.uniform(-300, 300, 999),      # every exponent
             rng.integers(-3, 3, 500).astype(float),                          # many ties
             np.array([np.inf, -np.inf, 0.0, 5e-324, -5e-324, 1.0]), np.array([2.0]), np.array([])]
    for v in cases:
        w = v.copy()
        radix_sort(w, np.empty(w.size, np.uint64))
        np.testing.assert_array_equal(w, np.sort(v))


def test_mean_std_equals_numpy():
    # One-pass shifted sums in four lanes instead of numpy's pairwise sums: equal to the last
    # ~1e-14 (rounding of ~1e3 terms); 1e-12 leaves margin yet catches any wrong formula
    # (a biased or ddof=1 std is off by >= 4e-4 at n = 1250).
    from bandersnake.photometry.aperture import mean_std

    rng = np.random.default_rng(6)
    for n in (1, 2, 3, 5, 17, 1250):
        for v in (rng.normal(500, 40, n), np.sort(rng.normal(1e5, 0.5, n)), rng.normal(0, 1e-3, n)):
            m, s = mean_std(v)
            assert m == pytest.approx(np.mean(v), rel=1e-12, abs=1e-300)
            assert s == pytest.approx(np.std(v), rel=1e-12, abs=1e-12 * np.std(v) + 1e-300)
