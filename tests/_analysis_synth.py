"""Synthetic photometry products for the analysis tests (until bandersnake.sim.night provides nights).

Writes ``photometry/photometry_aper<N>.fits`` and ``centroiding/centroids.fits`` exactly in the
ARCHITECTURE.md format from a known model: a target with an injected limb-darkened transit,
comparison stars with photon, sky, read and scintillation noise (Osborn et al. 2015 with the
frame's airmass), clouds and extinction common to all stars, one variable comparison, and a few
planted outliers (a cosmic ray on the target, one on a comparison, a bad frame, an unreadable frame).
"""

import math
from pathlib import Path

import numpy as np
from astropy.io import fits

from bandersnake.analysis.precision import scintillation_variance
from bandersnake.analysis.transit import transit_model

INSTRUMENT = {
    "name": "SYNTH", "gain_e_per_adu": 2.0, "read_noise_e": 12.0, "saturation_adu": 60000,
    "plate_scale_arcsec_per_px": 0.35, "telescope_diameter_m": 1.0,
    "site": {"latitude_deg": -24.6, "longitude_deg": -70.4, "altitude_m": 2482},
    "scintillation": {"C_Y": 1.5, "H_m": 8000},
}

TRUTH = {"t0": 2460000.70, "rp_rs": 0.1, "t14": 2.0 / 24, "b": 0.3, "u1": 0.4, "u2": 0.25}


