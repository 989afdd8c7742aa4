"""Decoders across a session's phases, and the ErrorResponse helpers."""

from __future__ import annotations

import pytest

from protocols.pgwire import (
    AUTHENTICATION_OK,
    READY_FOR_QUERY,
    SSL_NO,
    AuthContext,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendDecoder,
    ErrorResponse,
    FrontendDecoder,
    GSSENCRequest,
    GSSResponse,
    LocalProtocolError,
    NoticeResponse,
    ParameterStatus,
    PasswordMessage,
    Query,
    ReadyForQuery,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupMessage,
    Terminate,
    auth_context_for,
    decode_backend,
    encode,
    error_response,
    notice_response,
)


def context(decoder: BackendDecoder | FrontendDecoder) -> AuthContext:
    # A call, so that mypy does not keep an earlier narrowing of the attribute.
    return decoder.auth_context


STARTUP = b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00"


def test_ssl_request_then_startup_then_typed() -> None:
    decoder = FrontendDecoder()
    decoder.receive_data(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    assert decoder.next_message() == SSLRequest()
    assert decoder.reader.buffered == 0  # nothing smuggled ahead of a TLS handshake
    assert SSL_NO == b"N"  # what the proxy answers to stay in plaintext
    decoder.receive_data(STARTUP + b"Q\x00\x00\x00\x05\x00")
    assert decoder.next_message() == StartupMessage(parameters=(("user", "bob"),))
    assert decoder.next_message() == Query(query="")


def test_gssenc_then_ssl_then_startup() -> None:
    # libpq with gssencmode=prefer falls back to SSLRequest after a 'N'.
    decoder = FrontendDecoder()
    decoder.receive_data(
        b"\x00\x00\x00\x08\x04\xd2\x16\x30" + b"\x00\x00\x00\x08\x04\xd2\x16\x2f" + STARTUP
    )
    assert decoder.next_message() == GSSENCRequest()
    assert decoder.next_message() == SSLRequest()
    assert isinstance(decoder.next_message(), StartupMessage)
    decoder.receive_data(b"X\x00\x00\x00\x04")
    assert decoder.next_message() == Terminate()


def test_scram_exchange_sets_the_meaning_of_p() -> None:
    backend, frontend = BackendDecoder(), FrontendDecoder(startup=False)
    backend.receive_data(
        b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"
        + b"R\x00\x00\x00\x0d\x00\x00\x00\x0br=abc"
    )
    assert backend.next_message() == AuthenticationSASL(mechanisms=("SCRAM-SHA-256",))
    frontend.auth_context = backend.auth_context
    assert context(frontend) == "sasl-initial"
    frontend.receive_data(b"p\x00\x00\x00\x1aSCRAM-SHA-256\x00\x00\x00\x00\x04n,,x")
    assert frontend.next_message() == SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,x")
    assert context(frontend) == "sasl"  # advanced by the decoder itself
    assert backend.next_message() == AuthenticationSASLContinue(data=b"r=abc")
    assert context(backend) == "sasl"
    frontend.receive_data(b"p\x00\x00\x00\x07c=x")
    assert frontend.next_message() == SASLResponse(data=b"c=x")
    backend.receive_data(b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=sig" + AUTHENTICATION_OK)
    assert backend.next_message() == AuthenticationSASLFinal(data=b"v=sig")
    assert backend.next_message() == AuthenticationOk()


def test_md5_and_sspi_contexts() -> None:
    assert auth_context_for(AuthenticationMD5Password(salt=b"abcd")) == "password"
    assert auth_context_for(AuthenticationSSPI()) == "gss"
    assert auth_context_for(ReadyForQuery(status="I")) is None
    frontend = FrontendDecoder(startup=False)
    frontend.receive_data(b"p\x00\x00\x00\x08md5\x00")
    assert frontend.next_message() == PasswordMessage(password=b"md5")
    frontend.auth_context = "gss"
    frontend.receive_data(b"p\x00\x00\x00\x08md5\x00")
    assert frontend.next_message() == GSSResponse(data=b"md5\x00")


def test_backend_messages_in_any_state() -> None:
    backend = BackendDecoder()
    backend.receive_data(
        b"S\x00\x00\x00\x16application_name\x00\x00"
        + b"N\x00\x00\x00\x09Mhi\x00\x00"
        + READY_FOR_QUERY["I"]
    )
    assert backend.next_message() == ParameterStatus(name="application_name", value="")
    assert backend.next_message() == NoticeResponse(fields=(("M", "hi"),))
    assert backend.next_message() == ReadyForQuery(status="I")


def test_error_response_helper() -> None:
    error = error_response(
        "FATAL", "28P01", 'password authentication failed for user "bob"', hint="check it"
    )
    assert error.fields == (
        ("S", "FATAL"),
        ("V", "FATAL"),
        ("C", "28P01"),
        ("M", 'password authentication failed for user "bob"'),
        ("H", "check it"),
    )
    assert (error.severity, error.code, error.detail, error.hint) == (
        "FATAL",
        "28P01",
        None,
        "check it",
    )
    assert error.as_dict()["M"] == error.message
    wire = encode(error)
    assert decode_backend(wire[0], wire[5:]) == error


def test_error_response_all_fields_in_server_order() -> None:
    error = error_response(
        "ERRO",
        "23505",
        "duplicate key",
        severity_nonlocalized="ERROR",
        detail="d",
        position="7",
        where="w",
        schema="public",
        table="t",
        column="c",
        data_type="int4",
        constraint="t_pkey",
        file="nbtinsert.c",
        line="666",
        routine="_bt_check_unique",
        internal_position="1",
        internal_query="q",
    )
    codes = "".join(code for code, _ in error.fields)
    assert codes == "SVCMDPpqWstcdnFLR"
    assert error.severity == "ERROR"  # the untranslated V wins over a localized S
    assert error.get("S") == "ERRO"


def test_notice_helper_and_missing_fields() -> None:
    notice = notice_response("WARNING", "01000", "careful", detail="x")
    assert notice.code == "01000" and notice.detail == "x"
    bare = ErrorResponse(fields=())
    assert (bare.severity, bare.code, bare.message, bare.hint) == ("", "", "", None)
    other: object = NoticeResponse(fields=(("M", "a"),))
    assert ErrorResponse(fields=(("M", "a"),)) != other  # same fields, different message


@pytest.mark.parametrize("code", ["4200", "42p01", "42P011", ""])
def test_error_response_rejects_bad_sqlstate(code: str) -> None:
    with pytest.raises(LocalProtocolError):
        error_response("ERROR", code, "x")


def test_error_response_rejects_empty_severity() -> None:
    with pytest.raises(LocalProtocolError):
        error_response("", "XX000", "x")
