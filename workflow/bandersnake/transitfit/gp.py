"""Correlated (red) noise as a Gaussian process, with celerite2's O(N) solver (Foreman-Mackey et al. 2017).

The noise of a night is white noise ``s * err`` (the frames' errors times a scale ``s``) plus a
stationary Gaussian process of standard deviation ``s * h * err_ref`` (``err_ref`` the median frame
error, ``h`` the red-to-white ratio) and time scale ``tau``. Two kernels:

* ``matern32``: k(dt) = sigma^2 (1 + w |dt|) exp(-w |dt|), w = sqrt(3) / tau (Matern-3/2: smooth
  on time scales below tau), the usual choice for ground-based light curves (e.g. juliet, celerite);
* ``exp``: k(dt) = sigma^2 exp(-|dt| / tau) (Ornstein-Uhlenbeck: rough at every scale).

Both are written exactly in celerite's semiseparable form, K_ij = sum_k U_ik V_jk
exp(-c_k (t_i - t_j)) for i > j (for Matern-3/2: U_i = sigma^2 (1 + w t_i, -w), V_j = (1, t_j),
c = (w, w), times in units measured from the first frame), so celerite2's driver factorises
K = L D L^T in O(N) without the approximation of celerite2's ``Matern32Term``.

:func:`marginal_loglike` gives the log-likelihood of one night with the linear baseline
coefficients (flat prior) and the white scale ``s`` (prior 1/s, Jeffreys) integrated out
analytically: with K = s^2 K0, design A = diag(transit) X, F0 = A^T K0^-1 A, g0 = A^T K0^-1 y,
chi0^2 = y^T K0^-1 y - g0^T F0^-1 g0, the integral is
ln L = -1/2 ln|K0| - 1/2 ln|F0| - (N - n)/2 ln chi0^2 + const (n baseline terms). Only the
transit and the two GP parameters (h, tau) are left to the sampler.
"""

import math

import numpy as np

KERNELS = ("matern32", "exp")


def _driver():
    from celerite2 import driver

    return driver


def semiseparable(kernel, t, diag, sigma2, tau):
    """celerite matrices (c, a, U, V) of ``diag`` + the kernel (variance ``sigma2``, time scale ``tau``).

    Parameters
    ----------
    kernel : {"matern32", "exp"}
    t : ndarray
        Times (d), sorted, measured from the first frame (keeps w t of order span / tau).
    diag : ndarray
        White variance per point.
    sigma2, tau : float
        Kernel variance (relative flux^2) and time scale (d).
    """
    n = len(t)
    if kernel == "exp":
        return (np.array([1.0 / tau]), diag + sigma2, np.full((n, 1), sigma2), np.ones((n, 1)))
    if kernel == "matern32":
        w = math.sqrt(3.0) / tau
        u = np.empty((n, 2))
        u[:, 0] = sigma2 * (1.0 + w * t)
        u[:, 1] = -sigma2 * w
        v = np.empty((n, 2))
        v[:, 0] = 1.0
        v[:, 1] = t
        return np.array([w, w]), diag + sigma2, u, v
    raise ValueError(f"unknown GP kernel {kernel!r}; choose from {KERNELS}")


def dense_kernel(kernel, t, sigma2, tau):
    """The kernel as a dense matrix (for tests and predictions on small light curves)."""
    dt = np.abs(np.asarray(t)[:, None] - np.asarray(t)[None, :])
    if kernel == "exp":
        return sigma2 * np.exp(-dt / tau)
    w = math.sqrt(3.0) / tau
    return sigma2 * (1.0 + w * dt) * np.exp(-w * dt)


def whiten(kernel, t, diag, sigma2, tau, rhs):
    """(D^-1/2 L^-1 rhs, ln|K|) for K = diag + kernel; None if K is not positive definite.

    Parameters
    ----------
    rhs : ndarray
        (N, m) right-hand sides (C-contiguous).
    """
    drv = _driver()
    c, a, u, v = semiseparable(kernel, t, diag, sigma2, tau)
    try:
        d, w = drv.factor(t, c, a, u, v, a, v.copy())
    except drv.LinAlgError:
        return None
    if not np.all(d > 0):
        return None
    z = drv.solve_lower(t, c, u, w, rhs, np.empty_like(rhs))
    z /= np.sqrt(d)[:, None]
    return z, float(np.sum(np.log(d)))


