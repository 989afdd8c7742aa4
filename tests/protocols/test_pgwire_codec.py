"""Decode, encode, framing and decoder tests, all driven by the table in test_pgwire_cases."""

from __future__ import annotations

import pytest

from protocols.pgwire import (
    COPY_DONE,
    FLUSH,
    SSL_NO,
    SYNC,
    TERMINATE,
    BackendDecoder,
    CopyDone,
    FieldDescription,
    Flush,
    FrontendDecoder,
    Message,
    MessageReader,
    StartupMessage,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
    decode_startup,
    encode,
)
from tests.protocols.test_pgwire_cases import CASES, Case


def _id(case: Case) -> str:
    return f"{case.side}-{type(case.message).__name__}"


ALL = [pytest.param(case, id=_id(case)) for case in CASES]
TYPED = [pytest.param(case, id=_id(case)) for case in CASES if case.side != "startup"]


def _decode(case: Case, type_byte: int, body: bytes) -> Message:
    if case.side == "startup":
        assert type_byte == 0
        return decode_startup(body)
    if case.side == "frontend":
        return decode_frontend(type_byte, body, auth=case.auth)
    return decode_backend(type_byte, body)


def _expected_frame(case: Case) -> tuple[int, bytes]:
    if case.side == "startup":
        return 0, case.wire
    return case.wire[0], case.wire[5:]


def test_table_covers_every_message_class() -> None:
    import protocols.pgwire as pgwire

    classes = {
        obj
        for name in pgwire.__all__
        if isinstance(obj := getattr(pgwire, name), type)
        and obj.__module__.startswith("protocols.pgwire._messages")
        and obj is not FieldDescription
    }
    assert classes - {type(case.message) for case in CASES} == set()


@pytest.mark.parametrize("case", ALL)
def test_wire_length_word_is_consistent(case: Case) -> None:
    # Guards the hand-written table itself, independently of the codec.
    if case.side == "startup":
        assert int.from_bytes(case.wire[:4], "big") == len(case.wire)
    else:
        assert int.from_bytes(case.wire[1:5], "big") == len(case.wire) - 1


@pytest.mark.parametrize("case", ALL)
def test_decode(case: Case) -> None:
    assert _decode(case, *_expected_frame(case)) == case.message


@pytest.mark.parametrize("case", ALL)
def test_encode(case: Case) -> None:
    assert encode(case.message) == case.wire


def _reader(case: Case) -> MessageReader:
    return MessageReader(startup=case.side == "startup")


@pytest.mark.parametrize("case", ALL)
def test_reader_whole(case: Case) -> None:
    reader = _reader(case)
    reader.receive_data(case.wire)
    frame = reader.next_message()
    assert frame == _expected_frame(case)
    assert _decode(case, *frame) == case.message
    assert reader.next_message() is None
    assert reader.buffered == 0
    reader.receive_data(b"")
    assert reader.next_message() is None


@pytest.mark.parametrize("case", ALL)
def test_reader_byte_by_byte(case: Case) -> None:
    reader = _reader(case)
    for i in range(len(case.wire) - 1):
        reader.receive_data(case.wire[i : i + 1])
        assert reader.next_message() is None
    reader.receive_data(case.wire[-1:])
    frame = reader.next_message()
    assert frame == _expected_frame(case)
    assert _decode(case, *frame) == case.message
    assert reader.next_message() is None


@pytest.mark.parametrize("case", ALL)
def test_reader_with_trailing_data(case: Case) -> None:
    reader = _reader(case)
    # A complete Sync plus the start of a ReadyForQuery-sized message.
    reader.receive_data(case.wire + b"S\x00\x00\x00\x04Z\x00")
    assert reader.next_message() == _expected_frame(case)
    assert reader.buffered == 7
    assert reader.next_message() == (ord("S"), b"")
    assert reader.next_message() is None
    assert reader.buffered == 2


@pytest.mark.parametrize("case", ALL)
def test_decoders(case: Case) -> None:
    if case.side == "backend":
        backend = BackendDecoder()
        backend.receive_data(case.wire[:3])
        assert backend.next_message() is None
        backend.receive_data(case.wire[3:])
        assert backend.next_message() == case.message
        assert backend.next_message() is None
        return
    frontend = FrontendDecoder(startup=case.side == "startup")
    frontend.auth_context = case.auth
    frontend.receive_data(case.wire)
    assert frontend.next_message() == case.message
    assert frontend.next_message() is None


def test_constants_are_the_encodings() -> None:
    assert encode(Sync()) is SYNC
    assert SYNC == b"S\x00\x00\x00\x04"
    assert encode(Flush()) is FLUSH
    assert encode(Terminate()) is TERMINATE
    assert encode(CopyDone()) is COPY_DONE
    assert SSL_NO == b"N"


def test_startup_accessors() -> None:
    startup = decode_startup(CASES[0].wire)
    assert isinstance(startup, StartupMessage)
    assert (startup.major, startup.minor) == (3, 0)
    assert startup.get("user") == "alice"
    assert startup.get("options") is None