def make_night(root, seed=1, n_frames=300, cadence_s=60.0, exptime=50.0, radii=(3, 4, 5, 6, 8),
               comp_fluxes=(8e5, 6e5, 1.2e6, 3e5, 5e5, 9e5), target_flux=4e5, variable_comp=3,
               variable_amp=0.01, transit=True, outliers=True, clouds=0.03, sky=300.0,
               psf_sigma=1.8, dark_e_per_s=0.0, nan_aperture=None, truth=None, dip_comp=None):
    """Write a synthetic (night, target) and return its truth.

    Parameters
    ----------
    root : Path
        Target folder; ``photometry/`` and ``centroiding/`` are created in it.
    comp_fluxes : sequence of float
        Total fluxes (e- per exposure) of the comparison stars 1..k.
    variable_comp : int or None
        Star index given a sinusoidal variation of ``variable_amp`` (fraction) and period 1.7 h.
    nan_aperture : int, optional
        Radius whose target flux is all NaN.
    dip_comp : int, optional
        Star index given a transit-like dip (Rp/R* 0.09) at the target's mid-time: the trap for a
        comparison selection that minimises the target's scatter.

    Returns
    -------
    dict
        ``phot_paths``, ``centroid_path``, ``instrument``, ``truth`` (transit parameters), ``bjd``,
        ``transit`` (injected model), ``airmass``, ``exptime``, ``target_sigma`` (per-frame relative
        noise injected into the target for each radius).
    """
    rng = np.random.default_rng(seed)
    truth = dict(TRUTH, **(truth or {}))
    root = Path(root)
    (root / "photometry").mkdir(parents=True, exist_ok=True)
    (root / "centroiding").mkdir(parents=True, exist_ok=True)
    fluxes = np.array([target_flux, *comp_fluxes])
    m = len(fluxes)
    bjd = 2460000.55 + np.arange(n_frames) * cadence_s / 86400
    jd = bjd - 0.0035
    hours = (bjd - bjd[0]) * 24
    airmass = 1.05 + 0.9 * ((hours - 1.0) / 4.0) ** 2          # culmination ~1 h after start
    exptimes = np.full(n_frames, exptime)
    # common mode: extinction + thin clouds (slow) + transparency jitter
    common = (10 ** (-0.4 * 0.08 * airmass)
              * (1 - clouds * (1 + np.sin(2 * np.pi * hours / 1.3)) / 2)
              * (1 + 0.003 * rng.standard_normal(n_frames)))
    model = np.ones((n_frames, m))
    tr = np.ones(n_frames)
    if transit:
        tr = transit_model(bjd, truth["t0"], truth["rp_rs"], truth["t14"], truth["b"], truth["u1"], truth["u2"])
        model[:, 0] = tr
    if dip_comp is not None:
        model[:, dip_comp] *= transit_model(bjd, truth["t0"], 0.09, truth["t14"], truth["b"], truth["u1"],
                                            truth["u2"])
    if variable_comp is not None:
        model[:, variable_comp] *= 1 + variable_amp * np.sin(2 * np.pi * hours / 1.7)
    scint = np.sqrt(scintillation_variance(airmass, exptimes, INSTRUMENT["telescope_diameter_m"],
                                           INSTRUMENT["site"]["altitude_m"]))
    xc0 = rng.uniform(100, 900, m)
    yc0 = rng.uniform(100, 900, m)
    drift = np.stack([0.5 * np.sin(hours / 2), 0.3 * hours / 5], axis=1)
    xc = xc0[None, :] + drift[:, :1] + 0.05 * rng.standard_normal((n_frames, m))
    yc = yc0[None, :] + drift[:, 1:] + 0.05 * rng.standard_normal((n_frames, m))
    fwhm_var = 1 + 0.1 * np.sin(hours / 1.5)
    sky_level = sky * (1 + 0.5 * (airmass - 1))
    rin, rout = 15.0, 25.0
    n_sky = math.pi * (rout**2 - rin**2)
    # per-star scintillation realisation shared by all apertures (same photons)
    scint_draw = rng.standard_normal((n_frames, m)) * scint[:, None]
    phot_paths, target_sigma = [], {}
    for radius in radii:
        frac = 1 - np.exp(-radius**2 / (2 * (psf_sigma * fwhm_var[:, None]) ** 2))
        signal = fluxes[None, :] * model * common[:, None] * frac * (1 + scint_draw)
        n_pix = math.pi * radius**2
        var = signal + n_pix * (1 + n_pix / n_sky) * (sky_level[:, None] + dark_e_per_s * exptime
                                                      + INSTRUMENT["read_noise_e"] ** 2)
        flux = signal + np.sqrt(var) * rng.standard_normal(signal.shape)
        flux_err = np.sqrt(var)
        target_sigma[radius] = np.sqrt(var[:, 0] / signal[:, 0] ** 2 + scint**2)
        flag = np.zeros((n_frames, m), dtype=np.int32)
        if outliers:
            flux[40, 0] *= 1.08                 # cosmic ray on the target
            if m > 2:
                flux[100, 2] *= 1.15            # cosmic ray on a comparison
            flux[150, :] *= 0.5                 # bad frame (all stars drop)
            flux[200, :] = np.nan               # unreadable frame
            flag[200, :] = 32
        if nan_aperture is not None and radius == nan_aperture:
            flux[:, 0] = np.nan
            flag[:, 0] |= 16
        sky_col = np.repeat(sky_level[:, None], m, axis=1) + rng.normal(0, 1, (n_frames, m))
        cols = [
            fits.Column("BJD_TDB", "D", unit="d", array=bjd),
            fits.Column("JD_UTC", "D", unit="d", array=jd),
            fits.Column("File", "A40", array=np.array([f"raw/frame_{i:04d}.fits" for i in range(n_frames)])),
            fits.Column("airmass", "E", array=airmass),
            fits.Column("exptime", "E", unit="s", array=exptimes),
            fits.Column("xc", f"{m}D", unit="pix", array=xc),
            fits.Column("yc", f"{m}D", unit="pix", array=yc),
            fits.Column("flux", f"{m}D", unit="electron", array=flux),
            fits.Column("flux_err", f"{m}D", unit="electron", array=flux_err),
            fits.Column("sky", f"{m}D", unit="electron/pix", array=sky_col),
            fits.Column("sky_err", f"{m}D", unit="electron/pix", array=np.full((n_frames, m), 1.0)),
            fits.Column("n_bad_pixels", f"{m}J", array=np.zeros((n_frames, m), dtype=np.int32)),
            fits.Column("flag", f"{m}J", array=flag),
        ]
        hdu = fits.BinTableHDU.from_columns(cols, name="PHOTOMETRY")
        hdu.header["APERRAD"] = radius
        hdu.header["SKYRIN"] = rin
        hdu.header["SKYROUT"] = rout
        path = root / "photometry" / f"photometry_aper{radius}.fits"
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
        phot_paths.append(path)
    width = psf_sigma * fwhm_var[:, None] * np.ones((1, m))
    ccols = [
        fits.Column("BJD_TDB", "D", unit="d", array=bjd),
        fits.Column("JD_UTC", "D", unit="d", array=jd),
        fits.Column("File", "A40", array=np.array([f"raw/frame_{i:04d}.fits" for i in range(n_frames)])),
        fits.Column("airmass", "E", array=airmass),
        fits.Column("exptime", "E", unit="s", array=exptimes),
        fits.Column("xc", f"{m}D", unit="pix", array=xc),
        fits.Column("yc", f"{m}D", unit="pix", array=yc),
        fits.Column("x_width", f"{m}D", unit="pix", array=width),
        fits.Column("y_width", f"{m}D", unit="pix", array=width * 1.05),
        fits.Column("peak_x", f"{m}D", unit="pix", array=np.round(xc)),
        fits.Column("peak_y", f"{m}D", unit="pix", array=np.round(yc)),
        fits.Column("peak_value", f"{m}D", unit="electron", array=np.outer(common, fluxes) / 20),
        fits.Column("n_pixels_above", f"{m}J", array=np.full((n_frames, m), 30, dtype=np.int32)),
        fits.Column("sig3_pixels", f"{m}J", array=np.full((n_frames, m), 30, dtype=np.int32)),
        fits.Column("sig5_pixels", f"{m}J", array=np.full((n_frames, m), 20, dtype=np.int32)),
        fits.Column("sig10_pixels", f"{m}J", array=np.full((n_frames, m), 10, dtype=np.int32)),
        fits.Column("flag", f"{m}J", array=np.zeros((n_frames, m), dtype=np.int32)),
    ]
    cpath = root / "centroiding" / "centroids.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(ccols, name="CENTROIDS")]).writeto(
        cpath, overwrite=True)
    return {"phot_paths": phot_paths, "centroid_path": cpath, "instrument": INSTRUMENT, "truth": truth,
            "bjd": bjd, "transit": tr, "airmass": airmass, "exptime": exptimes, "target_sigma": target_sigma}
