"""Synthetic frames for the streaming-core tests and benchmark: Moffat stars on Gaussian noise.

Not a simulator of a night (that is ``bandersnake.sim.night``): just enough truth to check
centroids and fluxes on small arrays.
"""

import numpy as np
from scipy import integrate


def moffat_alpha(fwhm, beta):
    """Moffat core width alpha (px) for a given FWHM (px) and beta."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def add_moffat(image, x0, y0, flux, fwhm=4.0, beta=3.0, oversample=5, half=None):
    """Add a pixel-integrated (``oversample``**2 sub-pixel) Moffat star of total ``flux`` (e-)."""
    alpha = moffat_alpha(fwhm, beta)
    half = half if half is not None else int(np.ceil(12 * fwhm))
    ny, nx = image.shape
    ix, iy = int(round(x0)), int(round(y0))
    xs = np.arange(max(ix - half, 0), min(ix + half + 1, nx))
    ys = np.arange(max(iy - half, 0), min(iy + half + 1, ny))
    if xs.size == 0 or ys.size == 0:
        return image
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    gx = (xs[:, None] + sub[None, :]).ravel() - x0
    gy = (ys[:, None] + sub[None, :]).ravel() - y0
    r2 = gy[:, None] ** 2 + gx[None, :] ** 2
    prof = (beta - 1.0) / (np.pi * alpha ** 2) * (1.0 + r2 / alpha ** 2) ** (-beta)
    prof = prof.reshape(ys.size, oversample, xs.size, oversample).mean(axis=(1, 3))
    image[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] += flux * prof
    return image


def moffat_enclosed(r, fwhm=4.0, beta=3.0):
    """Fraction of a Moffat's flux inside radius ``r`` (px), analytic (continuous profile)."""
    alpha = moffat_alpha(fwhm, beta)
    return 1.0 - (1.0 + (r / alpha) ** 2) ** (1.0 - beta)


def moffat_annulus_level(r_in, r_out, fwhm=4.0, beta=3.0):
    """Mean surface brightness (fraction of total flux per px**2) of a Moffat in an annulus."""
    frac = moffat_enclosed(r_out, fwhm, beta) - moffat_enclosed(r_in, fwhm, beta)
    return frac / (np.pi * (r_out ** 2 - r_in ** 2))


def moffat_enclosed_numeric(r, fwhm=4.0, beta=3.0):
    """Enclosed fraction by numerical integration of the profile (check of the analytic form)."""
    alpha = moffat_alpha(fwhm, beta)
    f = lambda s: 2 * np.pi * s * (beta - 1.0) / (np.pi * alpha ** 2) * (1 + (s / alpha) ** 2) ** (-beta)
    return integrate.quad(f, 0, r)[0]


def write_masters(folder, shape, rng, bias_level=1000.0, dark_rate=0.05, bad=()):
    """Write master bias (ADU), dark (ADU/s), flat (~1) and a bad-pixel map; return paths and arrays."""
    from astropy.io import fits
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    bias = (bias_level + 5.0 * np.sin(xx / 97.0) + rng.normal(0, 1.0, shape)).astype(np.float32)
    dark = np.full(shape, dark_rate, np.float32)
    flat = (1.0 + 0.05 * np.cos(yy / 211.0) * np.sin(xx / 173.0) + rng.normal(0, 0.005, shape)).astype(np.float32)
    bpm = np.zeros(shape, np.uint8)
    for (x, y) in bad:
        bpm[y, x] = 1
    paths = {}
    hdr = fits.Header()
    hdr["RDNOISE"] = 8.0
    for name, arr in (("bias", bias), ("dark", dark), ("flat", flat), ("bpm", bpm)):
        p = folder / f"master_{name}.fits"
        fits.writeto(p, arr, header=hdr if name == "bias" else None, overwrite=True)
        paths[name] = str(p)
    return paths, dict(bias=bias, dark=dark, flat=flat, bpm=bpm)


def write_raw_frames(folder, masters, positions, fluxes, offsets, rng, gain=2.0, read_noise=8.0,
                     sky=300.0, exptime=30.0, fwhm=4.0, beta=3.0, compress=False, start_jd=2460828.6,
                     dtype=np.uint16, noise=True):
    """Write raw frames (uint16 ADU with BZERO) with stars at ``positions + offsets[k]``.

    Returns the list of paths and the truth positions (frames x stars x 2).
    """
    from astropy.io import fits
    from astropy.time import Time
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = masters["bias"].shape
    paths, truth = [], []
    for k, off in enumerate(offsets):
        e = np.full(shape, sky * exptime / 30.0)
        pos = np.asarray(positions) + np.asarray(off)
        for (x, y), f in zip(pos, fluxes):
            add_moffat(e, x, y, f, fwhm=fwhm, beta=beta)
        e = e * masters["flat"] + masters["dark"] * exptime * gain
        if noise:
            e = rng.poisson(np.clip(e, 0, None)).astype(np.float64) + rng.normal(0, read_noise, shape)
        adu = e / gain + masters["bias"]
        if dtype == np.uint16:
            adu = np.clip(np.round(adu), 0, 65535).astype(np.uint16)
        else:
            adu = adu.astype(dtype)
        hdr = fits.Header()
        t = Time(start_jd + k * (exptime + 5) / 86400.0, format="jd", scale="utc")
        hdr["DATE-OBS"] = t.isot
        hdr["EXPTIME"] = exptime
        hdr["OBJECT"] = "SYNTH"
        hdr["RA"] = "16 02 11.83"
        hdr["DEC"] = "+28 10 10.7"
        hdr["AIRMASS"] = 1.2
        p = folder / (f"synth_{k:04d}.fits" + (".gz" if compress else ""))
        fits.writeto(p, adu, header=hdr, overwrite=True)
        paths.append(str(p))
        truth.append(pos)
    return paths, np.array(truth)


def synth_instrument(shape, gain=2.0, read_noise=8.0, saturation=60000.0):
    """A minimal instrument dictionary matching :func:`write_raw_frames`."""
    return {"name": "SYNTH", "shape": list(shape), "image_extension": 0, "gain_e_per_adu": gain,
            "read_noise_e": read_noise, "saturation_adu": saturation, "date_obs_is": "start",
            "keywords": {"ra": "RA", "dec": "DEC", "airmass": "AIRMASS", "exptime": "EXPTIME",
                         "date_obs": "DATE-OBS"},
            "site": {"latitude_deg": -24.6272, "longitude_deg": -70.4042, "altitude_m": 2482}}


def expected_fluxes(shape, positions, fluxes, star, radii, r_in, r_out, fwhm=4.0, beta=3.0):
    """Noise-free expected photometry of ``star`` computed with photutils (the reference library).

    The noiseless calibrated image is the rendered stars on a flat zero background (the sky is
    uniform after flat-fielding, and the pipeline subtracts it): expected flux =
    exact aperture sum - area * mean of the annulus (centre method), which accounts for the
    pixel-integrated profile, the star's own wings in the annulus and any neighbour.
    """
    from photutils.aperture import CircularAnnulus, CircularAperture, aperture_photometry

    img = np.zeros(shape)
    for (x, y), f in zip(positions, fluxes):
        add_moffat(img, x, y, f, fwhm=fwhm, beta=beta)
    x, y = positions[star]
    ann = CircularAnnulus((x, y), r_in, r_out).to_mask(method="center")
    level = ann.get_values(img).mean()
    out = []
    for r in radii:
        ap = CircularAperture((x, y), r)
        out.append(aperture_photometry(img, ap, method="exact")["aperture_sum"][0] - ap.area * level)
    return np.array(out)
