"""Reading the photometry products (ARCHITECTURE.md) into plain arrays, and the analysis errors.

Everything that touches a photometry or centroid file goes through here, so a missing or broken
product always gives one clear message naming the file and the rule that makes it.
"""

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import BandersnakeError
from ..flags import (FLAG_BAD_PIXEL, FLAG_CORRUPT, FLAG_LOST, FLAG_NAMES, FLAG_NAN, FLAG_OFF_CHIP,  # noqa: F401
                     FLAG_REACQUIRED, FLAG_SATURATED, FRAME_BITS, UNUSABLE_BITS)


_APER_RE = re.compile(r"photometry_aper(\d+)\.fits$")


class ProductError(BandersnakeError):
    """A workflow product (table) exists but cannot be used.

    Parameters
    ----------
    path : str or Path
        The offending file.
    reason : str
        What is wrong with it.
    """

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class EmptyTableError(ProductError):
    """A photometry table with no rows (no science frame was measured): a data condition."""


class MissingProductError(ProductError, FileNotFoundError):
    """An input product does not exist; the message says which rule makes it."""

    def __init__(self, path, rule="photometry"):
        super().__init__(path, f"missing; run the {rule} rule first (snakemake {path})")


@dataclass
class Photometry:
    """One aperture's photometry table as arrays (n_frames rows, n_stars columns; star 0 = target).

    Attributes
    ----------
    path : str
    radius : float
        Aperture radius (px), header ``APERRAD``.
    sky_rin, sky_rout : float
        Sky annulus radii (px), NaN when the header lacks them.
    bjd : ndarray (n_frames,)
        ``BJD_TDB`` at mid-exposure (d).
    jd_utc : ndarray (n_frames,)
        ``JD_UTC`` at mid-exposure (d); NaN when absent.
    files : list of str
    airmass, exptime : ndarray (n_frames,)
        Airmass of each frame and exposure time (s); NaN when absent.
    flux, flux_err : ndarray (n_frames, n_stars)
        Sky-subtracted flux and its 1-sigma error (e-).
    sky, sky_err : ndarray (n_frames, n_stars)
        Sky level per pixel and its error (e-/px).
    xc, yc : ndarray (n_frames, n_stars)
        Aperture centres (px, 0-based).
    flag : ndarray (n_frames, n_stars) of int
        Photometry flag bits.
    header : astropy.io.fits.Header
    """

    path: str
    radius: float
    sky_rin: float
    sky_rout: float
    bjd: np.ndarray
    jd_utc: np.ndarray
    files: list
    airmass: np.ndarray
    exptime: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    sky: np.ndarray
    sky_err: np.ndarray
    xc: np.ndarray
    yc: np.ndarray
    flag: np.ndarray
    header: fits.Header = field(repr=False, default_factory=fits.Header)

    @property
    def n_frames(self):
        return self.flux.shape[0]

    @property
    def n_stars(self):
        return self.flux.shape[1]


def aperture_from_name(path):
    """Aperture radius N (int, px) from a ``photometry_aper<N>.fits`` name, or None."""
    match = _APER_RE.search(Path(path).name)
    return int(match.group(1)) if match else None


def _open_table(path, extname, rule):
    path = Path(path)
    if not path.exists():
        raise MissingProductError(path, rule)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (AstropyUserWarning, VerifyWarning))
            with fits.open(path, memmap=False) as hdul:
                if extname in hdul:
                    hdu = hdul[extname]
                elif len(hdul) > 1 and isinstance(hdul[1], fits.BinTableHDU):
                    hdu = hdul[1]
                else:
                    raise ProductError(path, f"no {extname} table extension")
                data = hdu.data
                header = hdu.header.copy()
                columns = {name: np.array(data[name]) for name in data.names} if data is not None else {}
    except BandersnakeError:
        raise
    except Exception as err:  # astropy raises OSError/TypeError/ValueError on corrupt files
        raise ProductError(path, f"unreadable FITS table ({type(err).__name__}: {err})") from None
    return columns, header


def _column(columns, name, path, n_rows, required=True, ndim=1):
    if name not in columns:
        if required:
            raise ProductError(path, f"column {name!r} missing")
        return None
    values = columns[name]
    if values.dtype.kind in "SU":
        return [str(v).strip() for v in values]
    values = np.asarray(values, dtype=float)
    if ndim == 2 and values.ndim == 1:
        values = values[:, None]  # a single-star table stores scalars
    if values.shape[0] != n_rows or values.ndim != ndim:
        raise ProductError(path, f"column {name!r} has shape {values.shape}, expected {ndim}-D with {n_rows} rows")
    return values


