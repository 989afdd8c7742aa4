"""What every store implementation shares: errors, counter names, the msgpack
encoding, trace-id prefix rules, the per-batch executions summary, and
``open_store`` which picks an implementation from a data dir or URL.

Keeping the executions arithmetic here (not in SQL only) means the SQLite and
PostgreSQL stores index executions by exactly the same rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack

from recorder.abc import PayloadSealer, Store
from recorder.model import HTTP_INBOUND, HTTP_OUTBOUND, PG_QUERY, UDP, Event

DB_FILENAME: Final = "flux.db"

# Counter names, persisted in the store and shown by `flux stats`.
EVENTS_RECORDED: Final = "events.recorded"
EVENTS_DROPPED: Final = "events.dropped"
EVENTS_FAILED: Final = "events.failed"
EVENTS_IMPORTED: Final = "events.imported"
BYTES_STORED: Final = "bytes.stored"

MIN_PREFIX: Final = 6
MAX_CANDIDATES: Final = 10  # ambiguous prefixes list at most this many ids
# Payloads that could not be opened come back as one-key dicts, so a trace still shows.
SEALED_MARKER: Final = "__sealed__"  # -> the key id(s) it is sealed to; no private key for them
UNREADABLE_MARKER: Final = "__unreadable__"  # -> why it failed: damaged, moved, not a payload

_HEX = re.compile(r"[0-9a-f]+")
_CALL_KINDS: Final = frozenset({HTTP_OUTBOUND, UDP})


class StoreError(Exception):
    """Base class of everything a store raises on purpose."""


class SchemaVersionError(StoreError):
    """The file was written by a different (usually newer) flux, or is not a flux store."""


class StoreNotFound(StoreError, FileNotFoundError):
    """A read-only open of a store that does not exist (or was never initialized)."""


class PayloadError(StoreError):
    """A stored payload that cannot be opened: altered, moved to another event, or garbage.

    Never accompanied by partial plaintext. The encryption layer's errors derive from it,
    so stores can catch it without importing the cryptography package.
    """


class InvalidTraceId(StoreError, ValueError):
    """Not a hex trace id, or a prefix too short to look up."""


class TraceNotFound(StoreError, LookupError):
    def __init__(self, trace_id: str) -> None:
        super().__init__(f"no execution with trace id {trace_id!r}")
        self.trace_id = trace_id


class AmbiguousTraceId(StoreError, LookupError):
    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        shown = ", ".join(candidates[:MAX_CANDIDATES])
        more = " ..." if len(candidates) > MAX_CANDIDATES else ""
        super().__init__(
            f"trace id prefix {prefix!r} is ambiguous; candidates: {shown}{more} (type more digits)"
        )
        self.prefix = prefix
        self.candidates = list(candidates[:MAX_CANDIDATES])


def pack(value: Any) -> bytes:
    # use_bin_type keeps bytes and str distinct on the way back (raw protocol bytes stay bytes).
    return msgpack.packb(value, use_bin_type=True)


def unpack(blob: bytes) -> Any:
    # strict_map_key=False: payloads may hold int-keyed maps (e.g. parameter positions).
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def associated_data(*, trace_id: str | None, span_id: str, kind: str, start_ns: int) -> bytes:
    """The bytes that bind a payload to its event; the store passes them on write and read.

    Only fields fixed before sealing and kept verbatim by the store and by bundle
    export/import: ``seq`` and row ids are assigned later or renumbered on import.
    So an event's trace id must never change once it is written. Newline separated
    (no field can hold one) rather than msgpack: this runs for every event recorded.
    """
    return f"flux.event.v1\n{trace_id or '-'}\n{span_id}\n{kind}\n{start_ns}".encode()


def event_associated(event: Event) -> bytes:
    return associated_data(
        trace_id=event.trace_id, span_id=event.span_id, kind=event.kind, start_ns=event.start_ns
    )


def open_payload(
    sealer: PayloadSealer, blob: bytes, key_id: str | None, aad: bytes
) -> dict[str, Any]:
    """``sealer.unseal``, with a damaged payload turned into ``{UNREADABLE_MARKER: why}``.

    One altered row must not make a whole trace unreadable; the marker says why, and
    ``payload_problem`` lets a caller that needs the values (replay) refuse it.
    """
    try:
        return sealer.unseal(blob, key_id, aad)
    except PayloadError as exc:
        return {UNREADABLE_MARKER: str(exc)}


def payload_problem(payload: Mapping[str, Any]) -> str | None:
    """Why a payload read from a store holds no values, or None when it does."""
    if len(payload) == 1:
        if SEALED_MARKER in payload:
            return f"sealed to key id {payload[SEALED_MARKER]}; no matching private key given"
        if UNREADABLE_MARKER in payload:
            return f"unreadable: {payload[UNREADABLE_MARKER]}"
    return None


class PlainSealer:
    """The default sealer: plain msgpack, no key. Blobs sealed by a key it does not
    have come back as ``{"__sealed__": key_id}`` so a trace still displays."""

    def seal_batch(
        self, payloads: Sequence[Mapping[str, Any]], associated: Sequence[bytes] = ()
    ) -> list[tuple[bytes, str | None]]:
        return [(pack(p), None) for p in payloads]  # nothing to bind: plaintext

    def unseal(self, blob: bytes, key_id: str | None, associated: bytes = b"") -> dict[str, Any]:
        if key_id is not None:
            return {SEALED_MARKER: key_id}
        try:
            value = unpack(blob)
        except Exception as exc:  # msgpack raises several unrelated types
            raise PayloadError(f"plain payload is not msgpack: {exc}") from None
        return value if isinstance(value, dict) else {"value": value}


def normalize_prefix(text: str) -> str:
    """Lowercase hex prefix of a trace id, or InvalidTraceId."""
    prefix = text.strip().lower()
    if not _HEX.fullmatch(prefix) or len(prefix) > 32:
        raise InvalidTraceId(f"{text!r} is not a trace id (up to 32 hex digits)")
    if len(prefix) < MIN_PREFIX:
        raise InvalidTraceId(f"trace id prefix {text!r} is too short (at least {MIN_PREFIX})")
    return prefix


@dataclass(slots=True)
class ExecutionDelta:
    """What one batch adds to one execution's summary.

    The root is the best candidate seen so far, ranked by (not an inbound
    request, start time): the earliest ``http.inbound`` wins, and a trace
    without one (a background job) shows its earliest event's kind.
    """

    trace_id: str
    start_ns: int
    end_ns: int
    events: int = 0
    queries: int = 0
    calls: int = 0
    errors: int = 0
    root_kind: str | None = None
    root_start_ns: int = 0
    method: str | None = None
    path: str | None = None
    status: int | None = None

    def add(self, event: Event) -> None:
        self.start_ns = min(self.start_ns, event.start_ns)
        self.end_ns = max(self.end_ns, event.start_ns + event.duration_ns)
        self.events += 1
        if event.kind == PG_QUERY:
            self.queries += 1
        elif event.kind in _CALL_KINDS:
            self.calls += 1
        if event.error:
            self.errors += 1
        if self.root_kind is None or root_rank(event.kind, event.start_ns) < root_rank(
            self.root_kind, self.root_start_ns
        ):
            self._set_root(event)

    def _set_root(self, event: Event) -> None:
        self.root_kind = event.kind
        self.root_start_ns = event.start_ns
        if event.kind == HTTP_INBOUND:
            attrs = event.attrs
            method, path, status = attrs.get("method"), attrs.get("path"), attrs.get("status")
            self.method = method if isinstance(method, str) else None
            self.path = path if isinstance(path, str) else None
            # bool is an int subclass; a True status is a producer bug, not a status.
            ok = isinstance(status, int) and not isinstance(status, bool)
            self.status = status if ok else None
        else:
            self.method = self.path = None
            self.status = None


def root_rank(kind: str | None, start_ns: int) -> tuple[int, int]:
    return (0 if kind == HTTP_INBOUND else 1, start_ns)


def summarize(events: Iterable[Event]) -> dict[str, ExecutionDelta]:
    """Per-trace deltas for a batch, in first-seen order; unattributed events are skipped."""
    deltas: dict[str, ExecutionDelta] = {}
    for event in events:
        if event.trace_id is None:
            continue
        delta = deltas.get(event.trace_id)
        if delta is None:
            end = event.start_ns + event.duration_ns
            delta = deltas[event.trace_id] = ExecutionDelta(event.trace_id, event.start_ns, end)
        delta.add(event)
    return deltas


def open_store(
    location: str | os.PathLike[str],
    *,
    readonly: bool = False,
    sealer: PayloadSealer | None = None,
) -> Store:
    """A store from ``FLUX_STORE``/``--store`` or ``FLUX_DATA_DIR``/``--data-dir``.

    A directory (existing or not) means the embedded store ``<dir>/flux.db``; a
    path ending in ``.db`` is used as the file itself; ``sqlite:///path`` too.
    ``sealer`` seals payloads on write and opens them on read (default: plain).
    """
    text = os.fspath(location)
    if text.startswith(("postgresql://", "postgres://")):
        raise StoreError("the PostgreSQL store is not available in this build")
    if text.startswith("sqlite://"):
        text = text.removeprefix("sqlite://")
    path = Path(text)
    if path.suffix != ".db" or path.is_dir():
        path = path / DB_FILENAME
    from recorder.sqlite_store import SQLiteStore  # here: avoids an import cycle

    return SQLiteStore(path, readonly=readonly, sealer=sealer)
