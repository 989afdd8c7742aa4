"""Hypothesis: decoders survive any bytes, and encode/decode round-trip every message."""

from __future__ import annotations

from typing import Literal, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.pgwire import (
    BACKEND_TYPES,
    FRONTEND_TYPES,
    AuthContext,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendDecoder,
    BackendKeyData,
    BackendMessage,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FrontendDecoder,
    FrontendMessage,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    GSSResponse,
    Message,
    MessageReader,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
    decode_startup,
    encode,
)

T = TypeVar("T")

FUZZ = settings(max_examples=150, deadline=None)
ROUND_TRIP = settings(max_examples=250, deadline=None)

# --- strategies for valid messages ----------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
name = text.filter(bool)
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
blob = st.binary(max_size=24)
nullable = st.none() | blob
key = st.binary(min_size=4, max_size=256)
kind: st.SearchStrategy[Literal["S", "P"]] = st.sampled_from(["S", "P"])
field_code = st.characters(min_codepoint=1, max_codepoint=127)


def tuples(elements: st.SearchStrategy[T]) -> st.SearchStrategy[tuple[T, ...]]:
    return st.lists(elements, max_size=5).map(tuple)


STARTUP: st.SearchStrategy[StartupPacket] = st.one_of(
    st.builds(
        StartupMessage,
        protocol_version=st.integers(3 << 16, (3 << 16) | 0xFFFF),
        parameters=tuples(st.tuples(name, text)),
    ),
    st.just(SSLRequest()),
    st.just(GSSENCRequest()),
    st.builds(CancelRequest, process_id=int32, secret_key=key),
)

FRONTEND: st.SearchStrategy[FrontendMessage] = st.one_of(
    st.builds(Query, query=text),
    st.builds(Parse, statement=text, query=text, param_types=tuples(uint32)),
    st.builds(
        Bind,
        portal=text,
        statement=text,
        param_formats=tuples(int16),
        params=tuples(nullable),
        result_formats=tuples(int16),
    ),
    st.builds(Describe, kind=kind, name=text),
    st.builds(Execute, portal=text, max_rows=int32),
    st.builds(Close, kind=kind, name=text),
    st.sampled_from([Sync(), Flush(), Terminate(), CopyDone()]),
    st.builds(CopyData, data=blob),
    st.builds(CopyFail, message=text),
    st.builds(
        FunctionCall,
        function_oid=uint32,
        arg_formats=tuples(int16),
        args=tuples(nullable),
        result_format=int16,
    ),
    st.builds(PasswordMessage, password=blob.map(lambda b: b.replace(b"\x00", b""))),
    st.builds(SASLInitialResponse, mechanism=text, data=nullable),
    st.builds(SASLResponse, data=blob),
    st.builds(GSSResponse, data=blob),
)

FIELD = st.builds(
    FieldDescription,
    name=text,
    table_oid=uint32,
    column_number=int16,
    type_oid=uint32,
    type_size=int16,
    type_modifier=int32,
    format=int16,
)

