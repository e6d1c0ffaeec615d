"""Templates from finer reference cells: resampling, PSF, offsets, and the whole chain on a simulated pair.

The simulated pair (``bandersnake.sim.survey``): 12 reference cells (2 x 2 overlapping cells x 3
bands, 1.3"/px, rotated, masked) and a 64 x 64 TESS-like coarse frame (21"/px, rotated 12 deg)
made from one star list, with a known PSF, a sub-pixel shift (0.30, -0.20) px, a saturated star
masked in the references and a variable star 20 % brighter in the coarse frame.
"""

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from bandersnake.sim.survey import render, simulate_pair
from bandersnake.templates import geometry
from bandersnake.templates.assemble import TileSet
from bandersnake.templates.drizzle import drizzle_add, fill_isolated, mesh_nodes
from bandersnake.templates.offsets import bin_offset, overlap_weights
from bandersnake.templates.psf import convolve_moments, gaussian_kernel
from bandersnake.templates.run import make_template

SHIFT = (0.30, -0.20)


# ------------------------------------------------------------------ unit tests
def _affine_mesh(ny, nx, step, a, origin):
    """Mesh of corner coordinates for an affine fine -> output mapping ``s = a @ (x, y) + origin``."""
    jn = mesh_nodes(nx, step)
    im = mesh_nodes(ny, step)
    jj, ii = np.meshgrid(jn, im)
    x, y = jj - 0.5, ii - 0.5
    return a[0, 0] * x + a[0, 1] * y + origin[0], a[1, 0] * x + a[1, 1] * y + origin[1]


def _drizzle(data, good, scale=0.3, angle=17.0, origin=(10.3, 2.7), out=(40, 40), step=8):
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    a = scale * np.array([[c, -s], [s, c]])
    ms, mt = _affine_mesh(*data.shape, step, a, origin)
    acc = [np.zeros(out) for _ in range(4)]
    drizzle_add(data, good, ms, mt, step, *acc)
    return acc


def test_drizzle_conserves_flux_and_area():
    rng = np.random.default_rng(3)
    data = rng.uniform(0, 10, (50, 60))
    good = np.ones(data.shape, bool)
    flux, area, _, _ = _drizzle(data, good)
    # every fine pixel lands inside the output: its flux is shared out in full (rounding only)
    assert flux.sum() == pytest.approx(data.sum(), rel=1e-12)
    # area in output-pixel units: 0.3^2 per fine pixel
    assert area.sum() == pytest.approx(data.size * 0.09, rel=1e-12)


def test_drizzle_masked_pixels_never_leak():
    rng = np.random.default_rng(4)
    data = rng.uniform(0, 10, (50, 60))
    good = rng.random(data.shape) > 0.1
    clean = np.where(good, data, 0.0)
    garbage = np.where(good, data, 1e30)
    garbage[~good & (rng.random(data.shape) > 0.5)] = np.nan
    a = _drizzle(clean, good)
    b = _drizzle(garbage, good)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert a[0].sum() == pytest.approx(data[good].sum(), rel=1e-12)


def test_fill_isolated_interpolates_lone_pixels_only():
    yy, xx = np.mgrid[0:10, 0:10]
    data = 3.0 + 0.5 * xx - 0.2 * yy + 0.1 * xx**2 - 0.05 * xx * yy + 0.03 * yy**2  # a quadratic
    truth = data.copy()
    good = np.ones((10, 10), bool)
    good[4, 4] = False
    data[4, 4] = 1e9
    good[7:10, 0:3] = False  # a 3x3 masked block in the corner: its inner pixel has no good neighbour
    n = fill_isolated(data, good)
    assert data[4, 4] == pytest.approx(truth[4, 4], abs=1e-12) and good[4, 4]
    assert not good[8, 1] and not good[9, 0]
    assert n >= 1


def test_overlap_weights_share_every_super_pixel_once():
    w = overlap_weights(10, 100, 8, 1, 0.37).toarray()
    # interior supersampled pixels: fractions over the output pixels sum to 1 (flux conserved)
    col = w.sum(axis=0)
    assert np.allclose(col[12:75], 1.0)
    assert np.allclose(w.sum(axis=1), 8.0)


