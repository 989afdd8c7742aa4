"""recorder.crypto: envelope sealing, its blob format, tamper and key failures, rotation."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recorder.abc import PayloadSealer
from recorder.crypto import (
    MAGIC,
    NONCE_BYTES,
    TAG_BYTES,
    DecryptionError,
    EnvelopeSealer,
    MalformedBlob,
    MissingKey,
    TamperedCiphertext,
    associated_data,
)
from recorder.keys import PrivateKey, PublicKey, generate_keypair
from recorder.model import PG_QUERY, Event, new_span_id, new_trace_id
from recorder.sqlite_store import SQLiteStore
from recorder.store import SEALED_MARKER, pack

SECRET = "s3cr3t-password-that-must-not-leak"


@pytest.fixture(scope="module")
def key1() -> PrivateKey:
    return generate_keypair(2048)[0]


@pytest.fixture(scope="module")
def key2() -> PrivateKey:
    return generate_keypair(2048)[0]


def payloads(n: int) -> list[dict[str, Any]]:
    return [
        {"sql": f"SELECT * FROM users WHERE id = {i}", "params": [i, b"\x00raw"], "i": i}
        for i in range(n)
    ]


def aad(i: int) -> bytes:
    return associated_data(trace_id="ab" * 16, span_id=f"{i:016x}", kind=PG_QUERY, start_ns=i)


def test_is_a_payload_sealer(key1: PrivateKey) -> None:
    sealer: PayloadSealer = EnvelopeSealer([key1.public], [key1])  # checked by mypy
    assert sealer.seal_batch([]) == []


def test_round_trip(key1: PrivateKey) -> None:
    sealer = EnvelopeSealer([key1.public], [key1])
    values: list[dict[Any, Any]] = [
        {},
        {"sql": "SELECT 1", "rows": [[1, "é", None, 2.5, True]]},
        {"body": b"\xff" * 1000, "nested": {"a": {"b": [b"x"]}}},
        {1: "int keys survive", "headers": {"authorization": "Bearer t"}},
    ]
    sealed = sealer.seal_batch(values)
    assert [k for _, k in sealed] == [key1.key_id] * len(values)
    assert [sealer.unseal(blob, k) for blob, k in sealed] == values
    assert all(blob.startswith(MAGIC) for blob, _ in sealed)


def test_each_blob_opens_alone(key1: PrivateKey) -> None:
    sealed = EnvelopeSealer([key1.public]).seal_batch(payloads(50), [aad(i) for i in range(50)])
    # A fresh reader (empty cache, no other blob of the batch) opens any one of them.
    for i in (0, 17, 49):
        blob, key_id = sealed[i]
        reader = EnvelopeSealer([], [key1])
        assert reader.unseal(blob, key_id, aad(i)) == payloads(50)[i]


def test_one_rsa_wrap_per_batch_and_one_unwrap_per_batch_read(
    key1: PrivateKey, key2: PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"wrap": 0, "unwrap": 0}
    wrap, unwrap = PublicKey.wrap, PrivateKey.unwrap

    def counting_wrap(self: PublicKey, secret: bytes) -> bytes:
        calls["wrap"] += 1
        return wrap(self, secret)

    def counting_unwrap(self: PrivateKey, wrapped: bytes) -> bytes:
        calls["unwrap"] += 1
        return unwrap(self, wrapped)

    monkeypatch.setattr(PublicKey, "wrap", counting_wrap)
    monkeypatch.setattr(PrivateKey, "unwrap", counting_unwrap)
    sealer = EnvelopeSealer([key1.public], [key1])
    first = sealer.seal_batch(payloads(1000))
    second = sealer.seal_batch(payloads(10))
    assert calls["wrap"] == 2
    assert calls["unwrap"] == 0
    for blob, key_id in first + second:
        sealer.unseal(blob, key_id)
    assert calls["unwrap"] == 2  # one RSA decryption per batch read, not per event
    # Two recipients: one wrap each per batch, still independent of the batch size.
    EnvelopeSealer([key1.public, key2.public]).seal_batch(payloads(500))
    assert calls["wrap"] == 4


def test_fresh_data_key_and_nonce_per_batch(key1: PrivateKey) -> None:
    sealer = EnvelopeSealer([key1.public])
    a = [blob for blob, _ in sealer.seal_batch([{"x": 1}] * 20)]
    b = [blob for blob, _ in sealer.seal_batch([{"x": 1}] * 20)]
    header = len(a[0]) - NONCE_BYTES - TAG_BYTES - len(pack({"x": 1}))
    assert len({blob[:header] for blob in a}) == 1  # one wrapped key per batch...
    assert a[0][:header] != b[0][:header]  # ...and a new one for the next batch
    nonces = {blob[header : header + NONCE_BYTES] for blob in a + b}
    assert len(nonces) == 40


def test_secret_does_not_appear_in_blob(key1: PrivateKey) -> None:
    sealed = EnvelopeSealer([key1.public]).seal_batch(
        [{"sql": f"ALTER USER app PASSWORD '{SECRET}'", "raw": SECRET.encode()}]
    )
    blob = sealed[0][0]
    assert SECRET.encode() not in blob
    assert SECRET.encode("utf-16-le") not in blob
    assert b"ALTER USER" not in blob


def test_every_single_byte_flip_fails(key1: PrivateKey) -> None:
    sealer = EnvelopeSealer([key1.public], [key1])
    ((blob, key_id),) = sealer.seal_batch([{"sql": SECRET}], [aad(0)])
    # Positions: magic, version, count, key id, wrapped length, wrapped key, nonce,
    # ciphertext and tag. Every one of them, not a sample.
    for position in range(len(blob)):
        bad = bytearray(blob)
        bad[position] ^= 0x01
        reader = EnvelopeSealer([], [key1])  # no cached data key to lean on
        for attempt in (reader.unseal, reader.open):
            with pytest.raises((TamperedCiphertext, MalformedBlob)):
                attempt(bytes(bad), key_id, aad(0))


def test_truncated_and_extended_blobs_fail(key1: PrivateKey) -> None:
    sealer = EnvelopeSealer([key1.public], [key1])
    ((blob, key_id),) = sealer.seal_batch([{"sql": SECRET}])
    for length in (0, 2, 3, 4, 5, 10, 300, len(blob) - TAG_BYTES - 20, len(blob) - 1):
        with pytest.raises((TamperedCiphertext, MalformedBlob)):
            sealer.unseal(blob[:length], key_id)
    with pytest.raises(TamperedCiphertext):
        sealer.unseal(blob + b"\x00", key_id)
    with pytest.raises(MalformedBlob, match="bad magic"):
        sealer.unseal(pack({"plain": 1}), key_id)
    with pytest.raises(MalformedBlob, match="v9"):
        sealer.unseal(MAGIC + b"\x09" + blob[4:], key_id)


def test_payload_swapped_between_events_fails(key1: PrivateKey) -> None:
    sealer = EnvelopeSealer([key1.public], [key1])
    (a, ka), (b, kb) = sealer.seal_batch([{"user": "alice"}, {"user": "bob"}], [aad(1), aad(2)])
    assert sealer.unseal(a, ka, aad(1)) == {"user": "alice"}
    with pytest.raises(TamperedCiphertext, match="another event"):
        sealer.unseal(a, ka, aad(2))
    with pytest.raises(TamperedCiphertext):
        sealer.unseal(b, kb, aad(1))
    with pytest.raises(TamperedCiphertext):
        sealer.unseal(a, ka)  # the binding cannot be dropped either
    # Every routing field takes part in the binding.
    base = {"trace_id": new_trace_id(), "span_id": new_span_id(), "kind": PG_QUERY}
    ((blob, key_id),) = sealer.seal_batch([{"x": 1}], [associated_data(**base, start_ns=5)])
    for change in ({"trace_id": None}, {"span_id": "0" * 15 + "1"}, {"kind": "udp"}):
        fields: dict[str, Any] = {**base, "start_ns": 5, **change}
        with pytest.raises(TamperedCiphertext):
            sealer.unseal(blob, key_id, associated_data(**fields))
    with pytest.raises(TamperedCiphertext):
        sealer.unseal(blob, key_id, associated_data(**base, start_ns=6))


def test_wrong_private_key_is_missing_key(key1: PrivateKey, key2: PrivateKey) -> None:
    ((blob, key_id),) = EnvelopeSealer([key1.public]).seal_batch([{"sql": SECRET}])
    reader = EnvelopeSealer([], [key2])
    with pytest.raises(MissingKey, match=key1.key_id) as info:
        reader.open(blob, key_id)
    assert info.value.key_ids == [key1.key_id]
    assert isinstance(info.value, DecryptionError)
    # The store's read path: a marker, so traces still display without the key.
    assert reader.unseal(blob, key_id) == {SEALED_MARKER: key1.key_id}
    assert EnvelopeSealer([key1.public]).unseal(blob, key_id) == {SEALED_MARKER: key1.key_id}


def test_stored_key_id_must_match_the_blob(key1: PrivateKey, key2: PrivateKey) -> None:
    sealer = EnvelopeSealer([key1.public], [key1, key2])
    ((blob, _),) = sealer.seal_batch([{"x": 1}])
    with pytest.raises(TamperedCiphertext, match="stored as"):
        sealer.unseal(blob, key2.key_id)
    with pytest.raises(TamperedCiphertext, match="without its key id"):
        sealer.unseal(blob, None)


def test_rotation(key1: PrivateKey, key2: PrivateKey) -> None:
    old = EnvelopeSealer([key1.public]).seal_batch(payloads(5), [aad(i) for i in range(5)])
    new = EnvelopeSealer([key2.public]).seal_batch(payloads(5), [aad(i) for i in range(5)])
    both = EnvelopeSealer([key2.public], [key1, key2])
    for batch in (old, new):
        assert [both.unseal(b, k, aad(i)) for i, (b, k) in enumerate(batch)] == payloads(5)
    only_new = EnvelopeSealer([key2.public], [key2])
    for i, (blob, key_id) in enumerate(old):
        with pytest.raises(MissingKey):
            only_new.open(blob, key_id, aad(i))
        assert only_new.unseal(blob, key_id, aad(i)) == {SEALED_MARKER: key1.key_id}
    assert [only_new.unseal(b, k, aad(i)) for i, (b, k) in enumerate(new)] == payloads(5)


def test_several_recipients(key1: PrivateKey, key2: PrivateKey) -> None:
    sealer = EnvelopeSealer([key1.public, key2.public, key1.public])  # duplicate dropped
    assert sealer.key_id == f"{key1.key_id},{key2.key_id}"
    ((blob, key_id),) = sealer.seal_batch([{"x": SECRET}])
    assert key_id == sealer.key_id
    for private in (key1, key2):
        assert EnvelopeSealer([], [private]).unseal(blob, key_id) == {"x": SECRET}
    with pytest.raises(MissingKey, match=f"{key1.key_id}, {key2.key_id}"):
        EnvelopeSealer([], []).open(blob, key_id)


def test_wrapped_key_of_wrong_length_is_tampered(key1: PrivateKey) -> None:
    # A header that is well formed and authentic-looking but wraps a 16-byte key.
    wrapped = key1.public.wrap(b"k" * 16)
    head = MAGIC + bytes((1, 1)) + struct.pack(">8sH", bytes.fromhex(key1.key_id), len(wrapped))
    blob = head + wrapped + b"\x00" * (NONCE_BYTES + TAG_BYTES + 4)
    with pytest.raises(TamperedCiphertext, match="16 bytes"):
        EnvelopeSealer([], [key1]).unseal(blob, key1.key_id)


def test_plain_payloads_still_read(key1: PrivateKey) -> None:
    # Rows written before encryption was configured have key_id None.
    sealer = EnvelopeSealer([key1.public], [key1])
    assert sealer.unseal(pack({"sql": "SELECT 1"}), None) == {"sql": "SELECT 1"}
    assert sealer.unseal(pack([1, 2]), None) == {"value": [1, 2]}
    with pytest.raises(MalformedBlob):
        sealer.unseal(b"\x92\x01", None)


def test_refuses_to_seal_without_recipient(key1: PrivateKey) -> None:
    reader = EnvelopeSealer([], [key1])
    assert reader.key_id is None
    assert reader.seal_batch([]) == []
    with pytest.raises(ValueError, match="no recipient"):
        reader.seal_batch([{"x": 1}])
    with pytest.raises(ValueError, match="associated"):
        EnvelopeSealer([key1.public]).seal_batch([{"x": 1}], [b"a", b"b"])


@pytest.fixture
def events() -> Iterator[list[Event]]:
    trace = new_trace_id()
    yield [
        Event(
            kind=PG_QUERY, trace_id=trace, span_id=new_span_id(), parent_span_id=None,
            conn_id="c1", start_ns=1000 + i, duration_ns=5, attrs={"tag": "SELECT 1"},
            payload={"sql": f"SELECT '{SECRET}', {i}"},
        )
        for i in range(3)
    ]  # fmt: skip


def test_with_the_sqlite_store(tmp_path: Path, key1: PrivateKey, events: list[Event]) -> None:
    # The store as it is today (no associated data passed): sealed on disk, opened on read.
    path = tmp_path / "flux.db"
    with SQLiteStore(path, sealer=EnvelopeSealer([key1.public])) as store:
        store.write_batch(events, {})
    on_disk = b"".join(f.read_bytes() for f in tmp_path.iterdir())  # db, and -wal if kept
    assert SECRET.encode() not in on_disk and b"SELECT 1" in on_disk
    trace = events[0].trace_id
    assert trace is not None
    with SQLiteStore(path, readonly=True, sealer=EnvelopeSealer([], [key1])) as store:
        assert [s.event.payload for s in store.get_trace(trace)] == [e.payload for e in events]
    with SQLiteStore(path, readonly=True) as store:  # no key: markers, the trace still shows
        got = store.get_trace(trace)
        assert [s.event.payload for s in got] == [{SEALED_MARKER: key1.key_id}] * 3
        assert got[0].event.attrs == {"tag": "SELECT 1"}
