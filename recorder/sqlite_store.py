"""The embedded store: one SQLite file in WAL mode.

WAL lets `flux traces` read while the sidecar's writer thread writes, and with
``synchronous=NORMAL`` a commit survives a crash of the process (not of the
machine) without an fsync per batch. Routing fields are real columns so they
can be indexed; ``attrs`` and ``payload`` are msgpack blobs, ``payload`` kept
byte-for-byte as the sealer produced it together with its ``key_id``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from recorder.abc import PayloadSealer
from recorder.model import HTTP_INBOUND, Event, ExecutionSummary, SealedEvent, StoredEvent
from recorder.sqlite_schema import SCHEMA, SCHEMA_VERSION
from recorder.store import (
    EVENTS_IMPORTED,
    AmbiguousTraceId,
    PlainSealer,
    SchemaVersionError,
    StoreError,
    StoreNotFound,
    TraceNotFound,
    associated_data,
    event_associated,
    normalize_prefix,
    open_payload,
    pack,
    summarize,
    unpack,
)

log = logging.getLogger(__name__)

_BUSY_TIMEOUT_S: Final = 5.0
_FETCH: Final = 256

_EVENT_COLS: Final = (
    "id, seq, trace_id, span_id, parent_span_id, kind, conn_id, start_ns, duration_ns, "
    "error, fingerprint, attrs, payload, key_id"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events (trace_id, seq, span_id, parent_span_id, kind, conn_id, start_ns, "
    "duration_ns, error, fingerprint, attrs, payload, key_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# `IS ?` so one statement serves both a trace id and NULL (the unattributed sequence).
_MAX_SEQ: Final = "SELECT max(seq) FROM events WHERE trace_id IS ?"
# An imported event already here: its identity is its associated data plus its sealed blob.
_PRESENT: Final = (
    "SELECT 1 FROM events WHERE trace_id IS ? AND span_id = ? AND kind = ? AND start_ns = ? "
    "AND payload = ?"
)
# The root candidate with the lower (not-inbound, start) rank wins; see ExecutionDelta.
_BETTER_ROOT: Final = (
    f"(excluded.root_kind IS NOT '{HTTP_INBOUND}', excluded.root_start_ns) "
    f"< (root_kind IS NOT '{HTTP_INBOUND}', root_start_ns)"
)
_UPSERT_EXECUTION: Final = f"""
INSERT INTO executions (trace_id, start_ns, end_ns, events, queries, calls, errors,
                        root_kind, root_start_ns, method, path, status)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (trace_id) DO UPDATE SET
    start_ns = min(start_ns, excluded.start_ns),
    end_ns = max(end_ns, excluded.end_ns),
    events = events + excluded.events,
    queries = queries + excluded.queries,
    calls = calls + excluded.calls,
    errors = errors + excluded.errors,
    root_kind = CASE WHEN {_BETTER_ROOT} THEN excluded.root_kind ELSE root_kind END,
    root_start_ns = CASE WHEN {_BETTER_ROOT} THEN excluded.root_start_ns ELSE root_start_ns END,
    method = CASE WHEN {_BETTER_ROOT} THEN excluded.method ELSE method END,
    path = CASE WHEN {_BETTER_ROOT} THEN excluded.path ELSE path END,
    status = CASE WHEN {_BETTER_ROOT} THEN excluded.status ELSE status END
