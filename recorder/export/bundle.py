"""Bundles: executions carried from one store to another with their payloads still sealed.

A bundle is a stream of msgpack objects::

    header   {"format": "flux.bundle", "version": 1, "created_ns", "generator",
              "source_store", "key_ids", "traces", "events"}
    event    one map per event, in the source store's write order per execution, with
             the context replaying it needs (``recorder.export.context``)
    trailer  {"end": "flux.bundle", "events": n, "sha256": digest of every byte before it}

Payloads are copied as the store keeps them: the sealed blob and its key id, never
opened, so exporting and importing need no private key. A blob still opens after
import because what its GCM tag binds it to (trace, span, kind, start: see
``store.associated_data``) is copied verbatim; ``seq`` and row ids are renumbered.

The digest detects damage (truncation, a flipped byte), not forgery: anyone can
recompute it. The sealed payloads carry their own authentication; the plaintext
fields are as trustworthy as the file's origin. Import checks the whole file before
it writes anything, so a damaged bundle leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any, Final

import msgpack

from recorder.abc import Store
from recorder.model import KINDS, Event, SealedEvent, StoredEvent
from recorder.store import StoreError, pack

FORMAT: Final = "flux.bundle"
VERSION: Final = 1
IMPORT_BATCH: Final = 500
_SPOOL_BYTES: Final = 32 << 20  # events wait in memory up to this, then in a temp file
_BLOB: Final = "__bundle_blob__"
_KEY_ID: Final = "__bundle_key_id__"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_EVENT_FIELDS: Final = frozenset(
    {"kind", "trace_id", "span_id", "parent_span_id", "conn_id", "start_ns", "duration_ns",
     "error", "fingerprint", "attrs", "seq", "payload", "key_id"}
)  # fmt: skip


class BundleError(StoreError):
    """A file that is not a bundle this flux imports: foreign, damaged, truncated, newer."""


class KeepSealed:
    """The ``PayloadSealer`` to read a store for export with: each payload comes back as
    the store keeps it (blob and key id), neither opened nor checked. It never writes."""

    def seal_batch(
        self, payloads: Sequence[Mapping[str, Any]], associated: Sequence[bytes] = ()
    ) -> list[tuple[bytes, str | None]]:
        raise StoreError("a store opened for export does not record")

    def unseal(self, blob: bytes, key_id: str | None, associated: bytes = b"") -> dict[str, Any]:
        return {_BLOB: blob, _KEY_ID: key_id}


def as_sealed(stored: StoredEvent) -> SealedEvent:
    """The event read through :class:`KeepSealed`, with its payload as stored."""
    payload = stored.event.payload
    blob, key_id = payload.get(_BLOB), payload.get(_KEY_ID)
    if not isinstance(blob, bytes) or len(payload) != 2:
        raise ValueError("read the store with KeepSealed to export its payloads as stored")
    return SealedEvent(event=replace(stored.event, payload={}), blob=blob, key_id=key_id)


def key_ids_of(key_id: str | None) -> list[str]:
    """The recipient key ids a stored key id names (comma separated for several)."""
    return [k for k in (key_id or "").split(",") if k]


def _record(sealed: SealedEvent, seq: int) -> dict[str, Any]:
    e = sealed.event
    return {
        "kind": e.kind, "trace_id": e.trace_id, "span_id": e.span_id,
        "parent_span_id": e.parent_span_id, "conn_id": e.conn_id, "start_ns": e.start_ns,
        "duration_ns": e.duration_ns, "error": e.error, "fingerprint": e.fingerprint,
        "attrs": e.attrs, "seq": seq, "payload": sealed.blob, "key_id": sealed.key_id,
    }  # fmt: skip


@dataclass(slots=True)
class BundleSummary:
    traces: list[str]
    events: int
    key_ids: list[str]
    bytes: int


class BundleWriter:
    """Collects executions, then writes the bundle with :meth:`finish`.

    Events are spooled (in memory, then a temporary file) because the header, written
    first, names the key ids and counts only known at the end. An event shared by two
    executions' contexts is written once.
    """

    def __init__(self, *, source_store: str, created_ns: int, generator: str = "flux") -> None:
        self.source_store = source_store
        self.created_ns = created_ns
        self.generator = generator
        self.traces: list[str] = []
        self.events = 0
        self.key_ids: set[str] = set()
        self._ids: set[int] = set()
        # Closed by finish(); a writer abandoned on error leaves it to the garbage collector.
        self._body: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115

    def add_execution(self, trace_id: str, events: Iterable[StoredEvent]) -> None:
        self.traces.append(trace_id)
        for stored in events:
            if stored.id in self._ids:
                continue
            self._ids.add(stored.id)
            sealed = as_sealed(stored)
            self.key_ids.update(key_ids_of(sealed.key_id))
            self._body.write(pack(_record(sealed, stored.seq)))
            self.events += 1

    def finish(self, out: IO[bytes]) -> BundleSummary:
        header = pack(
            {
                "format": FORMAT, "version": VERSION, "created_ns": self.created_ns,
                "generator": self.generator, "source_store": self.source_store,
                "key_ids": sorted(self.key_ids), "traces": self.traces, "events": self.events,
            }
        )  # fmt: skip
        digest = hashlib.sha256(header)
        out.write(header)
        written = len(header)
        self._body.seek(0)
        while chunk := self._body.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
        trailer = pack({"end": FORMAT, "events": self.events, "sha256": digest.digest()})
        out.write(trailer)
        self._body.close()
        return BundleSummary(
            list(self.traces), self.events, sorted(self.key_ids), written + len(trailer)
        )


@dataclass(frozen=True, slots=True)
class Bundle:
    version: int
    created_ns: int
    generator: str
    source_store: str
    key_ids: list[str]
    traces: list[str]
    events: list[SealedEvent] = field(default_factory=list)


def read_bundle(data: bytes) -> Bundle:
    """The bundle in ``data``, checked whole (structure, every event, the digest), or
    ``BundleError`` saying what is wrong."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data) + 1)
    unpacker.feed(data)
    header = _next(unpacker, 0)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BundleError("not a flux bundle (no flux.bundle header)")
    version = header.get("version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"damaged bundle: bad format version {version!r}")
    if version > VERSION:
        raise BundleError(
            f"bundle format v{version} is newer than this flux reads (v{VERSION}); upgrade flux"
        )
    bundle = Bundle(
        version=version,
        created_ns=_field(header, "created_ns", int),
        generator=str(header.get("generator", "")),
        source_store=_field(header, "source_store", str),
        key_ids=[str(k) for k in _field(header, "key_ids", list)],
        traces=[str(t) for t in _field(header, "traces", list)],
    )
    while True:
        offset = unpacker.tell()
        record = _next(unpacker, offset)
        if isinstance(record, dict) and record.get("end") == FORMAT:
            _check_trailer(record, data, offset, unpacker.tell(), bundle, header)
            return bundle
        try:
            bundle.events.append(_event(record))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"damaged bundle: event at byte {offset}: {exc}") from None