def read_photometry(path):
    """Read one ``photometry_aper<N>.fits`` table.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Photometry

    Raises
    ------
    MissingProductError
        When the file does not exist (names the photometry rule).
    ProductError
        When it is unreadable, lacks a column or has inconsistent shapes.
    """
    columns, header = _open_table(path, "PHOTOMETRY", "photometry")
    if "BJD_TDB" not in columns:
        raise ProductError(path, "column 'BJD_TDB' missing")
    n = len(columns["BJD_TDB"])
    if n == 0:
        raise EmptyTableError(path, "table has no rows")
    radius = header.get("APERRAD", aperture_from_name(path))
    if radius is None:
        raise ProductError(path, "no APERRAD header keyword and no aper<N> in the name")
    get = lambda name, **kw: _column(columns, name, path, n, **kw)  # noqa: E731
    flux = get("flux", ndim=2)
    nan_frame = np.full(n, np.nan)
    nan_star = np.full(flux.shape, np.nan)
    flag = get("flag", ndim=2, required=False)
    files = get("File", required=False)
    phot = Photometry(
        path=str(path), radius=float(radius),
        sky_rin=float(header.get("SKYRIN", np.nan)), sky_rout=float(header.get("SKYROUT", np.nan)),
        bjd=get("BJD_TDB"),
        jd_utc=_or(get("JD_UTC", required=False), nan_frame),
        files=files if files is not None else [""] * n,
        airmass=_or(get("airmass", required=False), nan_frame),
        exptime=_or(get("exptime", required=False), nan_frame),
        flux=flux,
        flux_err=get("flux_err", ndim=2),
        sky=_or(get("sky", ndim=2, required=False), nan_star),
        sky_err=_or(get("sky_err", ndim=2, required=False), nan_star),
        xc=_or(get("xc", ndim=2, required=False), nan_star),
        yc=_or(get("yc", ndim=2, required=False), nan_star),
        flag=(np.zeros(flux.shape, dtype=np.int64) if flag is None
              else np.nan_to_num(flag, nan=FLAG_CORRUPT).astype(np.int64)),
        header=header,
    )
    for name in ("flux_err", "sky", "sky_err", "xc", "yc"):
        if getattr(phot, name).shape != flux.shape:
            raise ProductError(path, f"column {name!r} has shape {getattr(phot, name).shape}, flux has {flux.shape}")
    return phot


def _or(value, default):
    return default if value is None else value


def read_centroids(path):
    """Read ``centroiding/centroids.fits`` (BinTable ``CENTROIDS``) as a dict of arrays.

    Per-star columns (``xc``, ``yc``, ``x_width``, ``y_width``, ...) are (n_frames, n_stars);
    per-frame columns (``BJD_TDB``, ``airmass``, ``exptime``) are (n_frames,).

    Raises
    ------
    MissingProductError
        When the file does not exist (names the centroiding rule).
    ProductError
        When it is unreadable or lacks ``BJD_TDB``.
    """
    columns, header = _open_table(path, "CENTROIDS", "centroiding")
    if "BJD_TDB" not in columns:
        raise ProductError(path, "column 'BJD_TDB' missing")
    out = {}
    for name, values in columns.items():
        if values.dtype.kind in "SU":
            out[name] = np.array([str(v).strip() for v in values])
        else:
            out[name] = np.asarray(values, dtype=float) if values.dtype.kind != "b" else values
    out["_header"] = header
    return out


def fill_frame_columns(phot, centroids):
    """Take ``airmass``/``exptime``/``JD_UTC`` from the centroid table where the photometry lacks them.

    Rows are matched on ``BJD_TDB`` (to 1e-7 d, i.e. 9 ms), so both tables need not hold the same
    frames in the same order. Modifies and returns ``phot``.
    """
    if centroids is None:
        return phot
    idx = match_rows(phot.bjd, centroids["BJD_TDB"])
    matched = idx >= 0
    idx = np.maximum(idx, 0)
    for attr, name in (("airmass", "airmass"), ("exptime", "exptime"), ("jd_utc", "JD_UTC")):
        ours = getattr(phot, attr)
        if name in centroids and np.ndim(centroids[name]) == 1:
            theirs = np.where(matched, np.asarray(centroids[name], dtype=float)[idx], np.nan)
            setattr(phot, attr, np.where(np.isfinite(ours), ours, theirs))
    return phot


def match_rows(bjd_from, bjd_to, tol=1e-7):
    """Index into ``bjd_to`` of each ``bjd_from`` time (-1 where none within ``tol`` d)."""
    bjd_to = np.asarray(bjd_to, dtype=float)
    order = np.argsort(bjd_to)
    pos = np.clip(np.searchsorted(bjd_to[order], bjd_from), 0, len(bjd_to) - 1)
    cand = [order[pos], order[np.clip(pos - 1, 0, len(bjd_to) - 1)]]
    best = np.where(np.abs(bjd_to[cand[0]] - bjd_from) <= np.abs(bjd_to[cand[1]] - bjd_from), cand[0], cand[1])
    return np.where(np.abs(bjd_to[best] - bjd_from) < tol, best, -1)


# Columns of precision_metrics.fits (written by precision, and empty by status for a failed night).
METRIC_COLUMNS = [
    # name, unit, description
    ("aperture_radius", "pix", "Aperture radius"),
    ("star_number", "", "Star index (0 = target)"),
    ("median_flux", "electron", "Median flux in the aperture over kept frames"),
    ("flux_rate", "electron/s", "Median flux / median exposure time"),
    ("sky_background", "electron/pix", "Median sky level per pixel"),
    ("sigma_precision", "", "Theoretical relative noise of the star alone (median over frames)"),
    ("sigma_photon", "", "Photon noise of the star (relative)"),
    ("sigma_sky", "", "Sky noise (relative)"),
    ("sigma_dark", "", "Dark-current noise (relative)"),
    ("sigma_read", "", "Read noise (relative)"),
    ("sigma_scintillation", "", "Scintillation (Osborn et al. 2015, per-frame airmass; relative)"),
    ("sigma_theory_diff", "", "Theoretical noise of the star's differential light curve (star + ensemble)"),
    ("sigma_obs_10min", "", "Observed precision: median 10-min rolling scatter of the star's light curve"),
    ("noise_ratio", "", "sigma_obs_10min / sigma_theory_diff"),
    ("diff_flux_std", "", "Standard deviation of the target's differential flux (kept frames)"),
    ("n_frames_used", "", "Frames kept after outlier removal"),
    ("is_comparison", "", "Member of the comparison ensemble"),
    ("comp_weight", "", "Normalised ensemble weight"),
    ("is_best_aperture", "", "Row belongs to the best aperture"),
]