BACKEND: st.SearchStrategy[BackendMessage] = st.one_of(
    st.sampled_from(
        [
            AuthenticationOk(),
            AuthenticationKerberosV5(),
            AuthenticationCleartextPassword(),
            AuthenticationGSS(),
            AuthenticationSSPI(),
            EmptyQueryResponse(),
            NoData(),
            PortalSuspended(),
            ParseComplete(),
            BindComplete(),
            CloseComplete(),
            CopyDone(),
            ReadyForQuery(status="I"),
            ReadyForQuery(status="T"),
            ReadyForQuery(status="E"),
        ]
    ),
    st.builds(AuthenticationMD5Password, salt=st.binary(min_size=4, max_size=4)),
    st.builds(AuthenticationGSSContinue, data=blob),
    st.builds(AuthenticationSASL, mechanisms=tuples(name)),
    st.builds(AuthenticationSASLContinue, data=blob),
    st.builds(AuthenticationSASLFinal, data=blob),
    st.builds(BackendKeyData, process_id=int32, secret_key=key),
    st.builds(ParameterStatus, name=text, value=text),
    st.builds(ParameterDescription, type_oids=tuples(uint32)),
    st.builds(RowDescription, fields=tuples(FIELD)),
    st.builds(DataRow, values=tuples(nullable)),
    st.builds(CommandComplete, tag=text),
    st.builds(ErrorResponse, fields=tuples(st.tuples(field_code, text))),
    st.builds(NoticeResponse, fields=tuples(st.tuples(field_code, text))),
    st.builds(NotificationResponse, process_id=int32, channel=text, payload=text),
    st.builds(CopyInResponse, format=st.integers(0, 255), column_formats=tuples(int16)),
    st.builds(CopyOutResponse, format=st.integers(0, 255), column_formats=tuples(int16)),
    st.builds(CopyBothResponse, format=st.integers(0, 255), column_formats=tuples(int16)),
    st.builds(CopyData, data=blob),
    st.builds(NegotiateProtocolVersion, newest_minor=int32, unrecognized=tuples(text)),
    st.builds(FunctionCallResponse, value=nullable),
)

AUTH: st.SearchStrategy[AuthContext] = st.sampled_from(["password", "sasl-initial", "sasl", "gss"])


def auth_for(message: FrontendMessage) -> AuthContext:
    match message:
        case SASLInitialResponse():
            return "sasl-initial"
        case SASLResponse():
            return "sasl"
        case GSSResponse():
            return "gss"
        case _:
            return "password"


def frame(type_byte: int, body: bytes) -> bytes:
    return bytes((type_byte,)) + (len(body) + 4).to_bytes(4, "big") + body


# --- round trips ---------------------------------------------------------


@ROUND_TRIP
@given(STARTUP)
def test_round_trip_startup(message: StartupPacket) -> None:
    assert decode_startup(encode(message)) == message


@ROUND_TRIP
@given(FRONTEND)
def test_round_trip_frontend(message: FrontendMessage) -> None:
    wire = encode(message)
    assert decode_frontend(wire[0], wire[5:], auth=auth_for(message)) == message


@ROUND_TRIP
@given(BACKEND)
def test_round_trip_backend(message: BackendMessage) -> None:
    wire = encode(message)
    assert decode_backend(wire[0], wire[5:]) == message