def _next(unpacker: msgpack.Unpacker, offset: int) -> Any:
    try:
        return next(unpacker)
    except StopIteration:
        what = "empty file" if offset == 0 else f"it ends at byte {offset} before its trailer"
        raise BundleError(f"truncated bundle: {what}") from None
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise BundleError(f"damaged bundle: not msgpack at byte {offset} ({exc})") from None


def _field(record: Mapping[str, Any], name: str, kind: type) -> Any:
    value = record.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BundleError(f"damaged bundle: header field {name!r} is missing or not a {kind}")
    return value


def _check_trailer(
    trailer: dict[str, Any],
    data: bytes,
    start: int,
    end: int,
    bundle: Bundle,
    header: dict[str, Any],
) -> None:
    if hashlib.sha256(data[:start]).digest() != trailer.get("sha256"):
        raise BundleError("damaged bundle: its checksum does not match its contents")
    if end != len(data):
        raise BundleError(f"damaged bundle: {len(data) - end} unexpected bytes after its end")
    count = len(bundle.events)
    if trailer.get("events") != count or header.get("events") != count:
        raise BundleError(f"damaged bundle: {count} events, but the bundle says otherwise")


def _optional_str(record: Mapping[str, Any], name: str) -> str | None:
    value = record[name]
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


def _int(record: Mapping[str, Any], name: str) -> int:
    value = record[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{name} is not a non-negative integer")
    return value


def _event(record: Any) -> SealedEvent:
    if not isinstance(record, dict) or set(record) != _EVENT_FIELDS:
        raise ValueError("not an event record")
    kind, trace_id, span_id = record["kind"], record["trace_id"], record["span_id"]
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    if trace_id is not None and not (isinstance(trace_id, str) and _TRACE_ID.fullmatch(trace_id)):
        raise ValueError("bad trace id")
    # Newlines separate the fields of the associated data; none may hold one.
    if not isinstance(span_id, str) or not span_id or "\n" in span_id:
        raise ValueError("bad span id")
    if not isinstance(record["error"], bool) or not isinstance(record["attrs"], dict):
        raise TypeError("bad error flag or attrs")
    blob = record["payload"]
    if not isinstance(blob, bytes):
        raise TypeError("payload is not bytes")
    _int(record, "seq")
    event = Event(
        kind=kind,
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=_optional_str(record, "parent_span_id"),
        conn_id=_optional_str(record, "conn_id"),
        start_ns=_int(record, "start_ns"),
        duration_ns=_int(record, "duration_ns"),
        error=record["error"],
        fingerprint=_optional_str(record, "fingerprint"),
        attrs=record["attrs"],
    )
    return SealedEvent(event=event, blob=blob, key_id=_optional_str(record, "key_id"))


@dataclass(slots=True)
class ImportSummary:
    events: int
    added: int

    @property
    def skipped(self) -> int:
        return self.events - self.added


def import_bundle(
    store: Store, bundle: Bundle, *, progress: Callable[[int], None] | None = None
) -> ImportSummary:
    """Writes a checked bundle's events, in batches; those already present are skipped.

    ``progress`` is told how many events each batch handled."""
    added = 0
    events = bundle.events
    for at in range(0, len(events), IMPORT_BATCH):
        batch = events[at : at + IMPORT_BATCH]
        added += store.write_sealed(batch)
        if progress is not None:
            progress(len(batch))
    return ImportSummary(len(events), added)
