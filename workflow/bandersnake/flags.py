"""Quality flag bits of the centroid and photometry tables (ARCHITECTURE.md "Flag bits").

Set by the streaming kernel (:mod:`bandersnake.kernel`), read by the analysis and the night
summary: one definition for both sides.
"""

FLAG_LOST = 1            # tracking star lost in this frame (previous offset kept)
FLAG_OFF_CHIP = 2        # star (partly) off the chip
FLAG_SATURATED = 4       # saturated pixel in the stamp's component or the aperture
FLAG_BAD_PIXEL = 8       # bad pixel in the aperture
FLAG_NAN = 16            # NaN in the stamp, aperture or annulus
FLAG_CORRUPT = 32        # frame unreadable or corrupt (row kept with NaNs)
FLAG_REACQUIRED = 64     # re-acquisition jump recovered in this frame

# A measurement with one of these bits cannot be trusted for differential photometry.
UNUSABLE_BITS = FLAG_LOST | FLAG_OFF_CHIP | FLAG_SATURATED | FLAG_NAN | FLAG_CORRUPT
# Bits the kernel sets on every star of a frame (the frame's, not a star's).
FRAME_BITS = FLAG_LOST | FLAG_CORRUPT | FLAG_REACQUIRED
FLAG_NAMES = {FLAG_LOST: "tracking lost", FLAG_OFF_CHIP: "off chip", FLAG_SATURATED: "saturated",
              FLAG_BAD_PIXEL: "bad pixel", FLAG_NAN: "NaN", FLAG_CORRUPT: "corrupt frame",
              FLAG_REACQUIRED: "re-acquired"}
