"""MAD-clipped mean combine: equality with ccdproc, nlimit semantics, memory bound, bad frames."""

import os
import tracemalloc
import warnings

import numpy as np
import pytest
from astropy.nddata import CCDData
from astropy.stats import mad_std

from bandersnake.calibration.combine import (
    FRAME_WORK_BYTES_PER_PX,
    MB,
    OUTPUT_BYTES_PER_PX,
    FrameStack,
    clipped_mean,
    combine,
    load_stack,
    plan_rows,
)
from bandersnake.errors import ConfigError, FrameError

ccdproc = pytest.importorskip("ccdproc")


def _stack_with_outliers(n, ny=40, nx=50, seed=0):
    """Gaussian frames (1000 +- 10 ADU) with 5 % outliers of either sign (up to +-1000 ADU)."""
    rng = np.random.default_rng(seed)
    stack = rng.normal(1000.0, 10.0, (n, ny, nx)).astype(np.float32)
    hit = rng.random(stack.shape) < 0.05
    stack[hit] += rng.normal(0.0, 300.0, hit.sum()).astype(np.float32)
    return stack


def _ccdproc_reference(stack, low, high, func=np.ma.median, dev=mad_std):
    ccds = [CCDData(frame, unit="adu") for frame in stack]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ccdproc.combine(ccds, method="average", sigma_clip=True, sigma_clip_low_thresh=low,
                              sigma_clip_high_thresh=high, sigma_clip_func=func, sigma_clip_dev_func=dev)
        comb = ccdproc.Combiner(ccds)
        comb.sigma_clipping(low_thresh=low, high_thresh=high, func=func, dev_func=dev)
    n_kept = (~comb.data_arr.mask).sum(axis=0)
    return np.asarray(ref.data), n_kept


@pytest.mark.parametrize("n,low,high", [(11, 3.0, 3.0), (10, 3.0, 2.0), (5, 5.0, 5.0), (24, 2.5, 4.0)])
def test_equals_ccdproc(n, low, high):
    stack = _stack_with_outliers(n, seed=n)
    mean, count = clipped_mean(stack, low, high)
    ref, n_kept = _ccdproc_reference(stack, low, high)
    # Same float32 inputs, both compute in float64 then we round to float32: the only
    # difference is the final float32 rounding (6e-8 relative), so 1e-6 is a strict bound.
    np.testing.assert_allclose(mean, ref, rtol=1e-6, atol=0)
    # The rejection decisions are identical, pixel by pixel.
    np.testing.assert_array_equal(count, n_kept)
    assert count.min() < n  # the outliers were really clipped somewhere


def test_nan_values_are_missing_like_ccdproc_nan_aware_clip():
    stack = _stack_with_outliers(9, seed=3)
    stack[2, 5, 7] = np.nan
    stack[:, 1, 1] = np.nan            # a pixel with no finite value at all
    stack[0, 3, 3] = np.inf
    mean, count = clipped_mean(stack, 3.0)
    # ccdproc with the nan-aware centre/scale ('median', 'mad_std' strings) treats non-finite
    # values as masked; exact same decisions expected, float32 rounding only.
    ref, n_kept = _ccdproc_reference(stack, 3.0, 3.0, func="median", dev="mad_std")
    good = np.isfinite(ref)
    np.testing.assert_allclose(mean[good], ref[good], rtol=1e-6)
    np.testing.assert_array_equal(count[good], n_kept[good])
    assert np.isnan(mean[1, 1]) and count[1, 1] == 0
    assert count[5, 7] <= 8 and count[3, 3] <= 8


