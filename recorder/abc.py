"""The interfaces every store and payload sealer implements.

Protocols rather than base classes: the embedded SQLite store, the PostgreSQL
store and test fakes share no code through inheritance, only this shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from recorder.model import Event, ExecutionSummary, SealedEvent, StoredEvent


@runtime_checkable
class Store(Protocol):
    """Where execution records live. One instance is used by one thread at a time."""

    def write_batch(self, events: Sequence[Event], counters: Mapping[str, int]) -> None:
        """Append ``events`` and add ``counters`` (increments) in one transaction.

        Each event gets the next ``seq`` within its trace in the order given
        (unattributed events share one sequence of their own), and the
        executions index is brought up to date in the same transaction, so a
        reader never sees events without their summary or the reverse.
        """
        ...

    def write_sealed(self, events: Sequence[SealedEvent]) -> int:
        """Append events whose payloads are sealed already (an import), blob and key id
        byte for byte: no sealer is involved, so it needs no key at all.

        Like ``write_batch`` (new ``seq`` numbers, the executions index, one transaction),
        except that an event the store holds already (same trace, span, kind, start and
        payload blob) is skipped, so writing the same events twice adds them once.
        Returns how many were added; they are counted in ``events.imported``.
        """
        ...

    def list_executions(
        self, *, limit: int = 50, since_ns: int | None = None, errors_only: bool = False
    ) -> list[ExecutionSummary]:
        """Executions newest first (by start), optionally only those started at/after ``since_ns``
        or having at least one error event."""
        ...

    def resolve_trace_id(self, prefix: str) -> str:
        """The full trace id for a full id or a unique prefix of at least 6 hex digits.

        Raises ``TraceNotFound``, ``AmbiguousTraceId`` or ``InvalidTraceId``.
        """
        ...

    def get_trace(self, trace_id_or_prefix: str) -> list[StoredEvent]:
        """Every event of one execution in ``seq`` order (prefix resolved as above)."""
        ...

    def events(
        self,
        *,
        kind: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        trace_id: str | None = None,
        fingerprint: str | None = None,
        limit: int | None = None,
        after_id: int | None = None,
    ) -> Iterator[StoredEvent]:
        """Stored events in write order, filtered; ``since_ns`` inclusive, ``until_ns`` exclusive,
        both on ``start_ns``. ``trace_id`` is an exact id (no prefix resolution).
        ``after_id``: only events stored after the one with that id (ids grow in write
        order), so a reader following the store asks for what came after the last it saw."""
        ...

    def counters(self) -> dict[str, int]:
        """The persisted named counters (``events.recorded``, ``events.dropped``...)."""
        ...

    def stats(self) -> dict[str, int]:
        """``events``, ``executions``, ``unattributed``, ``file_bytes`` plus every counter."""
        ...

    def close(self) -> None: ...


class PayloadSealer(Protocol):
    """Turns event payloads into the blobs a store keeps, and back.

    The default keeps plain msgpack with ``key_id`` None. The encryption layer
    implements this to seal payloads with a fresh data key per batch (one
    ``seal_batch`` call per ``write_batch``), which is why sealing is batch
    shaped and why every blob travels with the id of the key that sealed it.
    """

    def seal_batch(
        self, payloads: Sequence[Mapping[str, Any]], associated: Sequence[bytes] = ()
    ) -> list[tuple[bytes, str | None]]:
        """One ``(blob, key_id)`` per payload, in order.

        ``associated`` is empty or one ``store.associated_data(...)`` per payload: bytes
        that are not stored in the blob but must be given again to open it, so a blob
        moved to another event does not open.
        """
        ...

    def unseal(self, blob: bytes, key_id: str | None, associated: bytes = b"") -> dict[str, Any]:
        """The payload dict for a stored blob. Must not raise for a key it cannot open:
        display without the private key still has to work; return a marker instead.
        A blob that is damaged or opened for the wrong event raises ``PayloadError``."""
        ...
