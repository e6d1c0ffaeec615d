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
        self.design = np.ascontiguousarray(design, float)
        n, self.n_lin = len(self.t), self.design.shape[1]
        self.dof = n - self.n_lin
        j = 1 if kernel == "exp" else 2
        self._u = np.empty((n, j))
        self._v = np.ones((n, j))
        if kernel == "matern32":
            self._v[:, 1] = self.t
        self._a = np.empty(n)
        self._d = np.empty(n)
        self._w = np.empty((n, j))
        self._rhs = np.empty((n, self.n_lin + 1))
        self._rhs[:, 0] = y
        self._drv = _driver()

    def _whiten_into(self, tr, h, tau, out):
        """Whitened [y, diag(tr) X] into ``out`` (N, n+1); ln|K0|, or None if not positive definite."""
        sigma2 = (h * self.err_ref) ** 2
        if self.kernel == "exp":
            c = np.array([1.0 / tau])
            self._u.fill(sigma2)
        else:
            w = math.sqrt(3.0) / tau
            c = np.array([w, w])
            np.multiply(self.t, w * sigma2, out=self._u[:, 0])
            self._u[:, 0] += sigma2
            self._u[:, 1] = -sigma2 * w
        np.add(self.err2, sigma2, out=self._a)
        try:
            d, wmat = self._drv.factor(self.t, c, self._a, self._u, self._v, self._d, self._w)
        except self._drv.LinAlgError:
            return None
        if not d.min() > 0:
            return None
        np.multiply(self.design, tr[:, None], out=self._rhs[:, 1:])
        self._drv.solve_lower(self.t, c, self._u, wmat, self._rhs, out)
        sq = np.sqrt(d)
        out /= sq[:, None]
        return 2.0 * float(np.sum(np.log(sq)))

    def loglike(self, tr, h, tau):
        """ln L of transit rows ``tr`` (W, N) with GP parameters ``h``, ``tau`` (W); -inf where impossible.

        Returns
        -------
        (ndarray, ndarray, ndarray, ndarray)
            ln L (W), baseline coefficients (W, n), F0^-1 (W, n, n), chi0^2 / (N - n) (W).
        """
        tr = np.atleast_2d(tr)
        nw = len(tr)
        z = np.empty((nw, len(self.t), self.n_lin + 1))
        logdet_k = np.zeros(nw)
        good = np.ones(nw, bool)
        for j in range(nw):
            ld = self._whiten_into(tr[j], float(h[j]), float(tau[j]), z[j]) if np.all(np.isfinite(tr[j])) else None
            if ld is None:
                good[j] = False
                z[j] = 0.0
                z[j, :, 1:] = np.eye(len(self.t), self.n_lin)   # any well-posed system; discarded below
            else:
                logdet_k[j] = ld
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
