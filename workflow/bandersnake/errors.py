"""Exceptions that carry the file and the problem, so users never see a bare numpy traceback."""


class BandersnakeError(Exception):
    """Base class for all errors raised on purpose by bandersnake."""


class FrameError(BandersnakeError):
    """A raw or calibrated frame cannot be used.

    Parameters
    ----------
    path : str
        The offending file.
    reason : str
        Short human-readable reason (recorded in the inventory / quality tables).
    """

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(BandersnakeError):
    """The configuration is inconsistent (names the file and key)."""


class CalibrationMissing(BandersnakeError):
    """No usable calibration was found along the documented fallback chain."""
