"""Pixels of a simulated frame: Moffat stars in stamps, cosmic rays, noise and the ADC.

A raw frame is built once per exposure, in electrons, then converted:

    expected_e = flat * (sky + stars) + dark_rate * t
    electrons  = Poisson(expected_e) + cosmic rays
    raw_adu    = clip(round(bias + electrons / gain + N(0, read_noise / gain)), 0, 65535)
"""

import numpy as np

ADC_MAX = 65535


def moffat_alpha(fwhm_px, beta):
    """Moffat core width ``alpha`` (px) for a given FWHM (px) and ``beta``."""
    return fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_enclosed(radius_px, fwhm_px, beta):
    """Fraction of a Moffat profile's total flux inside ``radius_px`` (infinite-plane normalisation)."""
    a = moffat_alpha(fwhm_px, beta)
    return 1.0 - (1.0 + (np.asarray(radius_px, dtype=float) / a) ** 2) ** (1.0 - beta)


def moffat_stamps(x, y, fwhm_px, beta, half, oversample=5):
    """Pixel-integrated Moffat stamps, each normalised to a sum of 1.

    Parameters
    ----------
    x, y : ndarray
        Star centres (px, 0-based pixel centres).
    fwhm_px, beta : float
        PSF FWHM (px) and Moffat index.
    half : int
        Stamp half-size (px): stamps are ``2 half + 1`` square, centred on the nearest pixel.
    oversample : int
        Sub-samples per pixel and axis used to integrate the profile over each pixel.

    Returns
    -------
    stamps : ndarray, shape (n, 2 half + 1, 2 half + 1)
    ix0, iy0 : ndarray of int
        Pixel coordinates of each stamp's ``[0, 0]`` element.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    size = 2 * half + 1
    ix0 = np.rint(x).astype(int) - half
    iy0 = np.rint(y).astype(int) - half
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    grid = (np.arange(size)[:, None] + sub[None, :]).ravel()  # sub-pixel offsets within the stamp
    dx = (ix0[:, None] + grid[None, :]) - x[:, None]
    dy = (iy0[:, None] + grid[None, :]) - y[:, None]
    a2 = moffat_alpha(fwhm_px, beta) ** 2
    prof = (1.0 + (dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / a2) ** (-beta)
    stamps = prof.reshape(len(x), size, oversample, size, oversample).sum(axis=(2, 4))
    stamps /= stamps.sum(axis=(1, 2), keepdims=True)
    return stamps, ix0, iy0


def add_stars(image, x, y, electrons, fwhm_px, beta, half, oversample=5):
    """Add stars of ``electrons`` total e- each to ``image`` in place (stamps clipped at the edges)."""
    if len(x) == 0:
        return image
    stamps, ix0, iy0 = moffat_stamps(x, y, fwhm_px, beta, half, oversample)
    ny, nx = image.shape
    size = stamps.shape[1]
    for k in range(len(x)):
        xa, ya = max(ix0[k], 0), max(iy0[k], 0)
        xb, yb = min(ix0[k] + size, nx), min(iy0[k] + size, ny)
        if xa >= xb or ya >= yb:
            continue
        image[ya:yb, xa:xb] += electrons[k] * stamps[k, ya - iy0[k]:yb - iy0[k], xa - ix0[k]:xb - ix0[k]]
    return image


def cosmic_rays(shape, rng, n_events, mean_length_px, median_e_per_px):
    """Cosmic-ray tracks: straight segments of exponential length and random direction.

    Parameters
    ----------
    shape : (int, int)
    n_events : int
    mean_length_px : float
        Mean projected track length (px); 0-length tracks hit one pixel.
    median_e_per_px : float
        Median deposited charge per pixel (e-); log-normal, sigma 0.6 in ln(e-).

    Returns
    -------
    x, y : ndarray of int
        Hit pixels (each listed once per event; events may overlap).
    electrons : ndarray of float
        Charge deposited in each listed pixel (e-).
    """
    ny, nx = shape
    xs, ys, es = [], [], []
    for _ in range(n_events):
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        length = rng.exponential(mean_length_px)
        ang = rng.uniform(0, np.pi)
        n = max(int(np.ceil(length * 3)), 1)
        s = np.linspace(0.0, length, n)
        px = np.floor(x0 + s * np.cos(ang)).astype(int)
        py = np.floor(y0 + s * np.sin(ang)).astype(int)
        keep = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        pix = np.unique(np.stack([py[keep], px[keep]], axis=1), axis=0)
        if len(pix) == 0:
            continue
        ys.append(pix[:, 0])
        xs.append(pix[:, 1])
        es.append(median_e_per_px * np.exp(rng.normal(0.0, 0.6, len(pix))))
    if not xs:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(es)


def expose(expected_e, rng, bias_adu, gain, read_noise_e, cr=None, adc_max=None):
    """Turn an expected-electron image into a raw uint16 frame (ADU).

    Parameters
    ----------
    expected_e : ndarray
        Expected electrons per pixel (flat x (sky + stars) + dark), e-.
    rng : numpy.random.Generator
    bias_adu : ndarray
        True bias (ADU).
    gain : float
        e-/ADU.
    read_noise_e : float
        Gaussian read noise (e-).
    cr : tuple of (x, y, electrons), optional
        Cosmic-ray charge added after the photon noise (its own statistics are in the charge).
    adc_max : int, optional
        Highest ADC value (4095 for a 12-bit camera); default 65535.

    Returns
    -------
    ndarray, uint16
        Raw frame, clipped to the ADC range 0..adc_max.
    """
    electrons = rng.poisson(np.maximum(expected_e, 0.0)).astype(np.float32)
    if cr is not None and len(cr[0]):
        np.add.at(electrons, (cr[1], cr[0]), cr[2].astype(np.float32))
    noise = rng.standard_normal(electrons.shape, dtype=np.float32)
    adu = bias_adu + (electrons + noise * np.float32(read_noise_e)) / np.float32(gain)
    return np.clip(np.rint(adu), 0, ADC_MAX if adc_max is None else adc_max).astype(np.uint16)
