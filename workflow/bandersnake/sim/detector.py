"""True detector maps of a simulated camera: bias structure, dark rate, flat field, bad pixels.

All maps are ``(ny, nx)`` arrays indexed ``[y, x]``. Bad-pixel bits follow the pipeline's
``bad_pixel_map.fits``: 1 hot (dark current), 2 dead / low response (flat).
"""

from dataclasses import dataclass

import numpy as np

BPM_HOT = 1
BPM_DEAD = 2


@dataclass
class Detector:
    """True maps of one camera.

    Attributes
    ----------
    bias_adu : ndarray, float32
        Bias level + column pattern + gradient (ADU).
    dark_e_per_s : ndarray, float32
        Dark current incl. amplifier glow, hot pixels and hot columns (e-/s).
    flat : ndarray, float32
        Relative response (vignetting x dust donuts x pixel response), median 1.
    bpm : ndarray, uint8
        1 hot, 2 dead/low response.
    info : dict
        Scalars and defect lists for ``truth.yaml``.
    """

    bias_adu: np.ndarray
    dark_e_per_s: np.ndarray
    flat: np.ndarray
    bpm: np.ndarray
    info: dict


def bias_map(shape, rng, level_adu, column_sigma_adu, gradient_x_adu, gradient_y_adu):
    """Bias level with a fixed column pattern and a linear gradient (ADU).

    Parameters
    ----------
    shape : (int, int)
        ``(ny, nx)``.
    level_adu : float
        Mean bias level (ADU).
    column_sigma_adu : float
        RMS of the per-column offsets (ADU); a slow ripple of the same amplitude is added so the
        pattern is not white (read-out electronics pick-up).
    gradient_x_adu, gradient_y_adu : float
        Peak-to-peak linear gradient across the frame along x and y (ADU).
    """
    ny, nx = shape
    x = np.arange(nx)
    cols = rng.normal(0.0, column_sigma_adu, nx) + column_sigma_adu * np.sin(2 * np.pi * x / 97.0)
    gx = gradient_x_adu * (x / max(nx - 1, 1) - 0.5)
    gy = gradient_y_adu * (np.arange(ny) / max(ny - 1, 1) - 0.5)
    return (level_adu + gy[:, None] + (cols + gx)[None, :]).astype(np.float32)