"""
_UPSERT_COUNTER: Final = (
    "INSERT INTO counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_EXECUTION_COLS: Final = (
    "trace_id, start_ns, end_ns, events, queries, calls, errors, root_kind, method, path, status"
)


class SQLiteStore:
    """The embedded store. One instance, one connection, one thread at a time.

    ``check_same_thread=False`` is only for callers that hop threads (e.g. a
    thread pool serving the admin API); they must still not use it concurrently.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        sealer: PayloadSealer | None = None,
        check_same_thread: bool = True,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._sealer: PayloadSealer = sealer or PlainSealer()
        self._conn = self._open(check_same_thread)
        try:
            self._check_schema()
        except BaseException:
            self._conn.close()
            raise

    # -- opening -----------------------------------------------------------------

    def _open(self, check_same_thread: bool) -> sqlite3.Connection:
        if self.readonly and not self.path.exists():
            raise StoreNotFound(f"no flux store at {self.path}")
        # The umask is process-wide; narrowing it briefly can only make a file some
        # other thread creates meanwhile more private, never less. It covers the
        # -wal/-shm siblings SQLite creates, which hold the same data as the db.
        old_umask = os.umask(0o077)
        try:
            target = self.path.absolute().as_uri() + "?mode=ro"
            if not self.readonly:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Create the file ourselves so it is 0600 from its first byte.
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
                target = self.path.absolute().as_uri()
            conn = sqlite3.connect(
                target,
                uri=True,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=check_same_thread,
            )
            try:
                if not self.readonly:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        log.warning("%s: WAL unavailable (journal_mode=%s)", self.path, mode)
                    conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise SchemaVersionError(f"{self.path} is not a flux store: {exc}") from exc
        finally:
            os.umask(old_umask)
        return conn

    def _check_schema(self) -> None:
        conn = self._conn
        try:
            # IMMEDIATE: two sidecars opening a fresh file at once must not both create tables.
            conn.execute("BEGIN" if self.readonly else "BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise SchemaVersionError(f"{self.path} is not a flux store: {exc}") from exc
        try:
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has store schema v{version}, newer than this flux "
                    f"understands (v{SCHEMA_VERSION}); upgrade flux to read it"
                )
            if version == 0 and tables:
                raise SchemaVersionError(f"{self.path} is a SQLite file but not a flux store")
            if version == 0:
                if self.readonly:
                    raise StoreNotFound(f"the flux store at {self.path} is not initialized yet")
                # executescript would COMMIT our IMMEDIATE transaction first; run statements
                # one by one so creation stays atomic.
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    # -- writing -----------------------------------------------------------------

    def write_batch(self, events: Sequence[Event], counters: Mapping[str, int]) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        increments = [(name, value) for name, value in counters.items() if value]
        if not events and not increments:
            return
        # Encode before taking the write lock: the lock is held only for SQLite work.
        sealed = self._sealer.seal_batch(
            [event.payload for event in events], [event_associated(event) for event in events]
        )
        self._append(events, sealed, increments)

    def write_sealed(self, events: Sequence[SealedEvent]) -> int:
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        if not events:
            return 0
        plain = [s.event for s in events]
        return self._append(plain, [(s.blob, s.key_id) for s in events], [], skip_present=True)

    def _append(
        self,
        events: Sequence[Event],
        sealed: Sequence[tuple[bytes, str | None]],
        increments: list[tuple[str, int]],
        *,
        skip_present: bool = False,
    ) -> int:
        attrs = [pack(event.attrs) for event in events]
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            next_seq: dict[str | None, int] = {}
            rows = []
            added: list[Event] = []
            seen: set[tuple[str | None, str, str, int, bytes]] = set()
            for event, attr_blob, (blob, key_id) in zip(events, attrs, sealed, strict=True):
                trace = event.trace_id
                if skip_present:
                    identity = (trace, event.span_id, event.kind, event.start_ns, blob)
                    if identity in seen or conn.execute(_PRESENT, identity).fetchone():
                        continue
                    seen.add(identity)
                added.append(event)
                seq = next_seq.get(trace)
                if seq is None:
                    seq = conn.execute(_MAX_SEQ, (trace,)).fetchone()[0] or 0
                seq += 1
                next_seq[trace] = seq
                rows.append(
                    (
                        trace, seq, event.span_id, event.parent_span_id, event.kind,
                        event.conn_id, event.start_ns, event.duration_ns, int(event.error),
                        event.fingerprint, attr_blob, blob, key_id,
                    )
                )  # fmt: skip
            conn.executemany(_INSERT_EVENT, rows)
            conn.executemany(
                _UPSERT_EXECUTION,
                [
                    (
                        d.trace_id, d.start_ns, d.end_ns, d.events, d.queries, d.calls,
                        d.errors, d.root_kind, d.root_start_ns, d.method, d.path, d.status,
                    )
                    for d in summarize(added).values()
                ],
            )  # fmt: skip
            if skip_present and rows:
                increments = [*increments, (EVENTS_IMPORTED, len(rows))]
            conn.executemany(_UPSERT_COUNTER, increments)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        return len(rows)

    # -- reading -----------------------------------------------------------------

    def list_executions(
        self, *, limit: int = 50, since_ns: int | None = None, errors_only: bool = False
    ) -> list[ExecutionSummary]:
        where, params = [], []
        if since_ns is not None:
            where.append("start_ns >= ?")
            params.append(since_ns)
        if errors_only:
            where.append("errors > 0")  # literal, so the partial index applies
        sql = f"SELECT {_EXECUTION_COLS} FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_ns DESC, trace_id DESC LIMIT ?"
        params.append(limit)
        return [
            ExecutionSummary(
                trace_id=r[0], start_ns=r[1], end_ns=r[2], events=r[3], queries=r[4],
                calls=r[5], errors=r[6], root_kind=r[7], method=r[8], path=r[9], status=r[10],
            )
            for r in self._conn.execute(sql, params)
        ]  # fmt: skip

    def resolve_trace_id(self, prefix: str) -> str:
        conn = self._conn
        exact = prefix.strip()
        if conn.execute("SELECT 1 FROM executions WHERE trace_id = ?", (exact,)).fetchone():
            return exact
        wanted = normalize_prefix(prefix)
        # A range scan on the primary key; U+10FFFF sorts after every character an id holds.
        rows = conn.execute(
            "SELECT trace_id FROM executions WHERE trace_id >= ? AND trace_id < ? "
            "ORDER BY trace_id LIMIT 11",
            (wanted, wanted + "\U0010ffff"),
        ).fetchall()
        if not rows:
            raise TraceNotFound(prefix)
        if len(rows) > 1:
            raise AmbiguousTraceId(prefix, [r[0] for r in rows])
        return str(rows[0][0])

    def get_trace(self, trace_id_or_prefix: str) -> list[StoredEvent]:
        trace_id = self.resolve_trace_id(trace_id_or_prefix)
        return list(self.events(trace_id=trace_id))

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
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("kind = ?", kind),
            ("start_ns >= ?", since_ns),
            ("start_ns < ?", until_ns),
            ("trace_id = ?", trace_id),
            ("fingerprint = ?", fingerprint),
            ("id > ?", after_id),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {_EVENT_COLS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # Within one trace seq order is write order; the (trace_id, seq) index yields it.
        sql += " ORDER BY seq" if trace_id is not None else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return self._iter_rows(sql, params)

    def _iter_rows(self, sql: str, params: list[Any]) -> Iterator[StoredEvent]:
        cursor = self._conn.execute(sql, params)
        try:
            while rows := cursor.fetchmany(_FETCH):
                for row in rows:
                    yield self._decode(row)
        finally:
            cursor.close()  # an abandoned iterator must not pin a WAL snapshot

    def _decode(self, row: Any) -> StoredEvent:
        attrs = unpack(row[11])
        aad = associated_data(trace_id=row[2], span_id=row[3], kind=row[5], start_ns=row[7])
        return StoredEvent(
            id=row[0],
            seq=row[1],
            event=Event(
                trace_id=row[2], span_id=row[3], parent_span_id=row[4], kind=row[5],
                conn_id=row[6], start_ns=row[7], duration_ns=row[8], error=bool(row[9]),
                fingerprint=row[10], attrs=attrs if isinstance(attrs, dict) else {},
                payload=open_payload(self._sealer, row[12], row[13], aad),
            ),
        )  # fmt: skip

    def counters(self) -> dict[str, int]:
        return {name: value for name, value in self._conn.execute("SELECT * FROM counters")}

    def stats(self) -> dict[str, int]:
        conn = self._conn
        conn.execute("BEGIN")  # one snapshot, so the numbers agree with each other
        try:
            result = {
                "events": conn.execute("SELECT count(*) FROM events").fetchone()[0],
                "executions": conn.execute("SELECT count(*) FROM executions").fetchone()[0],
                "unattributed": conn.execute(
                    "SELECT count(*) FROM events WHERE trace_id IS NULL"
                ).fetchone()[0],
            }
            result.update(self.counters())
        finally:
            conn.execute("COMMIT")
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                size += os.stat(f"{self.path}{suffix}").st_size
        result["file_bytes"] = size
        return result

    def integrity_check(self) -> str:
        """``ok`` or SQLite's description of the damage."""
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self._conn.close()  # sqlite3 makes a second close a no-op

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
