"""Binning a supersampled image onto coarse pixels at a sub-pixel offset (exact overlap).

A supersampled pixel is a flat patch of flux; a coarse pixel at offset ``(dx, dy)`` takes the
fraction of each patch that falls inside the coarse pixel's square shifted by ``(-dx, -dy)``, so
a source at ``x`` in the reference appears at ``x + dx`` in the template. The weights are
separable exact overlaps, every supersampled pixel's flux is shared out in full (fractions sum
to 1 away from the array edge): flux is conserved exactly, no interpolation.
"""

import math
import re

import numpy as np


def offset_margin(offsets, extra=1):
    """Coarse pixels kept around a tile so that every offset (and a refinement) stays inside."""
    largest = max((max(abs(dx), abs(dy)) for dx, dy in offsets), default=0.0)
    return int(math.ceil(largest)) + extra


def overlap_weights(n_out, n_super, k, start, shift):
    """Sparse ``(n_out, n_super)`` weights: fraction of supersampled pixel ``u`` inside output pixel ``i``.

    Output pixel ``i`` spans supersampled coordinates ``[(i + start - shift) k, (i + start - shift + 1) k]``.

    Parameters
    ----------
    n_out, n_super : int
    k : int
        Supersampling factor.
    start : int
        Coarse pixels between the supersampled array's first edge and output pixel 0's edge.
    shift : float
        Offset (coarse px) applied to the scene.
    """
    lo = (np.arange(n_out) + start - shift) * k
    hi = lo + k
    rows, cols, vals = [], [], []
    for i in range(n_out):
        u0 = max(int(math.floor(lo[i])), 0)
        u1 = min(int(math.ceil(hi[i])), n_super)
        u = np.arange(u0, u1)
        w = np.minimum(u + 1, hi[i]) - np.maximum(u, lo[i])
        keep = w > 0
        rows.append(np.full(keep.sum(), i))
        cols.append(u[keep])
        vals.append(w[keep])
    # scipy here only: the Snakefile imports offset_tag at every start (issue 22).
    from scipy import sparse

    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_out, n_super)
    )


def bin_offset(image, k, start, out_shape, dx, dy):
    """Coarse image ``out_shape`` (ny, nx) from a supersampled ``image`` at offset ``(dx, dy)``.

    Parameters
    ----------
    image : ndarray (nv, nu)
        Flux per supersampled pixel.
    k : int
    start : int
        Coarse pixels of margin between the supersampled array's edge and the output's edge.
    out_shape : tuple
    dx, dy : float
        Offset in coarse pixels.

    Returns
    -------
    ndarray (ny, nx), float64
        Flux per coarse pixel.
    """
    ny, nx = out_shape
    wx = overlap_weights(nx, image.shape[1], k, start, dx)
    wy = overlap_weights(ny, image.shape[0], k, start, dy)
    return np.asarray(wy @ (wx @ np.asarray(image, float).T).T)


def offset_tag(dx, dy):
    """File-name tag of an offset: ``dx+0.50_dy+0.00``."""
    return f"dx{dx:+.2f}_dy{dy:+.2f}"


def parse_tag(tag):
    """``(dx, dy)`` of a file-name tag ``dx+0.50_dy+0.00``."""
    m = re.fullmatch(r"dx([+-][0-9]+\.[0-9]+)_dy([+-][0-9]+\.[0-9]+)", tag)
    if m is None:
        raise ValueError(f"not an offset tag: {tag!r}")
    return float(m.group(1)), float(m.group(2))
