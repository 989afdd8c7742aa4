"""The two ways a protocol exchange goes wrong.

Kept apart because the proxy reacts differently: a ``RemoteProtocolError``
means the peer sent bytes that are not PostgreSQL protocol 3 (close or answer
with an ErrorResponse); a ``LocalProtocolError`` means our own code asked for
something the protocol cannot express (a bug to fix, never the peer's fault).
"""

from __future__ import annotations


class RemoteProtocolError(Exception):
    """The peer sent garbage: bad length, unknown type byte, malformed or oversized body."""


class LocalProtocolError(Exception):
    """We misused the API, e.g. asked to encode a value the wire format cannot carry."""
