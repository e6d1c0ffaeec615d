"""Reference cells + coarse frame pairs from one star list, for the templates stage.

One list of stars on the sky (RA/Dec, a flux per band) is rendered twice:

* **reference cells**: several overlapping images at a finer pixel scale (each with its own
  rotation), one per band, sky-subtracted, with a small Gaussian PSF, a little noise and a
  companion bitmask (``<stem>.mask.fits``): scattered bad pixels (bit 0, value garbage),
  "suspect" pixels (bit 12, values fine - ignored by the default config), and one saturated star
  whose core is clipped at the saturation level and masked (bit 5) out to ``5 sigma`` of its PSF;
* **a coarse frame** (TESS-like: 21"/px, rotated, SECTOR/CAMERA/CCD keys) with a known Gaussian
  PSF (the template kernel convolved with the reference PSF, so a perfect template matches it),
  a sub-pixel shift of every star, an additive sky, optionally noise and one variable star
  brightened by a known fraction.

The coarse flux of a star is ``scale * sum_b weight_b * flux_b``: with the same band weights the
template reproduces it exactly. Pixel values are exact pixel integrals of the Gaussians.
"""

import math
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.special import erf

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
SAT_BIT = 5
BAD_BIT = 0
SUSPECT_BIT = 12


def tan_header(ra, dec, scale_arcsec, rot_deg, shape):
    """TAN WCS header centred on (ra, dec) for an image of ``shape`` (ny, nx)."""
    ny, nx = shape
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    d = scale_arcsec / 3600.0
    h = fits.Header()
    h["NAXIS"] = 2
    h["NAXIS1"] = nx
    h["NAXIS2"] = ny
    h["CTYPE1"] = "RA---TAN"
    h["CTYPE2"] = "DEC--TAN"
    h["CRVAL1"] = ra
    h["CRVAL2"] = dec
    h["CRPIX1"] = (nx + 1) / 2.0
    h["CRPIX2"] = (ny + 1) / 2.0
    h["CD1_1"] = -d * c
    h["CD1_2"] = d * s
    h["CD2_1"] = d * s
    h["CD2_2"] = d * c
    return h


def render(shape, x, y, flux, sigma, radius=None):
    """Sum of pixel-integrated round Gaussians (0-based centres), exact flux inside the image.

    Parameters
    ----------
    shape : tuple
    x, y, flux : arrays
        Positions (px) and total fluxes.
    sigma : float
        Gaussian sigma (px).
    """
    img = np.zeros(shape)
    ny, nx = shape
    r = radius or int(math.ceil(6 * sigma)) + 2
    k = math.sqrt(2.0) * sigma
    for xi, yi, fi in zip(x, y, flux):
        cx, cy = int(round(xi)), int(round(yi))
        x0, x1 = max(cx - r, 0), min(cx + r + 1, nx)
        y0, y1 = max(cy - r, 0), min(cy + r + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        xe = np.arange(x0, x1 + 1) - 0.5
        ye = np.arange(y0, y1 + 1) - 0.5
        px = np.diff(0.5 * erf((xe - xi) / k))
        py = np.diff(0.5 * erf((ye - yi) / k))
        img[y0:y1, x0:x1] += fi * np.outer(py, px)
    return img


def simulate_pair(out_dir, *, seed=1, n_stars=150, coarse_shape=(64, 64), coarse_scale=21.0,
                  ratio=16, fwhm_arcsec=35.0, ref_fwhm_arcsec=3.5, shift=(0.30, -0.20),
                  bands=None, scale=250.0, sky=5000.0, ref_noise=0.001, coarse_noise=True,
                  read_noise=10.0, variable=0.2, n_cells=(2, 2), cell_overlap=0.25,
                  ra=120.0, dec=-30.0, rotation=12.0, saturate=True):
    """Write reference cells, masks and a coarse frame; return the truth.

    Parameters
    ----------
    out_dir : str or Path
        Gets ``refs/cell_<i>_<j>.<band>.fits`` (+ ``.mask.fits``), ``frame.fits`` (noisy
        unless ``coarse_noise`` is False) and ``frame_true.fits`` (noise-free).
    ratio : int
        Coarse pixel / reference pixel.
    fwhm_arcsec : float
        FWHM of the template kernel (the coarse PSF is this convolved with the reference PSF).
    shift : (dx, dy)
        Coarse pixels by which every star of the coarse frame is moved from its WCS position.
    bands : dict
        ``band -> weight``; the coarse flux is ``scale * sum(weight * band flux)``.
    scale : float
        Coarse frame units (e-/s) per reference unit.
    variable : float
        Fractional brightening of one star in the coarse frame (0: none).

    Returns
    -------
    dict
        ``frame``, ``frame_true``, ``references`` (glob), ``stars`` (Table: ra, dec, x, y coarse
        with the shift, ``flux`` coarse, flags ``saturated``, ``variable``), ``shift``, ``scale``,
        ``sky``, ``bands``, ``noise`` (per-pixel sigma of the coarse frame, array), ``dflux``.
    """
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "refs").mkdir(parents=True, exist_ok=True)
    bands = dict(bands or {"r": 0.3, "i": 0.4, "z": 0.3})
    ny, nx = coarse_shape
    fheader = tan_header(ra, dec, coarse_scale, rotation, coarse_shape)
    fwcs = WCS(fheader)
    fine = coarse_scale / ratio

    # cells: an n x m grid of overlapping squares covering the frame and a margin
    half_frame = 0.5 * max(nx, ny) * coarse_scale * 1.35  # arcsec, frame + margin (PSF, offsets)
    ncx, ncy = n_cells
    side = 2 * half_frame / (ncx - (ncx - 1) * cell_overlap)
    cell_px = int(math.ceil(side / fine))
    step = side * (1 - cell_overlap)
    cells = []
    for j in range(ncy):
        for i in range(ncx):
            ox = -half_frame + side / 2 + i * step  # arcsec from the frame centre, x (east-ish)
            oy = -half_frame + side / 2 + j * step
            c = fwcs.pixel_to_world((nx - 1) / 2 + ox / coarse_scale, (ny - 1) / 2 + oy / coarse_scale)
            rot = float(rng.uniform(-4, 4))
            cells.append((i, j, tan_header(c.ra.deg, c.dec.deg, fine, rot, (cell_px, cell_px))))

    # stars: uniform over the frame + margin, fluxes log-uniform, colours per band
    span = half_frame / coarse_scale
    xs = rng.uniform((nx - 1) / 2 - span, (nx - 1) / 2 + span, n_stars)
    ys = rng.uniform((ny - 1) / 2 - span, (ny - 1) / 2 + span, n_stars)
    base = 10 ** rng.uniform(1.0, 3.3, n_stars)  # reference units (per second)
    colour = {b: rng.uniform(0.6, 1.4, n_stars) for b in bands}
    saturated = np.zeros(n_stars, bool)
    if saturate:
        # the saturated star: bright, inside the frame, away from the edges
        isat = 0
        xs[isat], ys[isat] = nx * 0.3, ny * 0.65
        base[isat] = 3e4
        saturated[isat] = True
    var = np.zeros(n_stars, bool)
    if variable:
        inside = (xs > 6) & (xs < nx - 7) & (ys > 6) & (ys < ny - 7) & ~saturated
        cand = np.where(inside & (base > 300))[0]
        ivar = cand[0] if len(cand) else np.where(inside & ~saturated)[0][0]
        base[ivar] = max(base[ivar], 3000.0)
        var[ivar] = True
    sky_pos = fwcs.pixel_to_world(xs, ys)
    band_flux = {b: base * colour[b] for b in bands}
    combined = sum(w * band_flux[b] for b, w in bands.items())

    sat_level = None
    ref_sigma = ref_fwhm_arcsec / FWHM_PER_SIGMA / fine
    for i, j, h in cells:
        w = WCS(h)
        cx, cy = w.world_to_pixel(sky_pos)
        for b in bands:
            img = render((cell_px, cell_px), cx, cy, band_flux[b], ref_sigma)
            img += rng.normal(0, ref_noise, img.shape)
            mask = np.zeros(img.shape, np.int16)
            bad = rng.random(img.shape) < 0.002
            img[bad] = 1e6  # garbage under the mask: must never reach a template
            mask[bad] |= 1 << BAD_BIT
            suspect = rng.random(img.shape) < 0.01
            mask[suspect] |= 1 << SUSPECT_BIT  # values fine, bit ignored by the config
            if saturate:
                peak = band_flux[b][0] / (2 * math.pi * ref_sigma**2)
                sat_level = 0.05 * peak
                yy, xx = np.mgrid[0:cell_px, 0:cell_px]
                core = (xx - cx[0]) ** 2 + (yy - cy[0]) ** 2 <= (5 * ref_sigma) ** 2
                mask[core] |= 1 << SAT_BIT
                img[core] = np.minimum(img[core], sat_level) + 500.0  # clipped + bleed garbage
            hdr = h.copy()
            hdr["FILTER"] = f"{b}.00000"
            hdr["BUNIT"] = "ref/s"
            stem = out / "refs" / f"cell_{i}_{j}.{b}"
            fits.PrimaryHDU(img.astype(np.float32), header=hdr).writeto(f"{stem}.fits", overwrite=True)
            fits.PrimaryHDU(mask, header=h).writeto(f"{stem}.mask.fits", overwrite=True)

    # coarse frame: template kernel (x) reference PSF, shifted stars, sky, variable
    k_sigma = fwhm_arcsec / FWHM_PER_SIGMA / coarse_scale
    c_sigma = math.sqrt(k_sigma**2 + (ref_sigma / ratio) ** 2)
    fx, fy = fwcs.world_to_pixel(sky_pos)
    fx = fx + shift[0]
    fy = fy + shift[1]
    cflux = scale * combined
    true_static = render(coarse_shape, fx, fy, cflux, c_sigma) + sky
    dflux = np.where(var, variable * cflux, 0.0)
    true = true_static + render(coarse_shape, fx, fy, dflux, c_sigma)
    noise = np.sqrt(np.clip(true, 0, None) + read_noise**2)
    frame = true + rng.normal(0, 1, true.shape) * noise if coarse_noise else true.copy()
    primary = fits.Header()
    primary["SECTOR"] = 20
    primary["CAMERA"] = 3
    primary["CCD"] = 3
    primary["TELESCOP"] = "TESS"
    primary["INSTRUME"] = "TESS Photometer (simulated)"
    ih = fheader.copy()
    ih["BUNIT"] = "electron/s"
    ih["CAMERA"] = 3
    ih["CCD"] = 3
    for name, img in (("frame.fits", frame), ("frame_true.fits", true), ("frame_static.fits", true_static)):
        fits.HDUList([fits.PrimaryHDU(header=primary), fits.ImageHDU(img.astype(np.float64), header=ih)]).writeto(
            out / name, overwrite=True
        )
    stars = Table(dict(ra=sky_pos.ra.deg, dec=sky_pos.dec.deg, x=fx, y=fy, flux=cflux, dflux=dflux,
                       saturated=saturated, variable=var))
    return dict(
        frame=str(out / "frame.fits"), frame_true=str(out / "frame_true.fits"),
        frame_static=str(out / "frame_static.fits"),
        references=str(out / "refs" / "cell_*.fits"), stars=stars, shift=tuple(shift), scale=scale,
        sky=sky, bands=bands, noise=noise, read_noise=read_noise, coarse_sigma=c_sigma,
        sat_level=sat_level, ratio=ratio, fwhm_arcsec=fwhm_arcsec,
    )