def test_bin_offset_moves_a_source_by_the_offset():
    k, m = 8, 2
    img = np.zeros(((10 + 2 * m) * k,) * 2)
    img[(m + 5) * k + 4, (m + 5) * k + 4] = 1.0  # at coarse (5.0 + 1/16, 5.0 + 1/16)
    for dx, dy in ((0.0, 0.0), (0.5, 0.25), (-0.3, 0.7)):
        out = bin_offset(img, k, m, (10, 10), dx, dy)
        assert out.sum() == pytest.approx(1.0, abs=1e-12)
        yy, xx = np.mgrid[0:10, 0:10]
        # a point binned into coarse pixels: the centroid is within half a pixel of x + dx
        assert abs((out * xx).sum() - (5.0625 + dx)) <= 0.5
        assert abs((out * yy).sum() - (5.0625 + dy)) <= 0.5


def test_moment_convolution_places_light_at_its_subpixel_position():
    psf = gaussian_kernel(5.7)  # TESS-like: 1.67 coarse px FWHM at k = 8
    n = 80
    flux = np.zeros((n, n))
    mom_s = np.zeros((n, n))
    mom_t = np.zeros((n, n))
    flux[40, 40] = 1.0
    mom_s[40, 40] = 0.4  # the light sits 0.4 px right of the pixel centre, 0.3 below
    mom_t[40, 40] = -0.3
    out = convolve_moments(flux, mom_s, mom_t, psf)
    yy, xx = np.mgrid[0:n, 0:n]
    assert out.sum() == pytest.approx(1.0, abs=1e-9)
    # the centroid moves by the moment to first order (error ~ delta^3 / sigma^2, < 1e-3 here)
    assert (out * xx).sum() == pytest.approx(40.4, abs=1e-3)
    assert (out * yy).sum() == pytest.approx(39.7, abs=1e-3)
    # and the image equals the PSF rendered at the true position (second-order residual)
    true = render((n, n), [40.4], [39.7], [1.0], 5.7)
    assert np.abs(out - true).max() < 0.01 * true.max()


def test_tile_grid_and_tess_science_region(tmp_path):
    tiles = geometry.tile_grid((44, 2092, 0, 2048), 256)
    assert len(tiles) == 8 * 8 + 0 and tiles[0]["name"] == "x0044_y0000"
    assert sum((t["x1"] - t["x0"]) * (t["y1"] - t["y0"]) for t in tiles) == 2048 * 2048
    h = fits.Header()
    h.update(SCCSA=45, SCCED=2092, SCIROWS=1, SCIROWE=2048)
    assert geometry._science_region(h, (2078, 2136)) == (44, 2092, 0, 2048)


def test_settings_name_the_bad_key():
    from bandersnake.errors import ConfigError
    from bandersnake.templates.settings import settings

    cfg = settings({"frame": "f.fits", "references": "r*.fits", "psf": {"fwhm_arcsec": 35.0}}, "templates.x")
    assert cfg["tile_px"] == 256 and cfg["offsets"][1] == (0.5, 0.0) and cfg["ignore_mask_bits"] == [12]
    with pytest.raises(ConfigError, match="tile_pix"):
        settings({"frame": "f", "references": "r", "psf": {"fwhm_arcsec": 35.0}, "tile_pix": 3}, "templates.x")
    with pytest.raises(ConfigError, match="fwhm_arcsec"):
        settings({"frame": "f", "references": "r"}, "templates.x")
    with pytest.raises(ConfigError, match="two decimals"):
        settings({"frame": "f", "references": "r", "psf": {"fwhm_arcsec": 1.0}, "offsets": [[0, 0], [0.001, 0]]})


def test_epsf_measured_on_the_frame_stars(tmp_path):
    from bandersnake.templates.build import read_psf, write_psf
    from bandersnake.sim.survey import tan_header

    rng = np.random.default_rng(7)
    n, sigma = 128, 0.75  # coarse px: TESS-like, undersampled
    x, y = rng.uniform(3, n - 4, (2, 100))
    img = render((n, n), x, y, 10 ** rng.uniform(4, 6, 100), sigma) + 1000.0
    img += rng.normal(0, 1, img.shape) * np.sqrt(img)
    hdr = tan_header(120.0, -30.0, 21.0, 12.0, (n, n))
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(img, header=hdr)]).writeto(tmp_path / "f.fits")
    write_psf(tmp_path / "f.fits", tmp_path / "psf.fits", model="epsf", k=8, fwhm_arcsec=35.0)
    kernel = read_psf(tmp_path / "psf.fits").kernel
    r = kernel.shape[0] // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1] / 8.0
    # the optical PSF (pixel box not included): sigma recovered to 2 % from a few dozen stars
    assert math.sqrt((kernel * xx**2).sum()) == pytest.approx(sigma, rel=0.02)
    assert math.sqrt((kernel * yy**2).sum()) == pytest.approx(sigma, rel=0.02)
    assert fits.getheader(tmp_path / "psf.fits")["NSTARS"] >= 10


