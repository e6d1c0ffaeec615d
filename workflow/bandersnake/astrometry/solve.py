"""Plate solving with astrometry.net's ``solve-field``, WCS into the calibrated product, night summary.

How a frame is solved
---------------------
1. Sources are detected by us (:func:`detect_sources`: mesh background, Gaussian matched
   filter, local maxima, Gaussian-windowed centroids) and written as an xylist (FITS table X, Y,
   FLUX; 1-based FITS pixel coordinates, as solve-field expects). This skips image2xy, lets us use
   the product's MASK, and makes a hinted solve take ~1 s.
2. ``solve-field`` runs in a temporary directory with ``--no-plots --overwrite --cpulimit``,
   scale bounds in arcsec/px (from the instrument's plate scale +- margin), an optional RA/Dec
   hint and radius, and a backend config file listing the index files (a directory, or a few
   files: users can point it at their own index files).
3. A retry ladder widens the scale range and the search radius, then drops the hint (blind).
   A frame that does not solve returns ``status='unsolved'`` (never an exception): a cloudy frame
   must not stop a night.

Strategy for a night (decision)
-------------------------------
Every frame is solved independently with solve-field, hinted by the previous solution (centre,
scale +-5 %); see :func:`solve_frames`. With our xylist a hinted solve costs ~1.5 s per
2048x2048 frame, detection included (benchmarks/bench_astep.py), a third of astroscrappy's
cost, and it gives each frame an absolute solution with its own SIP terms, so field rotation
or a re-pointing never propagates an error. On a synthetic Tycho-2 field the solution agrees
with the truth to 0.03 px RMS, 0.11 px worst, over the chip (tests/test_astrometry.py), well
within the 0.3 px requirement; a reference-frame-plus-shift scheme would not be more accurate
and would need its own failure handling.

Conventions
-----------
Our pixel coordinates are 0-based (numpy); solve-field's and the FITS WCS's are 1-based. The
xylist is written with +1, and the returned ``astropy.wcs.WCS`` is used with ``origin=0`` for our
coordinates (astropy handles CRPIX's 1-based convention).
"""

import logging
import math
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning, AstropyWarning
from astropy.wcs import WCS, FITSFixedWarning
from scipy import ndimage

from ..calibration.mef import MASK_BAD, MASK_CR, MASK_SATURATED, read_calibrated
from ..errors import ConfigError, FrameError
from ..fitsio import atomic_path, write_fits

log = logging.getLogger(__name__)

DEFAULT_INDEX_DIR = Path("/usr/share/astrometry")

#: Retry ladder. Each step: ``scale_widen`` multiplies the scale range outwards (low / f,
#: high * f), ``radius_mult`` multiplies the hint radius, ``hint`` False runs blind.
DEFAULT_LADDER = (
    {"scale_widen": 1.0, "radius_mult": 1.0, "hint": True},
    {"scale_widen": 1.5, "radius_mult": 4.0, "hint": True},
    {"scale_widen": 2.0, "radius_mult": 1.0, "hint": False},
)

# Keywords of any earlier WCS (PinPoint, MaxIm, astrometry.net): removed before writing ours.
_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|LONPOLE|LATPOLE|"
    r"RADESYS|RADECSYS|EQUINOX|EPOCH|IMAGEW|IMAGEH|A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d_\d|B_\d_\d|"
    r"AP_\d_\d|BP_\d_\d|A_DMAX|B_DMAX|WCSNAME|MJDREF|DATEREF|PLTSOLVD|WCSSOLVE|WCSRMS|WCSRMSPX|WCSNMAT|"
    r"WCSATTEM|WCSNSRC|WCSNCAT|WCSCRMS|ASTROFLG)$"
)


@dataclass
class SolveResult:
    """Outcome of :func:`solve_field` for one frame.

    ``status`` is 'solved', 'unsolved' (solve-field ran but found no solution in any ladder step)
    or 'error' (the frame could not be read / had too few sources; ``message`` says why).
    Residuals come from solve-field's correspondence (.corr) file: RMS distance between the
    detected sources and their matched index stars, in px and arcsec.
    """

    path: str
    status: str
    wcs: WCS | None = None
    attempt: int = -1
    n_sources: int = 0
    n_matched: int = 0
    rms_px: float = math.nan
    rms_arcsec: float = math.nan
    pixscale_arcsec: float = math.nan
    ra_center: float = math.nan
    dec_center: float = math.nan
    rotation_deg: float = math.nan
    elapsed_s: float = 0.0
    message: str = ""
    attempts: list = field(default_factory=list)

    @property
    def solved(self):
        return self.status == "solved"


