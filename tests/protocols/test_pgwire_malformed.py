"""Garbage from the peer (RemoteProtocolError), misuse by us (LocalProtocolError), recovery."""

from __future__ import annotations

import ast
import pathlib

import pytest

from protocols.pgwire import (
    BackendDecoder,
    BackendKeyData,
    Bind,
    CancelRequest,
    CommandComplete,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    FieldDescription,
    FrontendDecoder,
    LocalProtocolError,
    MessageReader,
    NoticeResponse,
    Parse,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
    RowDescription,
    StartupMessage,
    Sync,
    decode_backend,
    decode_frontend,
    decode_startup,
    encode,
)

# --- framing -------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"Q\x00\x00\x00\x03", id="length-3"),
        pytest.param(b"Q\x00\x00\x00\x00", id="length-0"),
        pytest.param(b"Q\xff\xff\xff\xff", id="negative"),
        pytest.param(b"Q\x7f\xff\xff\xff", id="over-default-cap"),
    ],
)
def test_bad_length_word(header: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(header)
    with pytest.raises(RemoteProtocolError):
        reader.next_message()
    # Framing is lost for good: the reader keeps failing.
    reader.receive_data(b"S\x00\x00\x00\x04")
    with pytest.raises(RemoteProtocolError):
        reader.next_message()


def test_oversized_is_caught_before_the_body_arrives() -> None:
    reader = MessageReader(max_message_length=100)
    reader.receive_data(b"D\x00\x00\x00\x64")  # exactly the cap: fine, waits for body
    assert reader.next_message() is None
    reader = MessageReader(max_message_length=100)
    reader.receive_data(b"D\x00\x00\x00\x65")
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        reader.next_message()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x00\x00\x00\x07\x00\x03\x00", id="length-7"),
        pytest.param(b"\x00\x00\x27\x11", id="length-10001"),
        pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-client-hello"),
    ],
)
def test_bad_startup_length(data: bytes) -> None:
    reader = MessageReader(startup=True)
    reader.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="invalid length of startup packet"):
        reader.next_message()


def test_startup_length_at_the_limit_is_accepted() -> None:
    reader = MessageReader(startup=True)
    reader.receive_data(b"\x00\x00\x27\x10")  # exactly STARTUP_MAX_LENGTH
    assert reader.next_message() is None


def test_eof_mid_message() -> None:
    for partial in (b"Z", b"Z\x00\x00", b"Z\x00\x00\x00\x05"):
        reader = MessageReader()
        reader.receive_data(partial)
        assert reader.next_message() is None
        reader.receive_data(b"")
        with pytest.raises(RemoteProtocolError, match="connection closed mid-message"):
            reader.next_message()


def test_eof_at_a_boundary_is_clean() -> None:
    reader = MessageReader()
    reader.receive_data(b"S\x00\x00\x00\x04")
    reader.receive_data(b"")
    assert reader.eof
    assert reader.next_message() == (ord("S"), b"")
    assert reader.next_message() is None
    reader.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(LocalProtocolError):
        reader.receive_data(b"more")


def test_expect_startup_while_half_received_is_misuse() -> None:
    reader = MessageReader()
    reader.receive_data(b"Q\x00\x00\x00\x10SEL")
    assert reader.next_message() is None
    with pytest.raises(LocalProtocolError):
        reader.expect_startup()


