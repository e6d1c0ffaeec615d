"""Building blocks of the night simulator (:mod:`bandersnake.simulate` is the entry point).

* :mod:`.transit`  - limb-darkened transit light curve (quadratic law), circular orbit.
* :mod:`.site`     - site geometry with astropy: sun altitude, airmass, BJD_TDB (no downloads).
* :mod:`.detector` - true bias structure, dark-rate map, flat field and bad-pixel map.
* :mod:`.render`   - Moffat stars in stamps, cosmic-ray tracks, one raw frame in ADU.
* :mod:`.maxim`    - MaxIm DL-style headers, file names and (optionally gzipped) uint16 writes.
"""