def marginal_loglike(kernel, t, err2, err_ref, y, design, transit, h, tau):
    """Log-likelihood of one night, baseline coefficients and white scale marginalised (module docstring).

    Parameters
    ----------
    t : ndarray
        Times (d) from the first frame.
    err2 : ndarray
        Squared frame errors.
    err_ref : float
        Reference error (the median frame error): the GP's standard deviation is ``h * err_ref``
        (times the white scale).
    y : ndarray
        Flux.
    design : ndarray
        (N, n) baseline columns X.
    transit : ndarray
        Transit model (N).
    h, tau : float
        Red-to-white ratio and time scale (d).

    Returns
    -------
    (float, ndarray, ndarray, float) or None
        ln L, the baseline coefficients c, F0^-1 (their covariance is s^2 F0^-1) and chi0^2 / (N - n)
        (the conditional estimate of s^2); None if the covariance cannot be factorised.
    """
    n_lin = design.shape[1]
    rhs = np.empty((len(t), n_lin + 1))
    rhs[:, 0] = y
    rhs[:, 1:] = design * transit[:, None]
    out = whiten(kernel, t, err2, (h * err_ref) ** 2, tau, rhs)
    if out is None:
        return None
    z, logdet_k = out
    zy, za = z[:, 0], z[:, 1:]
    fisher = za.T @ za
    g = za.T @ zy
    sign, logdet_f = np.linalg.slogdet(fisher)
    if sign <= 0:
        return None
    c = np.linalg.solve(fisher, g)
    chi2 = max(float(zy @ zy - g @ c), 1e-300)
    dof = len(t) - n_lin
    ll = -0.5 * logdet_k - 0.5 * logdet_f - 0.5 * dof * math.log(chi2)
    return ll, c, np.linalg.inv(fisher), chi2 / dof


