"""Messages to bytes: startup packets, frontend messages, and ``encode`` for all.

Each function is one ``match`` that mypy proves exhaustive through
``unencodable``. Body-less messages come from pre-encoded constants, so
``encode(Sync())`` returns ``SYNC`` itself. Values the wire cannot carry
raise LocalProtocolError: a caller bug, never the peer's.
"""

from __future__ import annotations

from typing import Final

from ._encode_backend import COPY_DONE, encode_backend, unencodable
from ._messages_backend import BackendMessage
from ._messages_frontend import (
    Bind,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    Describe,
    Execute,
    Flush,
    FrontendMessage,
    FunctionCall,
    GSSResponse,
    Parse,
    PasswordMessage,
    Query,
    SASLInitialResponse,
    SASLResponse,
    Sync,
    Terminate,
)
from ._messages_startup import (
    CANCEL_REQUEST_CODE,
    STARTUP_MAX_LENGTH,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
)
from ._wire import BodyWriter

Message = StartupPacket | FrontendMessage | BackendMessage

SYNC: Final = b"S\x00\x00\x00\x04"
FLUSH: Final = b"H\x00\x00\x00\x04"
TERMINATE: Final = b"X\x00\x00\x00\x04"
SSL_REQUEST: Final = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # length 8, code 80877103
GSSENC_REQUEST: Final = b"\x00\x00\x00\x08\x04\xd2\x16\x30"  # length 8, code 80877104
# One-byte answers to SSLRequest / GSSENCRequest; not framed messages.
SSL_NO: Final = b"N"
SSL_YES: Final = b"S"
GSSENC_NO: Final = b"N"
GSSENC_YES: Final = b"G"


def _startup_message(message: StartupMessage) -> bytes:
    w = BodyWriter(None, "StartupMessage")
    version = message.protocol_version
    if not isinstance(version, int) or version >> 16 != 3:
        raise w.error(f"protocol version {version!r} is not 3.x")
    w.uint32(version, "protocol version")
    for name, value in message.parameters:
        if not name:
            raise w.error("a parameter name is empty (it would end the list)")
        w.cstring(name, "parameter name")
        w.cstring(value, "parameter value")
    w.terminator()
    packet = w.finish()
    if len(packet) > STARTUP_MAX_LENGTH:
        raise w.error(
            f"{len(packet)} bytes exceed the startup packet limit of {STARTUP_MAX_LENGTH}"
        )
    return packet


def _cancel_request(message: CancelRequest) -> bytes:
    w = BodyWriter(None, "CancelRequest")
    w.int32(CANCEL_REQUEST_CODE, "request code")
    w.int32(message.process_id, "process ID")
    w.secret_key(message.secret_key)
    return w.finish()


def _describe_or_close(type_byte: int, kind: str, name: str, what: str) -> bytes:
    w = BodyWriter(type_byte, what)
    if kind not in ("S", "P"):
        raise w.error(f"kind must be 'S' or 'P', got {kind!r}")
    w.byte(kind, "kind")
    w.cstring(name, "name")
    return w.finish()


def _encode_frontend(message: FrontendMessage) -> bytes:
    match message:
        case Sync():
            return SYNC
        case Flush():
            return FLUSH
        case Terminate():
            return TERMINATE
        case CopyDone():
            return COPY_DONE
        case CopyData(data=data):
            w = BodyWriter(ord("d"), "CopyData")
            w.raw(data, "data")
            return w.finish()
        case Query(query=query):
            w = BodyWriter(ord("Q"), "Query")
            w.cstring(query, "query string")
            return w.finish()
        case Parse(statement=statement, query=query, param_types=param_types):
            w = BodyWriter(ord("P"), "Parse")
            w.cstring(statement, "statement name")
            w.cstring(query, "query string")
            w.count(param_types, "parameter types")
            for oid in param_types:
                w.uint32(oid, "parameter type OID")
            return w.finish()
        case Bind():
            w = BodyWriter(ord("B"), "Bind")
            w.cstring(message.portal, "portal name")
            w.cstring(message.statement, "statement name")
            w.int16_array(message.param_formats, "parameter formats")
            w.nullables(message.params, "parameter values")
            w.int16_array(message.result_formats, "result formats")
            return w.finish()
        case Describe(kind=kind, name=name):
            return _describe_or_close(ord("D"), kind, name, "Describe")
        case Close(kind=kind, name=name):
            return _describe_or_close(ord("C"), kind, name, "Close")
        case Execute(portal=portal, max_rows=max_rows):
            w = BodyWriter(ord("E"), "Execute")
            w.cstring(portal, "portal name")
            w.int32(max_rows, "row limit")
            return w.finish()
        case CopyFail(message=text):
            w = BodyWriter(ord("f"), "CopyFail")
            w.cstring(text, "error message")
            return w.finish()
        case FunctionCall():
            w = BodyWriter(ord("F"), "FunctionCall")
            w.uint32(message.function_oid, "function OID")
            w.int16_array(message.arg_formats, "argument formats")
            w.nullables(message.args, "argument values")
            w.int16(message.result_format, "result format")
            return w.finish()
        case PasswordMessage(password=password):
            w = BodyWriter(ord("p"), "PasswordMessage")
            w.cbytes(password, "password")
            return w.finish()
        case SASLInitialResponse(mechanism=mechanism, data=data):
            w = BodyWriter(ord("p"), "SASLInitialResponse")
            w.cstring(mechanism, "mechanism")
            w.nullable(data, "initial response")
            return w.finish()
        case SASLResponse(data=data) | GSSResponse(data=data):
            w = BodyWriter(ord("p"), type(message).__name__)
            w.raw(data, "data")
            return w.finish()
        case _:
            unencodable(message)


def encode(message: Message) -> bytes:
    """The complete wire bytes of ``message`` (type byte and length included)."""
    match message:
        case StartupMessage():
            return _startup_message(message)
        case SSLRequest():
            return SSL_REQUEST
        case GSSENCRequest():
            return GSSENC_REQUEST
        case CancelRequest():
            return _cancel_request(message)
        case (
            Query()
            | Parse()
            | Bind()
            | Describe()
            | Execute()
            | Close()
            | Sync()
            | Flush()
            | Terminate()
            | CopyData()
            | CopyDone()
            | CopyFail()
            | FunctionCall()
            | PasswordMessage()
            | SASLInitialResponse()
            | SASLResponse()
            | GSSResponse()
        ):
            return _encode_frontend(message)
        case _:
            # The rest is the backend union; encode_backend rejects anything else.
            return encode_backend(message)
