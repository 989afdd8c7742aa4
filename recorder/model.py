"""The record model every part of flux-proxy agrees on.

An *execution* is everything seen for one W3C trace id. It is made of ordered
*events*. Each event has two halves:

- ``attrs``: plaintext fields that routing, indexing and display need (kinds,
  timings, statement fingerprint, command tags, SQLSTATE, method, path...).
- ``payload``: everything that may hold user data or secrets (SQL with
  literals, bind values, rows, bodies, header values, row images). The store
  keeps it as an opaque blob so that it can be sealed before it reaches disk.

Both halves hold only msgpack-able values (str, int, float, bool, None, bytes,
lists and dicts of those).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Final

# Event kinds. Strings, not an enum, because they are stored and typed by users.
PG_QUERY: Final = "pg.query"
PG_SESSION: Final = "pg.session"
HTTP_INBOUND: Final = "http.inbound"
HTTP_OUTBOUND: Final = "http.outbound"
UDP: Final = "udp"
MUTATION: Final = "mutation"

KINDS: Final = frozenset({PG_QUERY, PG_SESSION, HTTP_INBOUND, HTTP_OUTBOUND, UDP, MUTATION})


# Ids need uniqueness, not secrecy. A seeded PRNG avoids a getrandom() system call per
# event, which also released the GIL and made the recorder's threads convoy.
_ids = random.Random(os.urandom(32))


def new_span_id() -> str:
    """A random 64-bit span id, 16 lowercase hex digits, never all zeros."""
    return f"{_ids.getrandbits(64) or 1:016x}"


def new_trace_id() -> str:
    """A random 128-bit trace id, 32 lowercase hex digits, never all zeros."""
    return f"{_ids.getrandbits(128) or 1:032x}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One thing the sidecar saw. ``trace_id`` None means unattributed (kept, never dropped)."""

    kind: str
    trace_id: str | None
    span_id: str
    parent_span_id: str | None
    conn_id: str | None
    start_ns: int  # wall clock, nanoseconds since the Unix epoch
    duration_ns: int
    error: bool = False
    fingerprint: str | None = None  # statement fingerprint or call target, for matching
    attrs: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    """An event as read back from a store: its id and its sequence number within its trace."""

    id: int
    seq: int
    event: Event


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedEvent:
    """An event whose payload is already sealed, moved between stores as it is (bundle
    import): ``blob`` and ``key_id`` exactly as the first store kept them, ``event.payload``
    unused. The blob still opens because its associated data is made of fields an event
    keeps verbatim (trace, span, kind, start)."""

    event: Event
    blob: bytes
    key_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionSummary:
    """One row of ``flux traces``."""

    trace_id: str
    start_ns: int
    end_ns: int
    events: int
    queries: int
    calls: int
    errors: int
    root_kind: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns
