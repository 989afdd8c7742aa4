"""The two ways a DNS codec call can fail.

They are kept apart (style rule 4) because the caller reacts differently: a
peer's garbage is logged and forwarded untouched, while our own misuse is a bug.
Both subclass ValueError so a caller that does not care can catch one type.
"""

from __future__ import annotations


class DNSDecodeError(ValueError):
    """The peer sent bytes that are not a well-formed DNS message."""


class DNSEncodeError(ValueError):
    """We asked to encode something that cannot be a valid DNS message."""
