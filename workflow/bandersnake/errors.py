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


class AnalysisNotPossible(BandersnakeError):
    """The data of a (night, target) do not allow a light-curve analysis (not a software error).

    Raised for *data* conditions only (the target unusable in every frame of every aperture, too
    few frames left after rejection, an empty photometry table); the analysis stages catch it and
    publish products marked ``ANASTAT = 'FAILED'`` with the reason, so the night is still
    published. Anything else (a bug, an unexpected exception) still fails the job.

    Parameters
    ----------
    reason : str
        Why, in a few words (recorded as ``ANAWHY`` and in the summaries).
    target, night : str, optional
        Named in the message.
    """

    def __init__(self, reason, target="", night=""):
        self.reason = str(reason)
        self.target = str(target or "")
        self.night = str(night or "")
        where = "/".join(p for p in (self.night, self.target) if p)
        super().__init__(f"{where + ': ' if where else ''}analysis not possible: {self.reason}")