class NightGP:
    """The GP likelihood of one night for many walkers at once (emcee's vectorised calls).

    Same numbers as :func:`marginal_loglike` row by row (tested); buffers are allocated once, the
    factorisation and the triangular solve run in celerite2's C++ driver per walker, and the small
    normal equations of the baseline for all walkers together.

    Parameters
    ----------
    kernel : {"matern32", "exp"}
    t, err2, err_ref, y, design
        As :func:`marginal_loglike`.
    """

    def __init__(self, kernel, t, err2, err_ref, y, design):
        if kernel not in KERNELS:
            raise ValueError(f"unknown GP kernel {kernel!r}; choose from {KERNELS}")
        self.kernel = kernel
        self.t = np.ascontiguousarray(t, float)
        self.err2 = np.ascontiguousarray(err2, float)
        self.err_ref = float(err_ref)
        self.y = np.ascontiguousarray(y, float)
        self.design = np.ascontiguousarray(design, float)
        n, self.n_lin = len(self.t), self.design.shape[1]
        self.dof = n - self.n_lin
        self._j = 1 if kernel == "exp" else 2
        self._v = np.ones((n, self._j))
        if kernel == "matern32":
            self._v[:, 1] = self.t
        self._buf = {}
        self._drv = _driver()

    def _buffers(self, nw):
        """Work arrays for ``nw`` walkers (kept: emcee calls with the same counts again and again)."""
        if nw not in self._buf:
            n, j = len(self.t), self._j
            rhs = np.empty((nw, n, self.n_lin + 1))
            rhs[:, :, 0] = self.y
            self._buf[nw] = dict(u=np.empty((nw, n, j)), a=np.empty((nw, n)), d=np.empty((nw, n)),
                                 w=np.empty((nw, n, j)), c=np.empty((nw, j)), rhs=rhs,
                                 z=np.empty((nw, n, self.n_lin + 1)))
        return self._buf[nw]

    def _whiten(self, tr, h, tau):
        """Whitened [y, diag(tr) X] of every walker (W, N, n+1), ln|K0| (W) and the rows that could
        be factorised. The kernel's arrays for all walkers are built in array operations; only
        celerite2's factorisation and triangular solve (C++) run per walker."""
        nw = len(tr)
        b = self._buffers(nw)
        sigma2 = (np.asarray(h, float) * self.err_ref) ** 2
        tau = np.asarray(tau, float)
        if self.kernel == "exp":
            b["c"][:, 0] = 1.0 / tau
            b["u"][:, :, 0] = sigma2[:, None]
        else:
            w = math.sqrt(3.0) / tau
            b["c"][:, 0] = w
            b["c"][:, 1] = w
            np.multiply(self.t[None, :], (w * sigma2)[:, None], out=b["u"][:, :, 0])
            b["u"][:, :, 0] += sigma2[:, None]
            b["u"][:, :, 1] = -(sigma2 * w)[:, None]
        np.add(self.err2[None, :], sigma2[:, None], out=b["a"])
        good = np.isfinite(tr).all(axis=1)
        np.multiply(self.design[None, :, :], np.where(good[:, None], tr, 1.0)[:, :, None], out=b["rhs"][:, :, 1:])
        drv, t, v, z = self._drv, self.t, self._v, b["z"]
        for j in np.flatnonzero(good):
            try:
                drv.factor(t, b["c"][j], b["a"][j], b["u"][j], v, b["d"][j], b["w"][j])
            except drv.LinAlgError:
                good[j] = False
                continue
            drv.solve_lower(t, b["c"][j], b["u"][j], b["w"][j], b["rhs"][j], z[j])
        d = b["d"]
        good &= np.where(good, d.min(axis=1), 0.0) > 0
        sq = np.sqrt(np.where(good[:, None], d, 1.0))
        z /= sq[:, :, None]
        return z, 2.0 * np.log(sq).sum(axis=1), good

    def loglike(self, tr, h, tau):
        """ln L of transit rows ``tr`` (W, N) with GP parameters ``h``, ``tau`` (W); -inf where impossible.

        Returns
        -------
        (ndarray, ndarray, ndarray, ndarray)
            ln L (W), baseline coefficients (W, n), F0^-1 (W, n, n), chi0^2 / (N - n) (W).
        """
        tr = np.atleast_2d(tr)
        z, logdet_k, good = self._whiten(tr, h, tau)
        z[~good] = 0.0
        z[~good, :, 1:] = np.eye(len(self.t), self.n_lin)   # any well-posed system; discarded below
        zy, za = z[:, :, 0], z[:, :, 1:]
        zat = za.transpose(0, 2, 1)
        fisher = zat @ za
        g = (zat @ zy[:, :, None])[..., 0]
        sign, logdet_f = np.linalg.slogdet(fisher)
        good &= sign > 0
        fisher[~good] = np.eye(self.n_lin)
        finv = np.linalg.inv(fisher)
        c = (finv @ g[..., None])[..., 0]
        chi2 = np.maximum(np.einsum("wi,wi->w", zy, zy) - np.einsum("wi,wi->w", g, c), 1e-300)
        ll = -0.5 * logdet_k - 0.5 * np.where(good, logdet_f, 0.0) - 0.5 * self.dof * np.log(chi2)
        ll[~good] = -np.inf
        return ll, c, finv, chi2 / self.dof


def predict(kernel, t, err2, resid, sigma2, tau):
    """Mean of the GP component given residuals ``resid`` (K_gp K^-1 resid), for plots.

    celerite2's O(N) prediction (its Matern-3/2 term approximates the kernel with eps = 0.01; equal
    to the dense prediction to 1e-12 on a 300-point test, tested); nights of any length.
    """
    import celerite2
    from celerite2 import terms

    term = (terms.RealTerm(a=sigma2, c=1.0 / tau) if kernel == "exp"
            else terms.Matern32Term(sigma=math.sqrt(sigma2), rho=tau))
    gp = celerite2.GaussianProcess(term)
    gp.compute(np.asarray(t, float), diag=np.asarray(err2, float), quiet=True)
    return gp.predict(np.asarray(resid, float), return_cov=False, return_var=False)