def test_expect_startup_after_ssl_request() -> None:
    reader = MessageReader(startup=True)
    reader.receive_data(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    assert reader.next_message() == (0, b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    assert not reader.expecting_startup
    reader.expect_startup()
    reader.receive_data(b"\x00\x00\x00\x09\x00\x03\x00\x00\x00S\x00\x00\x00\x04")
    assert reader.next_message() == (0, b"\x00\x00\x00\x09\x00\x03\x00\x00\x00")
    assert reader.next_message() == (ord("S"), b"")


def test_many_messages_and_compaction() -> None:
    # Enough data to cross the compaction threshold several times, in odd chunks.
    stream = (b"D\x00\x00\x00\x0c\x00\x01\x00\x00\x00\x02hi" + b"S\x00\x00\x00\x04") * 20000
    reader = MessageReader()
    seen = 0
    for start in range(0, len(stream), 4093):
        reader.receive_data(stream[start : start + 4093])
        while (frame := reader.next_message()) is not None:
            assert frame in ((ord("D"), b"\x00\x01\x00\x00\x00\x02hi"), (ord("S"), b""))
            seen += 1
    assert seen == 40000
    assert reader.buffered == 0


def test_large_message_in_chunks() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    reader = MessageReader()
    wire = b"d" + (len(body) + 4).to_bytes(4, "big") + body
    for start in range(0, len(wire), 65536):
        assert reader.next_message() is None
        reader.receive_data(wire[start : start + 65536])
    reader.receive_data(b"S\x00\x00\x00\x04Z\x00")  # compaction keeps the partial tail
    assert reader.next_message() == (ord("d"), body)
    assert reader.next_message() == (ord("S"), b"")
    reader.receive_data(b"\x00\x00\x05I")
    assert reader.next_message() == (ord("Z"), b"I")
    assert reader.buffered == 0


# --- bodies --------------------------------------------------------------

FRONTEND_GARBAGE = [
    pytest.param(ord("Q"), b"SELECT 1", id="Query-no-nul"),
    pytest.param(ord("Q"), b"SELECT 1\x00x", id="Query-trailing"),
    pytest.param(ord("P"), b"s\x00SELECT\x00\x00\x02\x00\x00\x00\x17", id="Parse-short-oids"),
    pytest.param(ord("B"), b"\x00\x00\x00\x00\x00\x02\x00\x00\x00\x09ab", id="Bind-short-value"),
    pytest.param(ord("B"), b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe", id="Bind-length-minus-2"),
    pytest.param(ord("B"), b"\x00\x00\x00\x05\x00", id="Bind-format-count"),
    pytest.param(ord("D"), b"Xname\x00", id="Describe-kind"),
    pytest.param(ord("C"), b"", id="Close-empty"),
    pytest.param(ord("E"), b"\x00\x00\x00", id="Execute-short-int"),
    pytest.param(ord("S"), b"\x00", id="Sync-with-body"),
    pytest.param(ord("F"), b"\x00\x00\x06\x3e\x00\x00\x00\x00", id="FunctionCall-no-result"),
    pytest.param(ord("p"), b"secret", id="Password-no-nul"),
    pytest.param(ord("z"), b"", id="unknown-type"),
    pytest.param(0, b"\x00\x00\x00\x08", id="type-zero"),
]


@pytest.mark.parametrize(("type_byte", "body"), FRONTEND_GARBAGE)
def test_malformed_frontend(type_byte: int, body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_frontend(type_byte, body)


def test_malformed_sasl_initial_response() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_frontend(ord("p"), b"SCRAM\x00\x00\x00\x00\x10abc", auth="sasl-initial")
    with pytest.raises(RemoteProtocolError):
        decode_frontend(ord("p"), b"SCRAM\x00\x00\x00", auth="sasl-initial")


BACKEND_GARBAGE = [
    pytest.param(ord("D"), b"\x00\x03\x00\x00\x00\x01a", id="DataRow-count-too-large"),
    pytest.param(ord("D"), b"\x00\x01\x00\x00\x00\x09abc", id="DataRow-value-too-long"),
    pytest.param(ord("D"), b"\x00\x01\xff\xff\xff\xfe", id="DataRow-length-minus-2"),
    pytest.param(ord("D"), b"\x00\x01\x00\x00\x00\x01ab", id="DataRow-trailing"),
    pytest.param(ord("D"), b"\x00", id="DataRow-short-count"),
    pytest.param(ord("D"), b"\x00\x02\x00\x00\x00\x00\x00\x00", id="DataRow-cut-length"),
    pytest.param(ord("T"), b"\xff\xffid\x00", id="RowDescription-count"),
    pytest.param(ord("T"), b"\x00\x01" + b"i" * 30, id="RowDescription-no-nul"),
    pytest.param(ord("S"), b"client_encoding\x00UTF8", id="ParameterStatus-no-nul"),
    pytest.param(ord("C"), b"", id="CommandComplete-empty"),
    pytest.param(ord("E"), b"SERROR\x00", id="ErrorResponse-no-terminator"),
    pytest.param(ord("N"), b"SNOTICE", id="NoticeResponse-no-nul"),
    pytest.param(ord("R"), b"\x00\x00\x00\x04", id="Authentication-crypt-obsolete"),
    pytest.param(ord("R"), b"\x00\x00\x00\x05\x01\x02", id="MD5-short-salt"),
    pytest.param(ord("R"), b"\x00\x00\x00\x00\x00", id="AuthenticationOk-trailing"),
    pytest.param(ord("R"), b"\x00\x00\x00\x0aSCRAM\x00", id="SASL-no-final-nul"),
    pytest.param(ord("R"), b"\x00\x00", id="Authentication-short"),
    pytest.param(ord("K"), b"\x00\x00\x00\x01abc", id="BackendKeyData-key-3"),
    pytest.param(ord("K"), b"\x00\x00\x00\x01" + bytes(257), id="BackendKeyData-key-257"),
    pytest.param(ord("Z"), b"X", id="ReadyForQuery-status"),
    pytest.param(ord("Z"), b"", id="ReadyForQuery-empty"),
    pytest.param(ord("Z"), b"II", id="ReadyForQuery-long"),
    pytest.param(ord("v"), b"\x00\x00\x00\x00\xff\xff\xff\xff", id="Negotiate-negative"),
    pytest.param(ord("v"), b"\x00\x00\x00\x00\x00\x00\x00\x02a\x00", id="Negotiate-short"),
    pytest.param(ord("t"), b"\x00\x02\x00\x00\x00\x17", id="ParameterDescription-short"),
    pytest.param(ord("G"), b"\x00\x00\x02\x00\x00", id="CopyInResponse-short"),
    pytest.param(ord("V"), b"\x00\x00\x00\x05ab", id="FunctionCallResponse-short"),
    pytest.param(ord("A"), b"\x00\x00\x00\x01chan\x00", id="Notification-no-payload"),
    pytest.param(ord("1"), b"\x00", id="ParseComplete-with-body"),
    pytest.param(ord("Q"), b"SELECT 1\x00", id="unknown-type"),
]


@pytest.mark.parametrize(("type_byte", "body"), BACKEND_GARBAGE)
def test_malformed_backend(type_byte: int, body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_backend(type_byte, body)


STARTUP_GARBAGE = [
    pytest.param(b"\x00\x00\x00", id="too-short"),
    pytest.param(b"\x00\x00\x00\x09\x00\x03\x00\x00", id="length-mismatch"),
    pytest.param(b"\x00\x00\x00\x08\x00\x03\x00\x00", id="no-terminator"),
    pytest.param(b"\x00\x00\x00\x0e\x00\x03\x00\x00user\x00\x00", id="empty-value-no-terminator"),
    pytest.param(b"\x00\x00\x00\x0d\x00\x03\x00\x00user\x00", id="missing-value"),
    pytest.param(b"\x00\x00\x00\x0b\x00\x03\x00\x00\x00\x00\x00", id="bytes-after-terminator"),
    pytest.param(b"\x00\x00\x00\x09\x00\x02\x00\x00\x00", id="protocol-2"),
    pytest.param(b"\x00\x00\x00\x08\x04\xd2\x16\x31", id="unknown-1234-code"),
    pytest.param(b"\x00\x00\x00\x09\x04\xd2\x16\x2f\x00", id="SSLRequest-with-body"),
    pytest.param(b"\x00\x00\x00\x0f\x04\xd2\x16\x2e\x00\x00\x00\x01abc", id="cancel-key-3"),
    pytest.param(b"\x00\x00\x00\x0a\x04\xd2\x16\x2e\x00\x00", id="cancel-no-pid"),
    pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
    pytest.param(b"\x00\x00\x27\x11\x00\x03\x00\x00" + bytes(10001 - 8), id="too-long"),
]


@pytest.mark.parametrize("packet", STARTUP_GARBAGE)
def test_malformed_startup(packet: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_startup(packet)


def test_frontend_framing_continues_after_bad_bodies() -> None:
    decoder = FrontendDecoder(startup=False)
    decoder.receive_data(
        b"Q\x00\x00\x00\x0dSELECT 1\x00"
        + b"Q\x00\x00\x00\x0cSELECT 1"  # right length, missing NUL
        + b"z\x00\x00\x00\x06ab"  # unknown type byte
        + b"S\x00\x00\x00\x04"
    )
    assert decoder.next_message() == Query(query="SELECT 1")
    with pytest.raises(RemoteProtocolError, match="NUL"):
        decoder.next_message()
    with pytest.raises(RemoteProtocolError, match="unknown frontend message type 'z'"):
        decoder.next_message()
    assert decoder.next_message() == Sync()
    assert decoder.next_message() is None


def test_backend_framing_continues_after_bad_bodies() -> None:
    decoder = BackendDecoder()
    decoder.receive_data(
        b"D\x00\x00\x00\x0b\x00\x05\x00\x00\x00\x01a"  # claims 5 columns
        + b"C\x00\x00\x00\x0dSELECT 1\x00"
        + b"Z\x00\x00\x00\x05I"
    )
    with pytest.raises(RemoteProtocolError, match="DataRow"):
        decoder.next_message()
    assert decoder.next_message() == CommandComplete(tag="SELECT 1")
    assert decoder.next_message() == ReadyForQuery(status="I")


def test_frontend_decoder_bad_startup_then_nothing_more() -> None:
    decoder = FrontendDecoder()
    decoder.receive_data(b"\x00\x00\x00\x09\x00\x02\x00\x00\x00")
    with pytest.raises(RemoteProtocolError, match=r"unsupported frontend protocol 2\.0"):
        decoder.next_message()


# --- local misuse --------------------------------------------------------

BAD_MESSAGES = [
    pytest.param(Query(query="a\x00b"), id="nul-in-string"),
    pytest.param(Query(query="\ud800"), id="lone-surrogate"),
    pytest.param(Query(query=b"x"), id="bytes-for-str"),  # type: ignore[arg-type]
    pytest.param(Describe(kind="X", name=""), id="describe-kind"),  # type: ignore[arg-type]
    pytest.param(ReadyForQuery(status="X"), id="status"),  # type: ignore[arg-type]
    pytest.param(Bind(param_formats=(70000,)), id="int16-overflow"),
    pytest.param(Bind(params=(b"",) * 65536), id="too-many-params"),
    pytest.param(Bind(params=("text",)), id="str-param"),  # type: ignore[arg-type]
    pytest.param(Parse(query="x", param_types=(-1,)), id="negative-oid"),
    pytest.param(Execute(max_rows=2**31), id="int32-overflow"),
    pytest.param(BackendKeyData(process_id=1, secret_key=b"abc"), id="key-3"),
    pytest.param(CancelRequest(process_id=1, secret_key=bytes(257)), id="key-257"),
    pytest.param(StartupMessage(protocol_version=131072), id="protocol-2"),
    pytest.param(StartupMessage(parameters=(("", "x"),)), id="empty-name"),
    pytest.param(StartupMessage(parameters=(("options", "x" * 10000),)), id="too-long"),
    pytest.param(ErrorResponse(fields=(("SS", "ERROR"),)), id="two-char-code"),
    pytest.param(NoticeResponse(fields=(("\x00", "x"),)), id="nul-code"),
    pytest.param(
        RowDescription(fields=(FieldDescription(name="a", type_oid=23, type_size=40000),)),
        id="type-size-overflow",
    ),
    pytest.param(DataRow(values=(None,) * 70000), id="too-many-columns"),
]


@pytest.mark.parametrize("message", BAD_MESSAGES)
def test_encode_rejects_invalid_values(message: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode(message)  # type: ignore[arg-type]


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(LocalProtocolError, match="not a PostgreSQL message"):
        encode("SELECT 1")  # type: ignore[arg-type]


def test_decode_frontend_rejects_unknown_auth_context() -> None:
    with pytest.raises(LocalProtocolError):
        decode_frontend(ord("p"), b"x\x00", auth="kerberos")  # type: ignore[arg-type]


def test_reader_rejects_silly_cap() -> None:
    with pytest.raises(LocalProtocolError):
        MessageReader(max_message_length=3)


# --- layering ------------------------------------------------------------

FORBIDDEN = {"asyncio", "socket", "selectors", "ssl", "recorder", "flux_proxy", "trio", "anyio"}


def test_pgwire_imports_no_io() -> None:
    package = pathlib.Path(__file__).parents[2] / "protocols" / "pgwire"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