def test_gaussian_kernel_conserves_flux():
    psf = gaussian_kernel(3.2)
    assert psf.kernel.sum() == pytest.approx(1.0, abs=1e-12)
    assert abs(psf.d_s.sum()) < 1e-12 and abs(psf.d_t.sum()) < 1e-12


# ------------------------------------------------------------------ the whole chain
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    truth = simulate_pair(root / "sim", shift=SHIFT)
    entry = dict(
        frame=truth["frame"], references=truth["references"], band_weights=truth["bands"],
        psf={"model": "gaussian", "fwhm_arcsec": truth["fwhm_arcsec"]}, tile_px=32,
    )
    result = make_template("sim", entry, root / "out", root / "work")
    return truth, result, root


def _aperture_fluxes(image, stars, radius):
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return np.array([image[(xx - s["x"]) ** 2 + (yy - s["y"]) ** 2 <= radius**2].sum() for s in stars])


def _clean_stars(truth, shape, radius=3.0):
    """Stars whose aperture is inside the frame and away from the saturated and variable stars."""
    st = truth["stars"]
    special = st[st["saturated"] | st["variable"]]
    ok = (st["x"] > radius + 1) & (st["x"] < shape[1] - radius - 2) & (st["y"] > radius + 1) & (
        st["y"] < shape[0] - radius - 2
    )
    for s in special:
        ok &= np.hypot(st["x"] - s["x"], st["y"] - s["y"]) > 10
    return st[ok]


def test_template_matches_noise_free_frame(built):
    truth, result, root = built
    static = fits.getdata(truth["frame_static"], 1) - truth["sky"]  # noise-free, no variable
    shape = static.shape
    frame = geometry.read_frame(truth["frame"])
    tiles = TileSet(result["tiles"], frame.shape)
    template = result["scale"] * tiles.at(*result["best"])
    stars = _clean_stars(truth, shape)
    f_true = _aperture_fluxes(static, stars, 3.0)
    f_tpl = _aperture_fluxes(template, stars, 3.0)
    noise = np.sqrt(_aperture_fluxes(truth["noise"] ** 2, stars, 3.0))
    bright = f_true / noise > 50
    assert bright.sum() >= 20
    rel = f_tpl[bright] / f_true[bright] - 1
    # the issue's bound: 0.5 % rms over the stars above S/N 50 (this includes the fitted scale's error)
    assert np.sqrt(np.mean(rel**2)) < 0.005, rel
    # total flux over the frame without the saturated star (absent from the template by design):
    # the resampling conserves flux, so with the simulated scale the totals agree to 0.1 %
    # (the fitted scale is tested separately; its error is photon noise plus a ~0.2 % pull from
    # the pixel-level fit, see test_best_offset_recovers_the_injected_shift)
    sat = truth["stars"][truth["stars"]["saturated"]]
    sat_img = render(shape, sat["x"], sat["y"], sat["flux"], truth["coarse_sigma"])
    total = truth["scale"] * tiles.at(*SHIFT).sum()
    assert total == pytest.approx((static - sat_img).sum(), rel=1e-3)


def test_best_offset_recovers_the_injected_shift(built):
    truth, result, root = built
    header = fits.getheader(root / "out" / "difference.fits")
    assert abs(header["BESTDX"] - SHIFT[0]) < 0.05
    assert abs(header["BESTDY"] - SHIFT[1]) < 0.05
    fit = Table.read(root / "out" / "offsets.ecsv")
    assert len(fit) == 4 and fit.meta["best_dx"] == header["BESTDX"]
    # the fitted scale is the simulated one (measured: +0.3 %; +0.24 % on the noise-free frame,
    # the template's PSF core being a little wider through the reference's own pixels)
    assert result["scale"] == pytest.approx(truth["scale"], rel=0.005)


