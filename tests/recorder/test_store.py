"""SQLiteStore: round trips, seq, the executions index, prefixes, files and readers."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from recorder.abc import Store
from recorder.model import (
    HTTP_INBOUND,
    HTTP_OUTBOUND,
    MUTATION,
    PG_QUERY,
    UDP,
    Event,
    new_span_id,
    new_trace_id,
)
from recorder.sqlite_store import SCHEMA_VERSION, SQLiteStore
from recorder.store import (
    SEALED_MARKER,
    AmbiguousTraceId,
    InvalidTraceId,
    SchemaVersionError,
    StoreError,
    StoreNotFound,
    TraceNotFound,
    open_store,
    pack,
)


def ev(trace: str | None, kind: str = PG_QUERY, start: int = 1000, **kw: Any) -> Event:
    fields: dict[str, Any] = {
        "kind": kind,
        "trace_id": trace,
        "span_id": new_span_id(),
        "parent_span_id": None,
        "conn_id": "c1",
        "start_ns": start,
        "duration_ns": 10,
    }
    fields.update(kw)
    return Event(**fields)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "data" / "flux.db")
    yield s
    s.close()


def test_is_a_store(store: SQLiteStore) -> None:
    assert isinstance(store, Store)


def test_round_trip_every_field_type(store: SQLiteStore) -> None:
    trace = new_trace_id()
    original = Event(
        kind=PG_QUERY,
        trace_id=trace,
        span_id=new_span_id(),
        parent_span_id=new_span_id(),
        conn_id="pg-1",
        start_ns=1_700_000_000_123_456_789,
        duration_ns=2**40,
        error=True,
        fingerprint="select * from t where id = $1",
        attrs={"tags": ["SELECT 1"], "rows": 1, "ratio": 0.25, "ok": False, "none": None},
        payload={
            "raw": b"\x00\xffQ\x00\x00\x00\x05",
            "empty": b"",
            "nested": {"a": {"b": [1, b"x", {"c": None}]}, 1: "int key", "é": "ünïcode"},
            "big": 2**63 - 1,
            "neg": -(2**63),
            "floats": [1.5, -0.0],
        },
    )
    unattributed = ev(None, UDP, fingerprint=None, attrs={}, payload={})
    store.write_batch([original, unattributed], {})
    (got,) = store.get_trace(trace)
    assert got.event == original
    assert got.seq == 1 and got.id >= 1
    assert isinstance(got.event.payload["raw"], bytes)
    assert [s.event for s in store.events(kind=UDP)] == [unattributed]


def test_payload_stored_as_is_with_key_id(tmp_path: Path) -> None:
    class FakeSealer:
        def seal_batch(
            self, payloads: Sequence[Mapping[str, Any]], associated: Sequence[bytes] = ()
        ) -> list[tuple[bytes, str | None]]:
            return [(b"sealed:" + pack(dict(p)), "k1") for p in payloads]

        def unseal(
            self, blob: bytes, key_id: str | None, associated: bytes = b""
        ) -> dict[str, Any]:
            return {"blob": blob, "key_id": key_id}

    path = tmp_path / "flux.db"
    with SQLiteStore(path, sealer=FakeSealer()) as s:
        s.write_batch([ev(new_trace_id(), payload={"sql": "x"})], {})
        (got,) = s.events()
    assert got.event.payload == {"blob": b"sealed:" + pack({"sql": "x"}), "key_id": "k1"}
    raw = sqlite3.connect(path).execute("SELECT payload, key_id FROM events").fetchone()
    assert raw == (b"sealed:" + pack({"sql": "x"}), "k1")
    # Without the sealer that made it, a sealed payload shows as a marker, not an error.
    with SQLiteStore(path, readonly=True) as plain:
        (got,) = plain.events()
    assert got.event.payload == {SEALED_MARKER: "k1"}


def test_seq_per_trace_across_batches(store: SQLiteStore) -> None:
    a, b = new_trace_id(), new_trace_id()
    store.write_batch([ev(a), ev(b), ev(None), ev(a)], {})
    store.write_batch([ev(None), ev(b), ev(a)], {})
    assert [s.seq for s in store.get_trace(a)] == [1, 2, 3]
    assert [s.seq for s in store.get_trace(b)] == [1, 2]
    unattributed = [s for s in store.events() if s.event.trace_id is None]
    assert [s.seq for s in unattributed] == [1, 2]
    ids = [s.id for s in store.get_trace(a)]
    assert ids == sorted(ids)


def test_executions_index(store: SQLiteStore) -> None:
    t = new_trace_id()
    store.write_batch(
        [
            ev(t, PG_QUERY, start=1_100, duration_ns=50),
            ev(t, PG_QUERY, start=1_200, duration_ns=10, error=True),
            ev(t, HTTP_OUTBOUND, start=1_300, duration_ns=500),
        ],
        {},
    )
    (summary,) = store.list_executions()
    # No inbound yet: the root is the earliest event.
    assert (summary.root_kind, summary.method, summary.path) == (PG_QUERY, None, None)
    inbound = {"method": "POST", "path": "/orders", "status": 500}
    store.write_batch(
        [
            ev(t, HTTP_INBOUND, start=1_000, duration_ns=2_000, attrs=inbound, error=True),
            ev(t, UDP, start=1_500, duration_ns=1),
            ev(t, MUTATION, start=1_600),
            # A later inbound in the same trace (a self call) is not the root.
            ev(t, HTTP_INBOUND, start=1_700, attrs={"method": "GET", "path": "/x"}),
        ],
        {},
    )
    (s,) = store.list_executions()
    assert (s.trace_id, s.start_ns, s.end_ns, s.duration_ns) == (t, 1_000, 3_000, 2_000)
    assert (s.events, s.queries, s.calls, s.errors) == (7, 2, 2, 2)
    assert (s.root_kind, s.method, s.path, s.status) == (HTTP_INBOUND, "POST", "/orders", 500)


def test_unattributed_events_make_no_execution(store: SQLiteStore) -> None:
    store.write_batch([ev(None), ev(None, HTTP_INBOUND)], {})
    assert store.list_executions() == []
    stats = store.stats()
    assert (stats["events"], stats["executions"], stats["unattributed"]) == (2, 0, 2)


def test_counters_and_stats(store: SQLiteStore) -> None:
    store.write_batch([ev(new_trace_id())], {"events.recorded": 1, "bytes.stored": 40})
    store.write_batch([], {"events.dropped": 3, "events.recorded": 0})
    store.write_batch([], {"events.dropped": 2, "bytes.stored": 2})
    assert store.counters() == {"events.recorded": 1, "events.dropped": 5, "bytes.stored": 42}
    stats = store.stats()
    assert stats["events"] == 1 and stats["executions"] == 1 and stats["unattributed"] == 0
    assert stats["events.dropped"] == 5 and stats["file_bytes"] > 0


def test_list_executions_newest_first_and_filters(store: SQLiteStore) -> None:
    traces = [new_trace_id() for _ in range(5)]
    store.write_batch(
        [ev(t, start=1_000 * (i + 1), error=(i % 2 == 0)) for i, t in enumerate(traces)], {}
    )
    assert [s.trace_id for s in store.list_executions()] == traces[::-1]
    assert [s.trace_id for s in store.list_executions(limit=2)] == traces[:2:-1]
    assert [s.trace_id for s in store.list_executions(since_ns=3_000)] == traces[:1:-1]
    errors = store.list_executions(errors_only=True)
    assert [s.trace_id for s in errors] == [traces[4], traces[2], traces[0]]
    assert [s.trace_id for s in store.list_executions(errors_only=True, since_ns=2_000)] == [
        traces[4],
        traces[2],
    ]


def test_prefix_resolution(store: SQLiteStore) -> None:
    a = "abcdef01" + "0" * 23 + "1"
    b = "abcdef02" + "0" * 23 + "2"
    c = "abcdef02" + "0" * 23 + "3"
    store.write_batch([ev(a), ev(b), ev(c)], {})
    assert store.resolve_trace_id(a) == a
    assert store.resolve_trace_id("ABCDEF01") == a  # case and whitespace do not matter
    assert store.resolve_trace_id(" abcdef01 ") == a
    assert [s.event.trace_id for s in store.get_trace("abcdef01")] == [a]
    with pytest.raises(AmbiguousTraceId) as info:
        store.resolve_trace_id("abcdef0")
    assert info.value.candidates == [a, b, c]
    assert a in str(info.value) and c in str(info.value)
    with pytest.raises(AmbiguousTraceId):
        store.get_trace("abcdef02")
    with pytest.raises(TraceNotFound):
        store.get_trace("abcdef03")
    with pytest.raises(TraceNotFound):
        store.resolve_trace_id("f" * 32)
    with pytest.raises(InvalidTraceId):
        store.resolve_trace_id("abcde")  # shorter than 6 digits
    with pytest.raises(InvalidTraceId):
        store.resolve_trace_id("not-hex!")
    with pytest.raises(LookupError):  # both lookup errors are LookupErrors for callers
        store.get_trace("123456")


def test_events_filters(store: SQLiteStore) -> None:
    t = new_trace_id()
    batch = [
        ev(t, PG_QUERY, start=10, fingerprint="q1"),
        ev(t, PG_QUERY, start=20, fingerprint="q2"),
        ev(None, PG_QUERY, start=30, fingerprint="q1"),
        ev(t, HTTP_OUTBOUND, start=40, fingerprint="api.example.com"),
    ]
    store.write_batch(batch, {})
    assert [s.event for s in store.events()] == batch
    assert [s.event for s in store.events(kind=PG_QUERY, fingerprint="q1")] == [batch[0], batch[2]]
    assert [s.event for s in store.events(since_ns=20, until_ns=40)] == batch[1:3]
    assert [s.event for s in store.events(trace_id=t, limit=2)] == batch[:2]
    assert list(store.events(trace_id="0" * 32)) == []


def test_failed_batch_writes_nothing(store: SQLiteStore) -> None:
    t = new_trace_id()
    store.write_batch([ev(t)], {"events.recorded": 1})

    class BrokenSealer:
        def seal_batch(
            self, payloads: Sequence[Mapping[str, Any]], associated: Sequence[bytes] = ()
        ) -> list[tuple[bytes, str | None]]:
            return [(b"", None)]  # one short: fails after the transaction began

        def unseal(
            self, blob: bytes, key_id: str | None, associated: bytes = b""
        ) -> dict[str, Any]:
            return {}

    store._sealer = BrokenSealer()
    with pytest.raises(ValueError):
        store.write_batch([ev(t), ev(t), ev(new_trace_id())], {"events.recorded": 3})
    assert store.stats()["events"] == 1
    assert store.counters() == {"events.recorded": 1}
    assert [s.events for s in store.list_executions()] == [1]


def test_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)  # even a careless umask must not expose the recordings
    try:
        path = tmp_path / "new" / "flux.db"
        with SQLiteStore(path) as s:
            s.write_batch([ev(new_trace_id())], {})
            for name in ("flux.db", "flux.db-wal", "flux.db-shm"):
                mode = (path.parent / name).stat().st_mode & 0o777
                assert mode == 0o600, (name, oct(mode))
            assert path.parent.stat().st_mode & 0o777 == 0o700
        assert os.umask(0) == 0  # restored
    finally:
        os.umask(old)


def test_reader_sees_commits_while_writer_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "flux.db"
    t = new_trace_id()
    with SQLiteStore(path) as writer, SQLiteStore(path, readonly=True) as reader:
        writer.write_batch([ev(t)], {})
        assert len(reader.get_trace(t)) == 1
        # Another writer in the middle of a transaction does not block readers (WAL).
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO counters VALUES ('x', 1)")
        assert len(reader.get_trace(t)) == 1
        assert reader.counters() == {}
        other.execute("COMMIT")
        other.close()
        writer.write_batch([ev(t)], {})
        assert [s.seq for s in reader.get_trace(t)] == [1, 2]
        assert reader.counters() == {"x": 1}
        with pytest.raises(StoreError):
            reader.write_batch([ev(t)], {})


def test_schema_version_checks(tmp_path: Path) -> None:
    path = tmp_path / "flux.db"
    SQLiteStore(path).close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    SQLiteStore(path).close()  # reopening an existing store is fine
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(SchemaVersionError, match="newer"):
            SQLiteStore(path, readonly=readonly)

    foreign = tmp_path / "other.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(SchemaVersionError, match="not a flux store"):
        SQLiteStore(foreign)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SchemaVersionError):
        SQLiteStore(garbage)
    with pytest.raises(StoreNotFound):
        SQLiteStore(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_open_store_locations(tmp_path: Path) -> None:
    store = open_store(tmp_path / ".flux")
    store.write_batch([ev(new_trace_id())], {})
    store.close()
    assert (tmp_path / ".flux" / "flux.db").exists()
    reader = open_store(f"sqlite://{tmp_path / '.flux' / 'flux.db'}", readonly=True)
    assert reader.stats()["events"] == 1
    reader.close()
    with pytest.raises(StoreError):
        open_store("postgresql://db/flux")
