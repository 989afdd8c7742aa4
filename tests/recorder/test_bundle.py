"""Bundles on real stores: payloads move sealed and still open; imports are idempotent;
every truncation and every flipped byte of a bundle is refused before anything is written."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from recorder.crypto import EnvelopeSealer
from recorder.export.bundle import (
    FORMAT,
    BundleError,
    BundleWriter,
    KeepSealed,
    import_bundle,
    read_bundle,
)
from recorder.export.context import ExecutionReader, execution_events
from recorder.keys import PrivateKey, generate_keypair
from recorder.model import MUTATION, PG_QUERY, PG_SESSION, Event, new_span_id, new_trace_id
from recorder.sqlite_store import SQLiteStore
from recorder.store import EVENTS_IMPORTED, SEALED_MARKER, pack

SECRET = "Zx9-top-secret-literal"


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_keypair(2048)[0]  # the store's behaviour, not key size, is under test


def event(trace: str | None, kind: str, start: int, conn: str = "c1", **attrs: object) -> Event:
    return Event(
        kind=kind, trace_id=trace, span_id=new_span_id(), parent_span_id=None, conn_id=conn,
        start_ns=start, duration_ns=10, attrs=dict(attrs),
        payload={"sql": [f"SELECT '{SECRET}-{start}'"], "params": [[start]]},
    )  # fmt: skip


@pytest.fixture
def source(tmp_path: Path, key: PrivateKey) -> Iterator[tuple[Path, str, str]]:
    """A sealed store: two traces, a session and unattributed traffic on their connection,
    and another connection's unattributed traffic that belongs to neither."""
    trace, other = new_trace_id(), new_trace_id()
    base = 1_700_000_000 * 10**9
    events = [
        event(None, PG_SESSION, base, database="app"),
        event(None, PG_QUERY, base + 10),  # e.g. SET application_name, before the trace
        event(trace, PG_QUERY, base + 20, tags=["SELECT 1"]),
        event(trace, MUTATION, base + 30, table="public.t", op="insert"),
        event(None, PG_QUERY, base + 40, conn="c2"),  # someone else's connection
        event(other, PG_QUERY, base + 50, conn="c2"),
    ]
    path = tmp_path / "source.db"
    with SQLiteStore(path, sealer=EnvelopeSealer([key.public])) as store:
        store.write_batch(events, {})
    yield path, trace, other


def bundle_of(path: Path, *traces: str) -> bytes:
    with SQLiteStore(path, readonly=True, sealer=KeepSealed()) as store:
        writer = BundleWriter(source_store="sqlite:test", created_ns=123)
        for trace in traces:
            writer.add_execution(trace, execution_events(store, trace))
        out = io.BytesIO()
        writer.finish(out)
    return out.getvalue()


def test_payloads_travel_sealed_and_open_after_import(
    source: tuple[Path, str, str], tmp_path: Path, key: PrivateKey
) -> None:
    path, trace, _ = source
    data = bundle_of(path, trace)
    assert SECRET.encode() not in data  # sealed in the bundle as in the store
    bundle = read_bundle(data)
    assert bundle.traces == [trace] and bundle.source_store == "sqlite:test"
    assert bundle.key_ids == [key.key_id]
    # The trace's two events, its connection's session and earlier unattributed query;
    # not the other connection's traffic.
    assert [e.event.kind for e in bundle.events] == [PG_SESSION, PG_QUERY, PG_QUERY, MUTATION]
    target = tmp_path / "target.db"
    with SQLiteStore(target) as store:  # no sealer, no key: the importer needs none
        assert import_bundle(store, bundle).added == 4
    with SQLiteStore(target, readonly=True, sealer=EnvelopeSealer([], [key])) as store:
        imported = store.get_trace(trace)
        assert [s.seq for s in imported] == [1, 2]
        assert imported[0].event.payload["sql"] == [
            f"SELECT '{SECRET}-{imported[0].event.start_ns}'"
        ]
        context = [s for s in store.events() if s.event.trace_id is None]
        assert [s.event.payload["params"] for s in context] == [
            [[e.event.start_ns]] for e in context
        ]
        assert store.list_executions()[0].queries == 1
    with SQLiteStore(target, readonly=True) as store:  # and without the key: sealed markers
        assert store.get_trace(trace)[0].event.payload == {SEALED_MARKER: key.key_id}