def test_variable_star_recovered_in_difference(built):
    truth, result, root = built
    diff = fits.getdata(root / "out" / "difference.fits", "SCI").astype(float)
    var = truth["stars"][truth["stars"]["variable"]]
    measured = _aperture_fluxes(diff, var, 4.0)[0]
    noise = math.sqrt(_aperture_fluxes(truth["noise"] ** 2, var, 4.0)[0])
    assert noise < 0.01 * var["dflux"][0]  # the simulation makes the 3 % test meaningful
    assert measured == pytest.approx(var["dflux"][0], rel=0.03)


def test_masked_saturated_star_does_not_appear(built):
    truth, result, root = built
    sat = truth["stars"][truth["stars"]["saturated"]]
    tpl = fits.getdata(root / "out" / "template_dx+0.50_dy+0.00.fits", "SCI").astype(float)
    flux = _aperture_fluxes(tpl, sat, 3.0)[0]
    # its masked core (5 reference-PSF sigmas, > 99.99 % of its light) is filled with sky
    assert flux < 0.02 * sat["flux"][0]
    # the garbage under the reference masks (1e6 per pixel) never reaches a template
    assert np.nanmax(tpl) < 0.5 * truth["stars"]["flux"].max()


def test_products_headers_and_mapping(built):
    truth, result, root = built
    out = root / "out"
    with fits.open(out / "template_dx+0.50_dy+0.00.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "COVERAGE", "MASK"]
        h = hdul["SCI"].header
        assert (h["SECTOR"], h["CAMERA"], h["CCD"]) == (20, 3, 3)
        assert h["BUNIT"] == "electron/s" and h["TPLDX"] == 0.5
        corners = ([0, 63, 0, 63], [0, 0, 63, 63])
        same = WCS(h).pixel_to_world(*corners).separation(WCS(fits.getheader(truth["frame"], 1)).pixel_to_world(*corners))
        assert same.arcsec.max() < 1e-6
        cov = hdul["COVERAGE"].data
        assert 0.99 < np.median(cov) <= 1.0 + 1e-6
    for name in ("difference.png", "template_dx+0.00_dy+0.00.png", "mapping.ecsv"):
        assert (out / name).stat().st_size > 0
    mapping = Table.read(out / "mapping.ecsv")
    assert set(mapping["band"]) == {"r", "i", "z"}
    assert set(mapping["tile"]) == {"x0000_y0000", "x0032_y0000", "x0000_y0032", "x0032_y0032"}
    # 4 tiles: the cells overlap, so every tile needs more than one cell per band
    assert all((mapping["tile"] == t).sum() > 3 for t in set(mapping["tile"]))


# ------------------------------------------------------------------ reference formats
def test_ps1_asinh_coding_is_undone():
    from bandersnake.templates.tile import ps1_flux

    flux = np.array([-5.0, 0.0, 10.0, 1e4])  # per exposure
    h = fits.Header()
    h.update(BSOFTEN=2.5, BOFFSET=0.3, EXPTIME=40.0)
    a = 2.5 / np.log(10)
    coded = a * np.arcsinh((flux - 0.3) / (2 * 2.5))  # PS1's stored value
    assert ps1_flux(coded, h) == pytest.approx(flux / 40.0, rel=1e-12, abs=1e-12)
    assert ps1_flux(coded, fits.Header()) is coded  # other images: as they are


def test_compressed_cells_masks_and_reference_table(tmp_path):
    from bandersnake.sim.survey import tan_header
    from bandersnake.templates.tile import read_section

    rng = np.random.default_rng(5)
    h = tan_header(120.0, -30.0, 1.3, 2.0, (200, 300))
    data = rng.normal(0, 1, (200, 300)).astype(np.float32)
    mask = np.zeros((200, 300), np.int16)
    mask[50, 60] = 1 << 3
    mask[70, 80] = -32768  # bit 15: the sign bit of an int16 mask still excludes the pixel
    mask[90, 100] = 1 << 12  # ignored
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=h)]).writeto(
        tmp_path / "skycell.1234.056.r.fits.fz")
    fits.HDUList([fits.PrimaryHDU(data, header=h), fits.ImageHDU(mask, name="MASK")]).writeto(tmp_path / "own.fits")
    d, g = read_section(str(tmp_path / "skycell.1234.056.r.fits.fz"), (10, 250, 20, 180))
    full = fits.getdata(tmp_path / "skycell.1234.056.r.fits.fz", 1)  # as decompressed by astropy
    assert np.array_equal(d, full[20:180, 10:250]) and g.all()
    d, g = read_section(str(tmp_path / "own.fits"), (0, 300, 0, 200), ignore_mask_bits=[12])
    assert (~g).sum() == 2 and not g[50, 60] and not g[70, 80] and g[90, 100]
    # a cell table (Syndiff's skycell_wcs.csv) replaces the headers, matched by cell name
    row = {k: h[k] for k in ("NAXIS1", "NAXIS2", "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2",
                             "CD1_1", "CD1_2", "CD2_1", "CD2_2")}
    Table([{"NAME": "skycell.1234.056", **row}]).write(tmp_path / "cells.csv", format="ascii.csv")
    cells = geometry.read_cells([str(tmp_path / "skycell.1234.056.r.fits.fz")], set(), None,
                                str(tmp_path / "cells.csv"))
    assert cells[0].name == "skycell.1234.056" and cells[0].shape == (200, 300)
    assert cells[0].wcs.pixel_to_world(5, 7).separation(WCS(h).pixel_to_world(5, 7)).arcsec < 1e-9