# --------------------------------------------------------------------------------------------
# Source detection
# --------------------------------------------------------------------------------------------


def background_mesh(image, box=64):
    """Background and its RMS (image units), bilinearly interpolated from clipped per-box statistics.

    Per box: median and interquartile sigma, one 3-sigma clip about the median (removes the
    stars), then median and sigma of the kept pixels, all from one sort (fast, NaN-aware).
    NaN pixels are ignored; ``box`` is the mesh size (px).
    """
    med, rms = background_grid(image, box)
    ny, nx = image.shape
    return _upsample(med, ny, nx), _upsample(rms, ny, nx)


def background_grid(image, box=64):
    """Per-box background and RMS of :func:`background_mesh`, before interpolation: two
    ``(ny // box, nx // box)`` arrays (image units)."""
    ny, nx = image.shape
    by, bx = max(ny // box, 1), max(nx // box, 1)
    # Boxes of >= 32x32 px: every other pixel of every other row gives the same sky statistics
    # (>= 256 samples per box) with a quarter of the pixels to sort.
    step = 2 if min(ny // by, nx // bx) >= 32 else 1
    sub = image[::step, ::step]
    cut = sub[: by * (sub.shape[0] // by), : bx * (sub.shape[1] // bx)]
    ny_c, nx_c = cut.shape
    tiles = np.sort(cut.reshape(by, ny_c // by, bx, nx_c // bx).transpose(0, 2, 1, 3).reshape(by, bx, -1), axis=2)

    def quantile(q, lo, cnt):  # q-quantile of tiles[..., lo:lo+cnt] (sorted, NaN at the end)
        k = lo + np.clip(np.round(q * (cnt - 1)).astype(int), 0, None)
        return np.take_along_axis(tiles, np.clip(k, 0, tiles.shape[2] - 1)[..., None], 2)[..., 0]

    zero = np.zeros((by, bx), int)
    n = np.isfinite(tiles).sum(axis=2)
    med = quantile(0.5, zero, n)
    sig = (quantile(0.75, zero, n) - quantile(0.25, zero, n)) / 1.349
    lo = (tiles < (med - 3 * sig)[..., None]).sum(axis=2)
    cnt = (tiles <= (med + 3 * sig)[..., None]).sum(axis=2) - lo
    med = quantile(0.5, lo, cnt)
    rms = (quantile(0.75, lo, cnt) - quantile(0.25, lo, cnt)) / 1.349
    empty = (n == 0) | (cnt < 3)
    med = np.where(empty | ~np.isfinite(med), np.nan, med)
    rms = np.where(empty | ~(rms > 0), np.nan, rms)
    med = np.where(np.isfinite(med), med, np.nanmedian(med) if np.isfinite(med).any() else 0.0)
    rms = np.where(np.isfinite(rms), rms, np.nanmedian(rms) if np.isfinite(rms).any() else 1.0)
    return med, rms


def _axis(n, m):
    """Pixel ``i`` of ``n`` between box centres ``i0[i]`` and ``i1[i]`` of ``m``, at fraction ``f[i]``."""
    pos = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    i0 = np.minimum(pos.astype(int), max(m - 2, 0))
    return i0, np.minimum(i0 + 1, m - 1), pos - i0


def _upsample(grid, ny, nx):
    """Bilinear interpolation of a (by, bx) box grid to (ny, nx) pixels, flat beyond the outer centres.

    Box ``j`` of ``m`` covers ``n / m`` pixels with its centre at ``(j + 0.5) n / m - 0.5``, as
    ``ndimage.zoom(order=1, grid_mode=True, mode='nearest')``. Done by index arithmetic, not
    ``zoom`` (~20x slower) nor a matrix product (BLAS threads stall on a busy machine).
    """
    y0, y1, fy = _axis(ny, grid.shape[0])
    x0, x1, fx = _axis(nx, grid.shape[1])
    rows = grid[y0] * (1 - fy)[:, None] + grid[y1] * fy[:, None]          # (ny, bx)
    return rows[:, x0] * (1 - fx)[None, :] + rows[:, x1] * fx[None, :]


def detect_sources(image, mask=None, fwhm_px=3.0, nsigma=5.0, max_sources=300, border=3, box=64):
    """Point sources for plate solving, brightest first.

    Parameters
    ----------
    image : ndarray
        Image (e- or ADU; any linear unit).
    mask : ndarray of bool, optional
        Pixels to ignore (bad, cosmic rays, NaN).
    fwhm_px : float
        Expected PSF FWHM (px), sets the matched filter and the centroid window.
    nsigma : float
        Detection threshold on the filtered image, in units of its noise.
    max_sources : int
        Keep at most this many (the brightest).
    border : int
        Ignore peaks closer than this to the edge (px).
    box : int
        Background mesh size (px).

    Returns
    -------
    astropy.table.Table
        ``x``, ``y`` (0-based px), ``flux`` (image units, background-subtracted sum within
        1.5 FWHM), ``peak`` (background-subtracted peak pixel), ``snr`` (signal-to-noise of
        ``flux``, Poisson for an image in e-).
    """
    from . import _detect

    data = np.ascontiguousarray(image, dtype=np.float32)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    med, rms_grid = background_grid(np.where(bad, np.float32(np.nan), data), box)
    ny_, nx_ = data.shape
    axes = _axis(ny_, med.shape[0]) + _axis(nx_, med.shape[1])
    # Background subtracted and the threshold applied pixel by pixel, the interpolated background
    # and RMS never stored as images (_detect.py: same values as background_mesh's, 4096x4096
    # frame 3.7 -> ~1 CPU-s).
    sub = np.empty_like(data)
    _detect.subtract_background(data, bad, med, *axes, sub)
    sigma = max(fwhm_px, 1.0) / 2.3548
    filt = ndimage.gaussian_filter(sub, sigma)
    size = max(3, int(2 * round(fwhm_px)) + 1)
    # Local maxima among the pixels above the threshold only (a full maximum filter costs ~5x more).
    # Noise of a Gaussian-filtered white-noise image: rms / (2 sqrt(pi) sigma).
    py, px = (_detect.above_threshold(filt, rms_grid, *axes, float(nsigma), 2.0 * np.sqrt(np.pi) * sigma,
                                      int(border)) if border > 0 else (np.zeros(0, np.int64),) * 2)
    is_peak = _detect.local_peaks(filt, py, px, size // 2)
    py, px = py[is_peak], px[is_peak]
    order = np.argsort(filt[py, px])[::-1][: 3 * max_sources]
    py, px = py[order], px[order]
    x, y, flux = _windowed_centroids(sub, px.astype(float), py.astype(float), sigma)
    ok = np.isfinite(x) & np.isfinite(y) & (flux > 0)
    # S/N of the 1.5-FWHM aperture sum: Poisson on the star (image in e-) and the local sky RMS.
    npix = np.pi * (1.5 * 2.3548 * sigma) ** 2
    snr = flux / np.sqrt(np.clip(flux, 0, None) + npix * _detect.bilinear_at(rms_grid, axes, py, px) ** 2)
    tab = Table({"x": x[ok], "y": y[ok], "flux": flux[ok], "peak": sub[py[ok], px[ok]], "snr": snr[ok]})
    tab.sort("flux", reverse=True)
    return tab[:max_sources]


def _windowed_centroids(sub, x0, y0, sigma, n_iter=4):
    """Gaussian-windowed first moments (SExtractor XWIN-like), vectorised over sources (px)."""
    ny, nx = sub.shape
    half = int(np.ceil(4 * sigma)) + 1
    off = np.arange(-half, half + 1)
    x, y = x0.copy(), y0.copy()
    ix, iy = np.round(x0).astype(int), np.round(y0).astype(int)
    gx = np.clip(ix[:, None, None] + off[None, None, :], 0, nx - 1)
    gy = np.clip(iy[:, None, None] + off[None, :, None], 0, ny - 1)
    stamps = sub[gy, gx].astype(np.float64)     # float64 stamps only, not a float64 copy of the frame
    for _ in range(n_iter):
        dx = gx - x[:, None, None]
        dy = gy - y[:, None, None]
        w = np.exp(-0.5 * (dx * dx + dy * dy) / (2 * sigma) ** 2)  # window 2x the PSF sigma
        wf = w * stamps
        norm = wf.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            # A Gaussian window of width s_w on a Gaussian star pulls the moment towards the
            # window centre by s_w^2 / (s_w^2 + s_psf^2); 1.25 undoes it for s_w = 2 s_psf.
            nx_ = x + 1.25 * (wf * dx).sum(axis=(1, 2)) / norm
            ny_ = y + 1.25 * (wf * dy).sum(axis=(1, 2)) / norm
        moved = np.hypot(nx_ - x0, ny_ - y0) < half
        x = np.where(moved, nx_, np.nan)
        y = np.where(moved, ny_, np.nan)
        x = np.where(np.isfinite(x), x, x0)
        y = np.where(np.isfinite(y), y, y0)
    r = np.hypot(gx - x[:, None, None], gy - y[:, None, None])
    flux = (stamps * (r <= 1.5 * 2.3548 * sigma)).sum(axis=(1, 2))  # 1.5-FWHM-radius aperture
    return x, y, flux


def write_xylist(path, x, y, flux, width, height):
    """Write an astrometry.net xylist: FITS table X, Y (1-based px), FLUX; IMAGEW/IMAGEH cards."""
    cols = [fits.Column("X", "D", array=np.asarray(x) + 1.0), fits.Column("Y", "D", array=np.asarray(y) + 1.0),
            fits.Column("FLUX", "E", array=np.asarray(flux))]
    hdu = fits.BinTableHDU.from_columns(cols)
    hdu.header["IMAGEW"] = int(width)
    hdu.header["IMAGEH"] = int(height)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


# --------------------------------------------------------------------------------------------
# solve-field
# --------------------------------------------------------------------------------------------


def solve_field_available(exe="solve-field"):
    """True when the ``solve-field`` executable is on PATH."""
    return shutil.which(exe) is not None


def backend_config_text(index_dir=DEFAULT_INDEX_DIR, index_files=None, inparallel=False):
    """Text of an astrometry-engine config: ``add_path`` + either ``autoindex`` or explicit files.

    Raises
    ------
    ConfigError
        When the directory holds no ``index-*.fits`` / a listed file does not exist.
    """
    index_dir = Path(index_dir)
    lines = [f"add_path {index_dir}"]
    if inparallel:
        lines.append("inparallel")
    if index_files:
        for f in index_files:
            p = Path(f) if Path(f).is_absolute() else index_dir / f
            if not p.exists():
                raise ConfigError(f"astrometry index file not found: {p}")
            lines.append(f"index {p}")
    else:
        if not any(index_dir.glob("index-*.fits")):
            raise ConfigError(f"no astrometry.net index files (index-*.fits) in {index_dir}")
        lines.append("autoindex")
    return "\n".join(lines) + "\n"


def hints_from_header(header, ra_key="RA", dec_key="DEC"):
    """Pointing hint (deg) from header keywords; RA as deg or 'hh mm ss', Dec as deg or 'dd mm ss'.

    Returns
    -------
    (float, float) or (None, None)
    """
    ra, dec = header.get(ra_key), header.get(dec_key)
    if ra is None or dec is None:
        return None, None
    try:
        return _angle(ra, hours=True), _angle(dec, hours=False)
    except ValueError:
        return None, None


def _angle(value, hours):
    if isinstance(value, (int, float)):
        return float(value)
    parts = [p for p in re.split(r"[\s:hdms]+", str(value).strip()) if p]
    if len(parts) == 1:
        return float(parts[0])
    sign = -1.0 if parts[0].startswith("-") else 1.0
    d, m, s = (abs(float(parts[0])), float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0)
    val = sign * (d + m / 60 + s / 3600)
    return val * 15.0 if hours else val


def _load(source, header, mask):
    """Image, header and ignore-mask from a path (calibrated MEF or plain FITS) or an array."""
    if isinstance(source, (str, Path)):
        cal = read_calibrated(source)
        hdr = cal.primary.copy()
        hdr.update({k: v for k, v in cal.sci_header.items() if k not in ("XTENSION", "PCOUNT", "GCOUNT")})
        ignore = ~np.isfinite(cal.sci)
        if cal.mask is not None:
            ignore |= (cal.mask & (MASK_BAD | MASK_CR | MASK_SATURATED)) > 0
        if mask is not None:
            ignore |= np.asarray(mask, bool)
        return cal.sci, hdr, ignore, str(source)
    image = np.asarray(source, dtype=np.float32)
    if image.ndim != 2:
        raise FrameError("<array>", f"image is {image.ndim}-D, expected 2-D")
    ignore = ~np.isfinite(image)
    if mask is not None:
        ignore |= np.asarray(mask, bool)
    return image, (header or fits.Header()), ignore, "<array>"


def _run_solve_field(xy_path, width, height, workdir, cfg_path, scale_low, scale_high, ra, dec, radius,
                     timeout_s, tweak_order, exe):
    """One solve-field call; returns (solved, wcs_path, corr_path, output text)."""
    stem = Path(xy_path).stem
    cmd = [exe, str(xy_path), "--width", str(width), "--height", str(height),
           "--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX",
           "--no-plots", "--overwrite", "--cpulimit", str(int(max(1, timeout_s))),
           "--dir", str(workdir), "--temp-dir", str(workdir), "--backend-config", str(cfg_path),
           "--scale-units", "arcsecperpix", "--scale-low", f"{scale_low:.6f}", "--scale-high", f"{scale_high:.6f}",
           "--corr", f"{stem}.corr", "--wcs", f"{stem}.wcs", "--crpix-center"]
    cmd += ["--tweak-order", str(tweak_order)] if tweak_order > 0 else ["--no-tweak"]
    if ra is not None and dec is not None:
        cmd += ["--ra", f"{ra:.6f}", "--dec", f"{dec:.6f}", "--radius", f"{radius:.4f}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 15, cwd=workdir)
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        return False, None, None, f"solve-field timed out after {timeout_s + 15:.0f} s"
    wcs_path, corr_path = Path(workdir) / f"{stem}.wcs", Path(workdir) / f"{stem}.corr"
    return wcs_path.exists(), wcs_path, corr_path, out


def _residuals(corr_path, wcs):
    """(n matched, RMS px, RMS arcsec) from a .corr file, using the final (tweaked) WCS."""
    if corr_path is None or not Path(corr_path).exists():
        return 0, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        corr = fits.getdata(corr_path, 1)
    if len(corr) == 0:
        return 0, math.nan, math.nan
    # Project the index stars through the final WCS and compare with the detected positions.
    ix, iy = wcs.all_world2pix(corr["index_ra"], corr["index_dec"], 1)
    d_px = np.hypot(corr["field_x"] - ix, corr["field_y"] - iy)
    scale = _pixscale(wcs)
    rms_px = float(np.sqrt(np.mean(d_px**2)))
    return len(corr), rms_px, rms_px * scale


def _pixscale(wcs):
    """Pixel scale (arcsec/px) from the WCS linear part."""
    return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0)


def _read_wcs(wcs_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FITSFixedWarning, AstropyUserWarning, VerifyWarning))
        header = fits.getheader(wcs_path)
        return WCS(header, relax=True)


def solve_field(source, out_wcs_path=None, *, header=None, mask=None, scale_low, scale_high,
                ra_hint=None, dec_hint=None, radius_deg=2.0, index_dir=DEFAULT_INDEX_DIR, index_files=None,
                timeout_s=30.0, ladder=DEFAULT_LADDER, tweak_order=2, fwhm_px=3.0, nsigma=5.0,
                max_sources=300, min_sources=8, exe="solve-field", keep_dir=None):
    """Plate-solve one frame with astrometry.net.

    Parameters
    ----------
    source : str, Path or ndarray
        A calibrated MEF (SCI used; MASK bits 1/2/4 ignored in detection), a plain FITS image,
        or a 2-D array (then ``header`` may give its header; it is not needed).
    out_wcs_path : str or Path, optional
        Write the solved WCS here (header-only FITS, atomically).
    header : astropy.io.fits.Header, optional
        Header for an array ``source``.
    mask : ndarray of bool, optional
        Extra pixels to ignore in detection.
    scale_low, scale_high : float
        Plate-scale bounds (arcsec/px), e.g. the instrument's plate scale -+ 5 %.
    ra_hint, dec_hint : float, optional
        Pointing hint (deg). Without it the first ladder steps that need a hint are skipped.
    radius_deg : float
        Search radius around the hint (deg).
    index_dir : str or Path
        Directory of index files (``add_path`` in the backend config).
    index_files : list of str, optional
        Use only these index files (names within ``index_dir`` or absolute paths); default
        ``autoindex`` (all files in the directory).
    timeout_s : float
        CPU limit per ladder step (s); the wall-clock limit is this + 15 s.
    ladder : sequence of dict
        Retry ladder, see :data:`DEFAULT_LADDER`.
    tweak_order : int
        SIP polynomial order fitted by solve-field (0 = pure TAN).
    fwhm_px, nsigma, max_sources, min_sources
        Source detection (see :func:`detect_sources`); fewer than ``min_sources`` sources gives
        status 'error' without calling solve-field.
    exe : str
        solve-field executable.
    keep_dir : str or Path, optional
        Keep solve-field's working files here (debugging); default a temporary directory.

    Returns
    -------
    SolveResult

    Raises
    ------
    ConfigError
        solve-field missing or no index files (a set-up problem, not a frame problem).
    FrameError
        Unreadable frame (callers looping over a night catch it; :func:`solve_frames` does).
    """
    t0 = time.perf_counter()
    if not solve_field_available(exe):
        raise ConfigError(f"'{exe}' not found on PATH: install Debian package astrometry.net")
    if not (0 < scale_low < scale_high):
        raise ConfigError(f"scale bounds must satisfy 0 < scale_low < scale_high (got {scale_low}, {scale_high})")
    cfg_text = backend_config_text(index_dir, index_files)
    image, hdr, ignore, name = _load(source, header, mask)
    ny, nx = image.shape
    src = detect_sources(image, ignore, fwhm_px=fwhm_px, nsigma=nsigma, max_sources=max_sources)
    result = SolveResult(path=name, status="unsolved", n_sources=len(src))
    if len(src) < min_sources:
        result.status = "error"
        result.message = f"only {len(src)} sources detected (< {min_sources})"
        result.elapsed_s = time.perf_counter() - t0
        return result
    tmp = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="bs_solve_"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        cfg = tmp / "backend.cfg"
        cfg.write_text(cfg_text)
        xy = tmp / "frame.xyls"
        write_xylist(xy, src["x"], src["y"], src["flux"], nx, ny)
        has_hint = ra_hint is not None and dec_hint is not None
        for k, step in enumerate(ladder):
            if step.get("hint", True) and not has_hint:
                continue
            f = float(step.get("scale_widen", 1.0))
            lo, hi = scale_low / f, scale_high * f
            ra, dec = (ra_hint, dec_hint) if step.get("hint", True) else (None, None)
            radius = min(radius_deg * float(step.get("radius_mult", 1.0)), 180.0)
            ok, wcs_path, corr_path, out = _run_solve_field(xy, nx, ny, tmp, cfg, lo, hi, ra, dec, radius,
                                                            timeout_s, tweak_order, exe)
            result.attempts.append({"step": k, "scale_low": lo, "scale_high": hi, "hint": ra is not None,
                                    "radius_deg": radius if ra is not None else None, "solved": ok})
            if not ok:
                log.info("%s: ladder step %d unsolved", name, k)
                result.message = _last_lines(out)
                continue
            wcs = _read_wcs(wcs_path)
            result.status, result.wcs, result.attempt = "solved", wcs, k
            result.n_matched, result.rms_px, result.rms_arcsec = _residuals(corr_path, wcs)
            result.pixscale_arcsec = _pixscale(wcs)
            c = wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
            result.ra_center, result.dec_center = float(c[0]), float(c[1])
            cd = wcs.pixel_scale_matrix
            result.rotation_deg = float(np.degrees(np.arctan2(cd[0, 1], cd[1, 1])))
            result.message = ""
            if out_wcs_path is not None:
                write_wcs(wcs, out_wcs_path, result)
            break
    finally:
        if not keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    result.elapsed_s = time.perf_counter() - t0
    return result


def _last_lines(text, n=3):
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[:300]


def _wcs_cards(wcs, result=None):
    """WCS header cards (with SIP when present) plus our provenance keywords."""
    hdr = wcs.to_header(relax=True)
    for key in ("DATE-OBS", "MJD-OBS", "DATEREF", "MJDREF", "MJDREFI", "MJDREFF"):
        hdr.remove(key, ignore_missing=True, remove_all=True)
    if result is not None:
        method = getattr(result, "method", "solve-field") or "solve-field"
        hdr["WCSSOLVE"] = ({"follow": "bandersnake follow (catalogue match + TAN-SIP fit)",
                            "reference": "astrometry.net solve-field (night reference)"}.get(
                               method, "astrometry.net solve-field"), "plate solver")
        if getattr(result, "n_catalog", 0):
            hdr["WCSNCAT"] = (int(result.n_catalog), "catalogue (Tycho-2/user) stars matched")
            if np.isfinite(result.cat_rms_arcsec):
                hdr["WCSCRMS"] = (round(result.cat_rms_arcsec, 4), "[arcsec] RMS residual, catalogue stars")
        hdr["WCSATTEM"] = (int(result.attempt), "retry-ladder step that solved (0 = first)")
        hdr["WCSNSRC"] = (int(result.n_sources), "sources given to solve-field")
        hdr["WCSNMAT"] = (int(result.n_matched), "sources matched to index stars")
        if np.isfinite(result.rms_arcsec):
            hdr["WCSRMS"] = (round(result.rms_arcsec, 4), "[arcsec] RMS match residual")
            hdr["WCSRMSPX"] = (round(result.rms_px, 4), "[px] RMS match residual")
    return hdr


def write_wcs(wcs, path, result=None):
    """Write a header-only FITS holding ``wcs`` (and provenance from ``result``), atomically."""
    write_fits(fits.PrimaryHDU(header=_wcs_cards(wcs, result)), path)


def read_wcs(path):
    """Read a WCS written by :func:`write_wcs` (or any FITS header with a celestial WCS)."""
    return _read_wcs(path)


def strip_wcs(header):
    """Remove every WCS keyword (any earlier solution, SIP terms included) from ``header`` in place."""
    for key in [k for k in header.keys() if _WCS_KEY.match(k)]:
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def apply_wcs_to_calibrated(cal_path, wcs, result=None, out_path=None, extra=None):
    """Write ``wcs`` into the calibrated product's primary, SCI, ERR and MASK headers (atomic).

    Any earlier WCS (e.g. PinPoint's in the raw header) is removed first, so the file never
    mixes two solutions.

    Parameters
    ----------
    cal_path : str or Path
    wcs : astropy.wcs.WCS or str or Path
        The solution, or the path of a header-only WCS file.
    result : SolveResult, optional
        Adds WCSNMAT / WCSRMS provenance cards.
    out_path : str or Path, optional
        Default rewrites ``cal_path``.
    extra : dict, optional
        More primary-header cards ``{key: (value, comment)}`` written in the same pass.

    Raises
    ------
    FrameError
        Unreadable product.
    """
    if isinstance(wcs, (str, Path)):
        wcs = _read_wcs(wcs)
    cards = _wcs_cards(wcs, result)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (AstropyUserWarning, VerifyWarning))
            with fits.open(cal_path, memmap=False) as hdul:
                hdul = fits.HDUList([h.copy() for h in hdul])
    except FileNotFoundError:
        raise FrameError(cal_path, "file not found") from None
    except Exception as err:
        raise FrameError(cal_path, f"unreadable calibrated frame ({type(err).__name__}: {err})") from None
    for i, hdu in enumerate(hdul):
        if i == 0 or (hdu.is_image and hdu.header.get("NAXIS", 0) == 2):
            strip_wcs(hdu.header)
            hdu.header.update(cards)
    for key, value in (extra or {}).items():
        hdul[0].header[key] = value
    write_fits(hdul, out_path or cal_path)


def solve_frames(paths, out_dir, *, scale_low, scale_high, ra_hint=None, dec_hint=None, radius_deg=2.0,
                 follow=True, **kwargs):
    """Solve a night's frames one by one, each hinted by the previous solution.

    After a success the next frame is searched within ``radius_deg`` of the last solved centre
    with the scale range narrowed to +-5 % of the last pixel scale (but never outside the
    configured bounds widened by the ladder). A frame that cannot be read is recorded as
    status 'error' and the night goes on.

    Parameters
    ----------
    paths : list of str or Path
        Calibrated frames, in time order.
    out_dir : str or Path
        A ``<stem>.wcs`` file is written here for each solved frame.
    follow : bool
        Use the previous solution as the hint.
    **kwargs
        Passed to :func:`solve_field`.

    Returns
    -------
    list of SolveResult
    """
    results = []
    ra, dec, lo, hi = ra_hint, dec_hint, scale_low, scale_high
    for p in paths:
        # ASTEP names hold dots (2025-04-03_15.48.22_SCIENCE.fits): strip only the FITS suffixes.
        stem = re.sub(r"\.(fits?|fts)(\.(gz|fz))?$", "", Path(p).name, flags=re.I)
        try:
            res = solve_field(p, Path(out_dir) / f"{stem}.wcs", scale_low=lo, scale_high=hi, ra_hint=ra,
                              dec_hint=dec, radius_deg=radius_deg, **kwargs)
        except FrameError as err:
            res = SolveResult(path=str(p), status="error", message=err.reason)
        results.append(res)
        if res.solved and follow:
            ra, dec = res.ra_center, res.dec_center
            lo = max(scale_low, 0.95 * res.pixscale_arcsec)
            hi = min(scale_high, 1.05 * res.pixscale_arcsec)
            if lo >= hi:
                lo, hi = scale_low, scale_high
    return results


def astrometry_summary(results):
    """Per-night astrometry table: one row per frame, night-level figures in ``meta``.

    Parameters
    ----------
    results : list of SolveResult

    Returns
    -------
    astropy.table.Table
        Columns ``file``, ``status``, ``attempt``, ``n_sources``, ``n_matched``, ``rms_px`` (px),
        ``rms_arcsec`` (arcsec), ``pixscale`` (arcsec/px), ``ra_center``, ``dec_center`` (deg),
        ``rotation`` (deg), ``elapsed`` (s), ``message``. ``meta`` holds ``n_frames``,
        ``n_solved``, ``solved_fraction``, ``median_rms_arcsec``, ``median_rms_px``.
    """
    rows = [(r.path, r.status, r.attempt, r.n_sources, r.n_matched, r.rms_px, r.rms_arcsec, r.pixscale_arcsec,
             r.ra_center, r.dec_center, r.rotation_deg, r.elapsed_s, r.message) for r in results]
    names = ("file", "status", "attempt", "n_sources", "n_matched", "rms_px", "rms_arcsec", "pixscale",
             "ra_center", "dec_center", "rotation", "elapsed", "message")
    dtypes = ("U512", "U8", "i4", "i4", "i4", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "U300")
    tab = Table(rows=rows if rows else None, names=names, dtype=dtypes)
    units = {"rms_px": "pix", "rms_arcsec": "arcsec", "pixscale": "arcsec / pix", "ra_center": "deg",
             "dec_center": "deg", "rotation": "deg", "elapsed": "s"}
    for col, unit in units.items():
        tab[col].unit = unit
    solved = tab["status"] == "solved" if len(tab) else np.zeros(0, bool)
    n = len(tab)
    tab.meta["n_frames"] = n
    tab.meta["n_solved"] = int(solved.sum())
    tab.meta["solved_fraction"] = float(solved.sum() / n) if n else 0.0
    tab.meta["median_rms_arcsec"] = float(np.median(tab["rms_arcsec"][solved])) if solved.any() else math.nan
    tab.meta["median_rms_px"] = float(np.median(tab["rms_px"][solved])) if solved.any() else math.nan
    return tab


def write_astrometry_summary(table, path):
    """Write the summary table as ECSV, atomically."""
    with atomic_path(path) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