def test_import_twice_adds_nothing_the_second_time(
    source: tuple[Path, str, str], tmp_path: Path
) -> None:
    path, trace, other = source
    bundle = read_bundle(bundle_of(path, trace, other))
    with SQLiteStore(tmp_path / "target.db") as store:
        first = import_bundle(store, bundle)
        second = import_bundle(store, bundle)
        stats = store.stats()
    assert (first.added, first.skipped) == (len(bundle.events), 0)
    assert (second.added, second.skipped) == (0, len(bundle.events))
    assert stats["events"] == len(bundle.events) and stats["executions"] == 2
    assert stats[EVENTS_IMPORTED] == len(bundle.events)


def test_a_bundle_imported_into_its_own_store_adds_nothing(source: tuple[Path, str, str]) -> None:
    path, trace, _ = source
    bundle = read_bundle(bundle_of(path, trace))
    with SQLiteStore(path) as store:
        before = store.stats()["events"]
        assert import_bundle(store, bundle).added == 0
        assert store.stats()["events"] == before


def test_every_truncation_is_refused(source: tuple[Path, str, str]) -> None:
    path, trace, _ = source
    data = bundle_of(path, trace)
    for length in range(len(data)):
        with pytest.raises(BundleError, match=r"truncated|damaged|not a flux bundle"):
            read_bundle(data[:length])
    with pytest.raises(BundleError, match="unexpected bytes"):
        read_bundle(data + b"\x00")


def test_every_flipped_byte_is_refused(source: tuple[Path, str, str]) -> None:
    path, trace, _ = source
    data = bundle_of(path, trace)
    for at in range(0, len(data), max(len(data) // 3000, 1)):  # a few thousand positions
        damaged = bytearray(data)
        damaged[at] ^= 0x01
        with pytest.raises(BundleError):
            read_bundle(bytes(damaged))


def test_foreign_and_newer_files_are_refused(source: tuple[Path, str, str]) -> None:
    path, trace, _ = source
    data = bundle_of(path, trace)
    with pytest.raises(BundleError, match="not a flux bundle"):
        read_bundle(b'{"log": {"version": "1.2"}}')
    with pytest.raises(BundleError, match="not a flux bundle"):
        read_bundle(pack({"format": "something.else", "version": 1}))
    with pytest.raises(BundleError, match="empty"):
        read_bundle(b"")
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    header = next(unpacker)
    newer = pack({**header, "version": 2}) + data[unpacker.tell() :]
    with pytest.raises(BundleError, match="v2 is newer"):
        read_bundle(newer)


def test_a_well_formed_bundle_with_a_bad_event_is_refused(tmp_path: Path) -> None:
    """Right digest, wrong content (a bug or a hand-made file): still refused."""
    header = pack({"format": FORMAT, "version": 1, "created_ns": 1, "generator": "x",
                   "source_store": "s", "key_ids": [], "traces": [], "events": 1})  # fmt: skip
    record = pack({"kind": "pg.query", "trace_id": "nothex", "span_id": "a", "parent_span_id": None,
                   "conn_id": None, "start_ns": 1, "duration_ns": 1, "error": False,
                   "fingerprint": None, "attrs": {}, "seq": 1, "payload": b"", "key_id": None})  # fmt: skip
    body = header + record
    trailer = pack({"end": FORMAT, "events": 1, "sha256": hashlib.sha256(body).digest()})
    with pytest.raises(BundleError, match="bad trace id"):
        read_bundle(body + trailer)


def test_the_context_reader_gives_each_execution_what_a_fresh_read_gives(tmp_path: Path) -> None:
    """Stretches read for one execution serve the next, in whatever order they come."""
    base = 1_700_000_000 * 10**9
    traces = [new_trace_id() for _ in range(4)]
    events = [event(None, PG_SESSION, base, conn="c1"), event(None, PG_SESSION, base, conn="c2")]
    for i, trace in enumerate(traces):  # 25 s apart: a 60 s context reaches two back
        at = base + (i + 1) * 25 * 10**9
        conn = "c1" if i % 2 == 0 else "c2"
        events += [event(None, PG_QUERY, at - 5, conn=conn), event(trace, PG_QUERY, at, conn=conn)]
    path = tmp_path / "flux.db"
    with SQLiteStore(path) as store:
        store.write_batch(events, {})
    with SQLiteStore(path, readonly=True) as store:
        fresh = {t: [e.id for e in execution_events(store, t)] for t in traces}
        reader = ExecutionReader(store)
        for trace in [traces[2], traces[0], traces[3], traces[1], traces[2]]:
            assert [e.id for e in reader.events(trace)] == fresh[trace]
    # Its session, its own earlier unattributed query and, from the third on, the one on its
    # connection (two executions back, 50 s before), never the other connection's.
    assert [len(ids) for ids in fresh.values()] == [3, 3, 4, 4]