def test_sip_distorted_frame_round_trip(tmp_path):
    """A TESS-like frame with SIP distortion: fine -> coarse -> fine through the sky is exact."""
    from bandersnake.sim.survey import tan_header

    h = tan_header(120.0, -30.0, 21.0, 12.0, (2078, 2136))
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h.update(A_ORDER=2, B_ORDER=2, A_2_0=2e-6, A_0_2=-1e-6, A_1_1=3e-6, B_2_0=-2e-6, B_0_2=1.5e-6, B_1_1=1e-6)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((8, 8), np.float32), header=h)]).writeto(
        tmp_path / "f.fits")
    frame = geometry.read_frame(tmp_path / "f.fits")
    cell = WCS(tan_header(122.5, -28.0, 0.25, 1.0, (6250, 6250)))  # ~3 deg from the centre
    x = np.array([0.0, 3000.5, 6249.0])
    y = np.array([10.0, 4000.0, 6249.0])
    X, Y = geometry.fine_to_coarse(cell, frame.wcs, x, y)
    back = geometry.coarse_to_fine(frame.wcs, cell, X, Y)
    assert np.allclose(back[0], x, atol=1e-4) and np.allclose(back[1], y, atol=1e-4)
    # the distortion is real: the SIP positions differ from the plain TAN ones by > 0.1 px here
    plain = WCS(tan_header(120.0, -30.0, 21.0, 12.0, (2078, 2136)))
    Xt, _ = geometry.fine_to_coarse(cell, plain, x, y)
    assert np.abs(X - Xt).max() > 0.1


def test_varying_background_with_a_mesh(built, tmp_path):
    """Scattered light: a frame whose background rises by 2000 e-/s across it (40 % of the sky)."""
    from bandersnake.templates.assemble import fit_offsets, write_difference

    truth, result, root = built
    with fits.open(truth["frame"]) as hdul:
        yy, xx = np.mgrid[0:64, 0:64]
        gradient = 2000.0 * xx / 63 + 500.0 * np.sin(yy / 20.0)
        hdul[1].data = hdul[1].data + gradient
        hdul.writeto(tmp_path / "frame.fits")
    frame = str(tmp_path / "frame.fits")
    fit = fit_offsets(frame, result["tiles"], tmp_path / "offsets.ecsv", name="g", background_box=12)
    write_difference(frame, result["tiles"], tmp_path / "offsets.ecsv", tmp_path / "d.fits", tmp_path / "d.png",
                     name="g")
    assert abs(fit.meta["best_dx"] - SHIFT[0]) < 0.05 and abs(fit.meta["best_dy"] - SHIFT[1]) < 0.05
    assert fit.meta["scale"] == pytest.approx(truth["scale"], rel=0.005)
    diff = fits.getdata(tmp_path / "d.fits", "SCI").astype(float)
    var = truth["stars"][truth["stars"]["variable"]]
    assert _aperture_fluxes(diff, var, 4.0)[0] == pytest.approx(var["dflux"][0], rel=0.03)
    # the gradient is gone: box medians of the difference within 10 % of the ramp's 2500 e-/s range
    # (measured: 120 at worst, at the edges of this 64 px frame, where the 12 px mesh extrapolates)
    boxes = diff.reshape(4, 16, 4, 16).transpose(0, 2, 1, 3).reshape(16, -1)
    assert np.abs(np.median(boxes, axis=1)).max() < 0.1 * np.ptp(gradient)
