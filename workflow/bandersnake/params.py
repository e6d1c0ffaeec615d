"""Rule parameters that Snakemake records by a short digest instead of their whole text.

Snakemake stores the ``repr`` of every parameter to decide reruns and prints the old and new
values in the job's ``reason:`` line when they change; a night's 1000 raw paths or a whole
instrument file made that line tens of kilobytes. :class:`Digested` (a dict) and
:class:`DigestedList` behave as their base type, and their ``repr`` is a label plus a SHA-256 of
the content, so a change is still detected (and reruns the job) but reads as one short line. They
pickle as a plain ``dict``/``list``, so rule scripts receive ordinary values.
"""

import hashlib
import json


def content_digest(value):
    """SHA-256 (hex, 16 characters) of a JSON-able value, key order ignored."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Digested(dict):
    """A dict whose ``repr`` is ``<label sha256:...>``."""

    def __init__(self, value=(), label="dict"):
        super().__init__(value)
        self.label = label

    def __repr__(self):
        return f"<{self.label} sha256:{content_digest(dict(self))}>"

    def __reduce__(self):
        return dict, (dict(self),)


class DigestedList(list):
    """A list whose ``repr`` is ``<N label sha256:...>``."""

    def __init__(self, value=(), label="items"):
        super().__init__(value)
        self.label = label

    def __repr__(self):
        return f"<{len(self)} {self.label} sha256:{content_digest(list(self))}>"

    def __reduce__(self):
        return list, (list(self),)