@FUZZ
@given(st.lists(BACKEND, max_size=8), st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_stream_round_trip_in_random_chunks(
    messages: list[BackendMessage], sizes: list[int]
) -> None:
    stream = b"".join(encode(m) for m in messages)
    decoder = BackendDecoder()
    received: list[BackendMessage] = []
    pos = turn = 0
    while pos < len(stream):
        size = sizes[turn % len(sizes)]
        decoder.receive_data(stream[pos : pos + size])
        pos, turn = pos + size, turn + 1
        while (message := decoder.next_message()) is not None:
            received.append(message)
    decoder.receive_data(b"")
    assert decoder.next_message() is None
    assert received == messages


# --- decoders fed garbage ------------------------------------------------


def _canonical(message: Message, wire: bytes) -> None:
    # Whatever decodes must re-encode to exactly the same bytes: nothing is lost.
    assert encode(message) == wire


@FUZZ
@given(st.sampled_from(sorted(FRONTEND_TYPES)) | st.integers(0, 255), st.binary(max_size=48), AUTH)
def test_fuzz_decode_frontend(type_byte: int, body: bytes, auth: AuthContext) -> None:
    try:
        message = decode_frontend(type_byte, body, auth=auth)
    except RemoteProtocolError:
        return
    _canonical(message, frame(type_byte, body))


@FUZZ
@given(st.sampled_from(sorted(BACKEND_TYPES)) | st.integers(0, 255), st.binary(max_size=48))
def test_fuzz_decode_backend(type_byte: int, body: bytes) -> None:
    try:
        message = decode_backend(type_byte, body)
    except RemoteProtocolError:
        return
    _canonical(message, frame(type_byte, body))


@FUZZ
@given(
    st.binary(max_size=64)
    | st.builds(
        lambda code, tail: (len(tail) + 8).to_bytes(4, "big") + code.to_bytes(4, "big") + tail,
        st.sampled_from([196608, 196610, 131072, 80877102, 80877103, 80877104, 80877105]),
        st.binary(max_size=48),
    )
)
def test_fuzz_decode_startup(packet: bytes) -> None:
    try:
        message = decode_startup(packet)
    except RemoteProtocolError:
        return
    _canonical(message, packet)


MUTATION = st.tuples(
    st.sampled_from(["cut", "flip", "insert"]), st.integers(0, 1 << 16), st.integers(0, 255)
)


def _mutate(wire: bytes, mutations: list[tuple[str, int, int]], start: int) -> bytes:
    body = bytearray(wire[start:])
    for op, where, value in mutations:
        at = where % (len(body) + 1)
        if op == "cut":
            del body[at:]
        elif op == "insert":
            body.insert(at, value)
        elif body:
            body[at % len(body)] = value
    return bytes(body)


@FUZZ
@given(BACKEND | FRONTEND, st.lists(MUTATION, min_size=1, max_size=3))
def test_fuzz_mutated_typed_messages(
    message: Message, mutations: list[tuple[str, int, int]]
) -> None:
    wire = encode(message)
    body = _mutate(wire, mutations, 5)
    for decode in (decode_backend, lambda t, b: decode_frontend(t, b, auth=auth_for(message))):  # type: ignore[arg-type]
        try:
            decoded = decode(wire[0], body)
        except RemoteProtocolError:
            continue
        _canonical(decoded, frame(wire[0], body))


@FUZZ
@given(STARTUP, st.lists(MUTATION, min_size=1, max_size=3))
def test_fuzz_mutated_startup(
    message: StartupPacket, mutations: list[tuple[str, int, int]]
) -> None:
    tail = _mutate(encode(message), mutations, 4)
    packet = (len(tail) + 4).to_bytes(4, "big") + tail
    try:
        decoded = decode_startup(packet)
    except RemoteProtocolError:
        return
    _canonical(decoded, packet)


def _drain(next_message: object, limit: int, failed: object) -> None:
    assert callable(next_message) and callable(failed)
    # Every message consumes at least 4 bytes, so more turns than that is a hang.
    for _ in range(limit):
        try:
            if next_message() is None:
                return
        except RemoteProtocolError:
            if failed():
                return
    raise AssertionError("reader made no progress")


@FUZZ
@given(
    st.binary(max_size=200),
    st.lists(st.integers(1, 50), min_size=1, max_size=6),
    st.booleans(),
    st.integers(4, 1 << 30),
    st.booleans(),
)
def test_fuzz_message_reader(
    data: bytes, sizes: list[int], startup: bool, cap: int, eof: bool
) -> None:
    reader = MessageReader(max_message_length=cap, startup=startup)
    pos = turn = 0
    chunks = []
    while pos < len(data):
        chunks.append(data[pos : pos + sizes[turn % len(sizes)]])
        pos, turn = pos + len(chunks[-1]), turn + 1
    if eof:
        chunks.append(b"")
    for chunk in chunks:
        reader.receive_data(chunk)
        try:
            while (item := reader.next_message()) is not None:
                type_byte, body = item
                assert 0 <= type_byte <= 255 and isinstance(body, bytes)
        except RemoteProtocolError:
            if reader.failed:
                return


@FUZZ
@given(st.binary(max_size=200), AUTH, st.booleans())
def test_fuzz_decoders(data: bytes, auth: AuthContext, startup: bool) -> None:
    frontend = FrontendDecoder(startup=startup)
    frontend.auth_context = auth
    frontend.receive_data(data)
    frontend.receive_data(b"")
    _drain(frontend.next_message, len(data) + 2, lambda: frontend.reader.failed)
    backend = BackendDecoder()
    backend.receive_data(data)
    backend.receive_data(b"")
    _drain(backend.next_message, len(data) + 2, lambda: backend.reader.failed)