def dark_map(shape, rng, dark_e_per_s, amp_glow_e_per_s, hot_per_mpix, hot_range_e_per_s, n_hot_columns,
             hot_column_e_per_s):
    """Dark current (e-/s): uniform level, amplifier glow in one corner, hot pixels and columns.

    Hot pixel rates are log-uniform over ``hot_range_e_per_s`` (broad, as measured on real
    detectors). Hot columns run from a random row to the top edge (a charge-trap defect).

    Returns
    -------
    rate : ndarray, float32
        Dark current (e-/s).
    hot : ndarray, bool
        Hot pixels and columns.
    info : dict
        Defect list for the truth file.
    """
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    # Amplifier glow: exponential fall-off from the (0, 0) corner over ~8 % of the frame size.
    scale = 0.08 * max(nx, ny)
    rate = dark_e_per_s + amp_glow_e_per_s * np.exp(-np.hypot(xx, yy) / scale)
    hot = np.zeros(shape, bool)
    n_hot = rng.poisson(hot_per_mpix * nx * ny / 1e6)
    idx = rng.choice(nx * ny, size=n_hot, replace=False)
    lo, hi = hot_range_e_per_s
    hot_rates = np.exp(rng.uniform(np.log(lo), np.log(hi), n_hot))
    rate.flat[idx] += hot_rates
    hot.flat[idx] = True
    columns = []
    for _ in range(n_hot_columns):
        col = int(rng.integers(nx // 10, nx - nx // 10))
        row0 = int(rng.integers(0, ny // 2))
        rate[row0:, col] += hot_column_e_per_s
        hot[row0:, col] = True
        columns.append({"x": col, "y_from": row0, "extra_e_per_s": float(hot_column_e_per_s)})
    info = {"n_hot_pixels": int(n_hot), "hot_columns": columns}
    return rate.astype(np.float32), hot, info


def flat_map(shape, rng, vignetting, n_donuts, donut_radius_px, donut_depth, prnu, dead_per_mpix, n_dead_columns):
    """True flat field: vignetting x dust donuts x pixel response, with dead pixels and columns.

    Parameters
    ----------
    vignetting : float
        Fractional loss at the corners of the frame (radial, quadratic, centre slightly off-axis).
    n_donuts : int
        Out-of-focus dust shadows: darker rings with a brighter centre (central obstruction).
    donut_radius_px : (float, float)
        Range of outer radii (px).
    donut_depth : (float, float)
        Range of fractional depths of the ring.
    prnu : float
        RMS pixel-to-pixel response non-uniformity.
    dead_per_mpix : float
        Dead/low-response pixels per Mpix (response 0-0.3).
    n_dead_columns : int
        Columns with response 0.02.

    Returns
    -------
    flat : ndarray, float32
        Normalised to median 1.
    dead : ndarray, bool
    info : dict
    """
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cx = 0.5 * (nx - 1) + 0.03 * nx
    cy = 0.5 * (ny - 1) - 0.02 * ny
    rmax = np.hypot(max(cx, nx - 1 - cx), max(cy, ny - 1 - cy))
    flat = 1.0 - vignetting * ((xx - cx) ** 2 + (yy - cy) ** 2) / rmax**2
    donuts = []
    for _ in range(n_donuts):
        radius = float(rng.uniform(*donut_radius_px))
        depth = float(rng.uniform(*donut_depth))
        dx0 = float(rng.uniform(radius + 2, nx - radius - 2))
        dy0 = float(rng.uniform(radius + 2, ny - radius - 2))
        half = int(radius + 4)
        x0, x1 = max(int(dx0) - half, 0), min(int(dx0) + half + 1, nx)
        y0, y1 = max(int(dy0) - half, 0), min(int(dy0) + half + 1, ny)
        r = np.hypot(xx[y0:y1, x0:x1] - dx0, yy[y0:y1, x0:x1] - dy0)
        # Soft-edged disk of the pupil shadow minus its central obstruction (40 % of the radius).
        outer = 0.5 * (1 - np.tanh((r - radius) / 0.8))
        inner = 0.5 * (1 - np.tanh((r - 0.4 * radius) / 0.8))
        flat[y0:y1, x0:x1] *= 1.0 - depth * (outer - 0.7 * inner)
        donuts.append({"x": dx0, "y": dy0, "radius_px": radius, "depth": depth})
    flat *= 1.0 + rng.normal(0.0, prnu, shape).astype(np.float32)
    dead = np.zeros(shape, bool)
    n_dead = rng.poisson(dead_per_mpix * nx * ny / 1e6)
    idx = rng.choice(nx * ny, size=n_dead, replace=False)
    flat.flat[idx] = rng.uniform(0.0, 0.3, n_dead)
    dead.flat[idx] = True
    dead_columns = []
    for _ in range(n_dead_columns):
        col = int(rng.integers(nx // 10, nx - nx // 10))
        flat[:, col] = 0.02
        dead[:, col] = True
        dead_columns.append(col)
    flat /= np.median(flat)
    info = {"vignetting_corner_loss": float(vignetting), "vignetting_centre": [float(cx), float(cy)],
            "dust_donuts": donuts, "prnu": float(prnu), "n_dead_pixels": int(n_dead), "dead_columns": dead_columns}
    return flat.astype(np.float32), dead, info


def make_detector(shape, rng, cfg):
    """Build the true maps of a camera from the simulator's config.

    Parameters
    ----------
    shape : (int, int)
        ``(ny, nx)``.
    rng : numpy.random.Generator
    cfg : SimConfig
        Uses its ``bias_*``, ``dark_*``, ``hot_*``, ``flat_*`` and ``dead_*`` fields.
    """
    bias = bias_map(shape, rng, cfg.bias_level_adu, cfg.bias_column_sigma_adu, cfg.bias_gradient_x_adu,
                    cfg.bias_gradient_y_adu)
    dark, hot, dinfo = dark_map(shape, rng, cfg.dark_current_e_per_s, cfg.amp_glow_e_per_s, cfg.hot_pixels_per_mpix,
                                cfg.hot_pixel_range_e_per_s, cfg.n_hot_columns, cfg.hot_column_e_per_s)
    flat, dead, finfo = flat_map(shape, rng, cfg.flat_vignetting, cfg.n_dust_donuts, cfg.donut_radius_px,
                                 cfg.donut_depth, cfg.flat_prnu, cfg.dead_pixels_per_mpix, cfg.n_dead_columns)
    bpm = (hot * BPM_HOT | dead * BPM_DEAD).astype(np.uint8)
    return Detector(bias, dark, flat, bpm, {**dinfo, **finfo})
