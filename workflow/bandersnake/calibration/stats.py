"""Constants of the robust statistics shared by the combine kernels and the masters (no numba here)."""

#: sigma = MAD_TO_SIGMA x median absolute deviation for Gaussian noise: 1 / Phi^-1(3/4), as
#: ``astropy.stats.mad_std``.
MAD_TO_SIGMA = 1.482602218505602
