"""Send Python logging of a rule script to the rule's ``log:`` file."""

import contextlib
import logging
import sys
import traceback
from pathlib import Path

from .errors import BandersnakeError

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to(path, level=logging.INFO):
    """Route the root logger (and warnings) to ``path`` for the duration of the block.

    Any exception raised in the block is logged before being re-raised, so the rule's log
    always says why a job failed. Errors raised on purpose (:class:`BandersnakeError`) are
    logged as one clear line; anything else with its traceback.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    try:
        yield logging.getLogger("bandersnake")
    except BandersnakeError as err:
        logging.getLogger("bandersnake").error("%s", err)
        print(f"bandersnake error: {err}", file=sys.stderr)
        raise
    except Exception:
        logging.getLogger("bandersnake").error("unexpected failure:\n%s", traceback.format_exc())
        raise
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
