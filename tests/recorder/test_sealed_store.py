"""The SQLite store with envelope encryption: binding, tampering, rotation, markers.

Every way a payload can fail to open must come back as a marker that says why,
never as another event's plaintext and never as an exception that hides the rest
of the trace.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recorder.crypto import EnvelopeSealer
from recorder.keys import PrivateKey, generate_keypair
from recorder.model import PG_QUERY, UDP, Event, new_span_id, new_trace_id
from recorder.sqlite_store import SQLiteStore
from recorder.store import (
    SEALED_MARKER,
    UNREADABLE_MARKER,
    PlainSealer,
    associated_data,
    open_store,
    payload_problem,
)

SECRET = "s3cr3t-Zq8w-value"


@pytest.fixture(scope="module")
def key1() -> PrivateKey:
    return generate_keypair(2048)[0]  # 2048: these tests are about the store, not key size


@pytest.fixture(scope="module")
def key2() -> PrivateKey:
    return generate_keypair(2048)[0]


def event(trace: str | None, i: int, kind: str = PG_QUERY) -> Event:
    return Event(
        kind=kind, trace_id=trace, span_id=new_span_id(), parent_span_id=None, conn_id="c1",
        start_ns=1_000 + i, duration_ns=5, attrs={"tags": ["SELECT 1"]},
        payload={"sql": [f"SELECT '{SECRET}-{i}'"], "params": [[i]]},
    )  # fmt: skip


@pytest.fixture
def sealed(tmp_path: Path, key1: PrivateKey) -> Iterator[tuple[Path, list[Event]]]:
    trace = new_trace_id()
    events = [event(trace, i) for i in range(3)] + [event(None, 3, UDP)]
    path = tmp_path / "flux.db"
    with SQLiteStore(path, sealer=EnvelopeSealer([key1.public])) as store:
        store.write_batch(events, {})
    yield path, events


def read(path: Path, *keys: PrivateKey) -> list[dict[str, Any]]:
    with SQLiteStore(path, readonly=True, sealer=EnvelopeSealer([], keys)) as store:
        return [s.event.payload for s in store.events()]


def test_round_trip_and_nothing_in_plaintext(
    sealed: tuple[Path, list[Event]], key1: PrivateKey
) -> None:
    path, events = sealed
    assert read(path, key1) == [e.payload for e in events]
    on_disk = b"".join(p.read_bytes() for p in path.parent.iterdir())
    assert SECRET.encode() not in on_disk
    assert b"SELECT 1" in on_disk  # attrs stay plaintext: the scan above is not vacuous


def test_without_the_key_payloads_are_markers(
    sealed: tuple[Path, list[Event]], key1: PrivateKey, key2: PrivateKey
) -> None:
    path, events = sealed
    for payloads in (read(path), read(path, key2)):  # no key; only the wrong one
        assert payloads == [{SEALED_MARKER: key1.key_id}] * len(events)
        assert all("no matching private key" in (payload_problem(p) or "") for p in payloads)
    with SQLiteStore(path, readonly=True) as plain:  # the default sealer says the same
        assert [s.event.payload for s in plain.events()] == [{SEALED_MARKER: key1.key_id}] * 4


def test_payload_swapped_between_events_does_not_open(
    sealed: tuple[Path, list[Event]], key1: PrivateKey
) -> None:
    path, events = sealed
    with sqlite3.connect(path) as db:
        (a, pa), (b, pb) = db.execute("SELECT id, payload FROM events LIMIT 2").fetchall()
        db.execute("UPDATE events SET payload = ? WHERE id = ?", (pb, a))
        db.execute("UPDATE events SET payload = ? WHERE id = ?", (pa, b))
    payloads = read(path, key1)
    assert payloads[2:] == [e.payload for e in events[2:]]  # the others are untouched
    for payload in payloads[:2]:
        assert list(payload) == [UNREADABLE_MARKER]
        assert "failed authentication" in payload[UNREADABLE_MARKER]
        assert SECRET not in str(payload)


@pytest.mark.parametrize(
    "column, value",
    [("trace_id", new_trace_id()), ("span_id", "00f067aa0ba902b7"), ("start_ns", 7), ("kind", UDP)],
    ids=["trace_id", "span_id", "start_ns", "kind"],  # the same on every xdist worker
)
def test_routing_fields_are_bound(
    sealed: tuple[Path, list[Event]], key1: PrivateKey, column: str, value: object
) -> None:
    # Moving a payload to another event by rewriting the event instead of the payload.
    path, _ = sealed
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE events SET {column} = ? WHERE id = 1", (value,))
    first = read(path, key1)[0]
    assert list(first) == [UNREADABLE_MARKER] and SECRET not in str(first)


def test_tampered_ciphertext_does_not_open(
    sealed: tuple[Path, list[Event]], key1: PrivateKey
) -> None:
    path, events = sealed
    with sqlite3.connect(path) as db:
        (blob,) = db.execute("SELECT payload FROM events WHERE id = 2").fetchone()
        for where in (len(blob) - 20, 5, len(blob) // 2):  # ciphertext, header, wrapped key
            flipped = bytearray(blob)
            flipped[where] ^= 0x01
            db.execute("UPDATE events SET payload = ? WHERE id = 2", (bytes(flipped),))
            db.commit()
            payloads = read(path, key1)
            assert list(payloads[1]) == [UNREADABLE_MARKER], where
            assert [payloads[0], *payloads[2:]] == [
                events[0].payload,
                *[e.payload for e in events[2:]],
            ]
        db.execute("UPDATE events SET payload = ?, key_id = NULL WHERE id = 2", (blob,))
    # A sealed blob whose key id was stripped must not read as a plain payload either.
    assert list(read(path, key1)[1]) == [UNREADABLE_MARKER]


def test_rotation(tmp_path: Path, key1: PrivateKey, key2: PrivateKey) -> None:
    path = tmp_path / "flux.db"
    trace = new_trace_id()
    old, new = [event(trace, i) for i in range(2)], [event(trace, i) for i in range(2, 4)]
    with SQLiteStore(path, sealer=EnvelopeSealer([key1.public])) as store:
        store.write_batch(old, {})
    with SQLiteStore(path, sealer=EnvelopeSealer([key2.public])) as store:
        store.write_batch(new, {})
    assert read(path, key1, key2) == [e.payload for e in old + new]
    assert read(path, key2, key1) == [e.payload for e in old + new]  # order does not matter
    assert read(path, key2) == [{SEALED_MARKER: key1.key_id}] * 2 + [e.payload for e in new]
    assert read(path, key1) == [e.payload for e in old] + [{SEALED_MARKER: key2.key_id}] * 2


def test_damaged_plain_payload_is_a_marker_too(tmp_path: Path) -> None:
    path = tmp_path / "flux.db"
    with SQLiteStore(path, sealer=PlainSealer()) as store:
        store.write_batch([event(new_trace_id(), 0), event(new_trace_id(), 1)], {})
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET payload = x'c1' WHERE id = 1")  # 0xc1: never msgpack
    reader = open_store(path, readonly=True)
    try:
        first, second = [s.event.payload for s in reader.events()]
    finally:
        reader.close()
    assert list(first) == [UNREADABLE_MARKER] and "not msgpack" in first[UNREADABLE_MARKER]
    assert second["params"] == [[1]] and payload_problem(second) is None


def test_associated_data_covers_each_field() -> None:
    def aad(
        trace: str | None = "a" * 32, span: str = "b" * 16, kind: str = PG_QUERY, start: int = 1
    ) -> bytes:
        return associated_data(trace_id=trace, span_id=span, kind=kind, start_ns=start)

    datas = {aad(), aad(trace=None), aad(span="c" * 16), aad(kind=UDP), aad(start=2)}
    assert len(datas) == 5
