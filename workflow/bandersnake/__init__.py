"""bandersnake: raw nights from small survey telescopes to light curves and astrometry.

The package holds all numerical code; the Snakemake rules under ``rules/`` call it through thin
scripts in ``workflow/scripts/``.

Conventions used throughout
---------------------------
* Pixel positions are 0-based with the centre of the first pixel at (0, 0), as in numpy and
  photutils; ``x`` is the column and ``y`` the row, so an image is indexed ``data[y, x]``.
* Raw data are in ADU; calibrated data in electrons (e-); dark current in ADU/s (masters) or
  e-/s (summaries); exposure times in seconds.
* Times: ``JD_UTC`` and ``BJD_TDB`` are at mid-exposure.
"""

__version__ = "0.1.0"