def _reference_nlimit(values, clip, nlimit):
    """Direct implementation of the documented nlimit semantics for one pixel."""
    v = np.sort(values[np.isfinite(values)])
    m = v.size
    k = min(nlimit, (m - 1) // 2)
    est = v[: m - k]
    cen = np.median(est)
    std = np.median(np.abs(est - cen)) * 1.482602218505602
    keep = (values >= cen - clip * std) & (values <= cen + clip * std)
    return values[keep].mean(), keep.sum()


@pytest.mark.parametrize("n,nlimit", [(5, 5), (9, 2), (20, 5), (3, 1)])
def test_nlimit_matches_documented_semantics(n, nlimit):
    stack = _stack_with_outliers(n, ny=6, nx=7, seed=10 + n).astype(np.float64)
    mean, count = clipped_mean(stack, 3.0, nlimit=nlimit)
    for y in range(6):
        for x in range(7):
            ref_mean, ref_n = _reference_nlimit(stack[:, y, x], 3.0, nlimit)
            # float64 inputs, float32 output: 1e-6 relative covers the output rounding.
            assert mean[y, x] == pytest.approx(ref_mean, rel=1e-6)
            assert count[y, x] == ref_n


def test_nlimit_zero_is_ccdproc_and_nlimit_rejects_bright_contaminant():
    rng = np.random.default_rng(7)
    stack = rng.normal(1.0, 0.01, (7, 20, 20)).astype(np.float32)
    stack[:3, 10, 10] += 0.5  # a star in 3 of 7 flats: still a minority, the median is clean
    mean0, n0 = clipped_mean(stack, 3.0, nlimit=0)
    mean3, n3 = clipped_mean(stack, 3.0, nlimit=3)
    # Both reject the 3 contaminated values at that pixel (MAD is robust to <50 % outliers).
    assert n0[10, 10] == 4 and n3[10, 10] == 4
    assert abs(mean3[10, 10] - 1.0) < 0.03  # 3 sigma of a 4-value mean of 1 % noise


def test_spooled_blocks_equal_in_memory():
    stack = _stack_with_outliers(8, ny=64, nx=48, seed=5)
    ref, ref_n = clipped_mean(stack, 3.0)
    # A bound that forces a scratch file and several row blocks.
    shape = stack.shape[1:]
    fixed = shape[0] * shape[1] * (OUTPUT_BYTES_PER_PX + FRAME_WORK_BYTES_PER_PX)
    memory_mb = (fixed + 8 * shape[1] * 4 * 10) / MB  # ten rows per block
    result = combine(list(stack), clip_low=3.0, memory_mb=memory_mb)
    assert result.rows_per_block == 10
    np.testing.assert_array_equal(result.data, ref)     # same kernel, same inputs: bit-identical
    np.testing.assert_array_equal(result.ncombined, ref_n)


def test_scratch_file_removed(tmp_path):
    stack = _stack_with_outliers(6, ny=32, nx=32, seed=1)
    fixed = 32 * 32 * (OUTPUT_BYTES_PER_PX + FRAME_WORK_BYTES_PER_PX)
    combine(list(stack), memory_mb=(fixed + 6 * 32 * 4 * 3) / MB, scratch_dir=tmp_path)
    assert os.listdir(tmp_path) == []


def test_plan_rows_bounds():
    # A 50-frame 2048x2048 stack fits a 2 GB bound in one block (800 MiB of float32 frames).
    assert plan_rows(50, (2048, 2048), 2048) == 2048
    # With 512 MiB it must be split, and the planned block plus fixed costs fit the bound.
    rows = plan_rows(50, (2048, 2048), 512)
    assert 1 <= rows < 2048
    fixed = 2048 * 2048 * (OUTPUT_BYTES_PER_PX + FRAME_WORK_BYTES_PER_PX)
    assert fixed + rows * 50 * 2048 * 4 <= 512 * MB < fixed + (rows + 1) * 50 * 2048 * 4
    with pytest.raises(ConfigError, match="combine_memory_mb"):
        plan_rows(50, (2048, 2048), 64)


def test_memory_bound_respected_with_tracemalloc():
    """Peak traced allocation of a 40-frame 512x512 combine stays under a 16 MiB bound.

    The stack itself is 40 MiB of float32, so staying under 16 MiB proves it is never held
    whole; numpy (and astropy) allocations are traced by tracemalloc.
    """
    n, ny, nx, bound = 40, 512, 512, 16

    def loader(i):
        return np.random.default_rng(i).normal(100.0, 5.0, (ny, nx)).astype(np.float32)

    clipped_mean(np.zeros((3, 2, 2), np.float32))  # compile outside the traced region
    tracemalloc.start()
    try:
        result = combine(range(n), clip_low=3.0, memory_mb=bound, loader=loader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.rows_per_block < ny
    assert peak < bound * MB, f"peak {peak / MB:.1f} MiB over the {bound} MiB bound"
    # Sanity of the result: mean of N(100, 5) over <= 40 values.
    assert abs(float(np.median(result.data)) - 100.0) < 0.5


def test_bad_frames_skipped():
    good = [np.full((8, 8), v, np.float32) for v in (1.0, 2.0, 3.0)]

    def loader(item):
        if item == "corrupt":
            raise FrameError("corrupt.fits", "unreadable FITS data")
        if item == "small":
            return np.zeros((4, 4), np.float32)
        return good[item]

    result = combine([0, "corrupt", 1, "small", 2], clip_low=3.0, loader=loader)
    assert result.used == [0, 1, 2]
    assert [r for _, r in result.skipped][0] == "unreadable FITS data"
    assert "shape" in result.skipped[1][1]
    np.testing.assert_allclose(result.data, 2.0)
    with pytest.raises(ValueError, match="no usable frame"):
        combine(["corrupt"], loader=loader)


def test_load_stack_and_bad_arguments():
    stack, skipped = load_stack([np.ones((5, 5))] * 2)
    with stack:
        assert stack.n == 2 and stack.in_memory and skipped == []
        with pytest.raises(ValueError):
            stack.append(np.ones((5, 5)))           # full
    with pytest.raises(ValueError):
        clipped_mean(np.ones((5, 5)))
    with pytest.raises(ConfigError):
        clipped_mean(np.ones((3, 5, 5)), clip_low=0)
    with pytest.raises(ValueError):
        FrameStack(1, (4, 4)).combine()
