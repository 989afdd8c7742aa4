"""Bodies to messages, client side: startup packets and typed frontend messages.

Dispatch is a dict keyed by type byte (one lookup, no chain of comparisons);
'p' is handled apart because its meaning depends on the authentication
exchange, which only the caller can know.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Literal, assert_never

from ._errors import LocalProtocolError, RemoteProtocolError
from ._messages_frontend import (
    AuthContext,
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
    GSSENC_REQUEST_CODE,
    MAX_SECRET_KEY_LENGTH,
    MIN_SECRET_KEY_LENGTH,
    SSL_REQUEST_CODE,
    STARTUP_MAX_LENGTH,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
)
from ._wire import ENCODING, ERRORS, BodyReader, describe_type

_STARTUP_HEADER = struct.Struct("!iI")  # length (signed: catch negatives), code

# Messages without a body are immutable and equal to any other instance, so
# decoding hands out these shared ones instead of allocating.
_SYNC: Final = Sync()
_FLUSH: Final = Flush()
_TERMINATE: Final = Terminate()
_COPY_DONE: Final = CopyDone()
_SSL_REQUEST: Final = SSLRequest()
_GSSENC_REQUEST: Final = GSSENCRequest()


def _empty(message: FrontendMessage, what: str) -> Callable[[bytes], FrontendMessage]:
    def decode(body: bytes) -> FrontendMessage:
        if body:
            raise RemoteProtocolError(f"malformed {what}: expected no body, got {len(body)} bytes")
        return message

    return decode


def _kind(r: BodyReader) -> Literal["S", "P"]:
    kind = r.byte("kind")
    if kind == 0x53:
        return "S"
    if kind == 0x50:
        return "P"
    raise r.error(f"kind must be 'S' or 'P', got {describe_type(kind)}")


def _query(body: bytes) -> Query:
    r = BodyReader(body, "Query")
    message = Query(query=r.cstring("query string"))
    r.end()
    return message


def _parse(body: bytes) -> Parse:
    r = BodyReader(body, "Parse")
    statement = r.cstring("statement name")
    query = r.cstring("query string")
    param_types = r.uint32_array(r.uint16("parameter type count"), "parameter types")
    r.end()
    return Parse(statement=statement, query=query, param_types=param_types)


def _nullables(r: BodyReader, count: int, name: str) -> tuple[bytes | None, ...]:
    # Each value needs at least its 4-byte length: reject absurd counts up front.
    if count * 4 > r.remaining:
        raise r.error(f"{count} {name} need at least {count * 4} bytes but {r.remaining} left")
    return tuple([r.nullable(name) for _ in range(count)])


def _bind(body: bytes) -> Bind:
    r = BodyReader(body, "Bind")
    portal = r.cstring("portal name")
    statement = r.cstring("statement name")
    param_formats = r.int16_array(r.uint16("parameter format count"), "parameter formats")
    params = _nullables(r, r.uint16("parameter count"), "parameter values")
    result_formats = r.int16_array(r.uint16("result format count"), "result formats")
    r.end()
    return Bind(
        portal=portal,
        statement=statement,
        param_formats=param_formats,
        params=params,
        result_formats=result_formats,
    )


def _describe(body: bytes) -> Describe:
    r = BodyReader(body, "Describe")
    kind = _kind(r)
    message = Describe(kind=kind, name=r.cstring("name"))
    r.end()
    return message


def _close(body: bytes) -> Close:
    r = BodyReader(body, "Close")
    kind = _kind(r)
    message = Close(kind=kind, name=r.cstring("name"))
    r.end()
    return message


def _execute(body: bytes) -> Execute:
    r = BodyReader(body, "Execute")
    portal = r.cstring("portal name")
    message = Execute(portal=portal, max_rows=r.int32("row limit"))
    r.end()
    return message


def _copy_data(body: bytes) -> CopyData:
    return CopyData(data=body)


def _copy_fail(body: bytes) -> CopyFail:
    r = BodyReader(body, "CopyFail")
    message = CopyFail(message=r.cstring("error message"))
    r.end()
    return message


def _function_call(body: bytes) -> FunctionCall:
    r = BodyReader(body, "FunctionCall")
    function_oid = r.uint32("function OID")
    arg_formats = r.int16_array(r.uint16("argument format count"), "argument formats")
    args = _nullables(r, r.uint16("argument count"), "argument values")
    result_format = r.int16("result format")
    r.end()
    return FunctionCall(
        function_oid=function_oid, arg_formats=arg_formats, args=args, result_format=result_format
    )


def _auth_response(body: bytes, auth: AuthContext) -> FrontendMessage:
    match auth:
        case "password":
            r = BodyReader(body, "PasswordMessage")
            password = PasswordMessage(password=r.cbytes("password"))
            r.end()
            return password
        case "sasl-initial":
            r = BodyReader(body, "SASLInitialResponse")
            mechanism = r.cstring("mechanism")
            initial = SASLInitialResponse(mechanism=mechanism, data=r.nullable("initial response"))
            r.end()
            return initial
        case "sasl":
            return SASLResponse(data=body)
        case "gss":
            return GSSResponse(data=body)
        case _:
            assert_never(auth)


_FRONTEND: Final[dict[int, Callable[[bytes], FrontendMessage]]] = {
    ord("Q"): _query,
    ord("P"): _parse,
    ord("B"): _bind,
    ord("D"): _describe,
    ord("E"): _execute,
    ord("C"): _close,
    ord("S"): _empty(_SYNC, "Sync"),
    ord("H"): _empty(_FLUSH, "Flush"),
    ord("X"): _empty(_TERMINATE, "Terminate"),
    ord("d"): _copy_data,
    ord("c"): _empty(_COPY_DONE, "CopyDone"),
    ord("f"): _copy_fail,
    ord("F"): _function_call,
}
FRONTEND_TYPES: Final = frozenset([*_FRONTEND, ord("p")])
_AUTH_CONTEXTS: Final = frozenset({"password", "sasl-initial", "sasl", "gss"})


def decode_frontend(
    type_byte: int, body: bytes, *, auth: AuthContext = "password"
) -> FrontendMessage:
    """Decode one typed frontend message body (without type byte and length).

    ``auth`` says what a 'p' message is: the answer to a password request, the
    first or a later SASL message, or a GSSAPI/SSPI token.
    """
    if type_byte == 0x70:  # 'p'
        if auth not in _AUTH_CONTEXTS:
            raise LocalProtocolError(f"unknown auth context {auth!r}")
        return _auth_response(body, auth)
    decoder = _FRONTEND.get(type_byte)
    if decoder is None:
        raise RemoteProtocolError(f"unknown frontend message type {describe_type(type_byte)}")
    return decoder(body)


def _startup_message(packet: bytes, version: int) -> StartupMessage:
    r = BodyReader(packet, "StartupMessage", pos=8)
    parameters: list[tuple[str, str]] = []
    while True:
        if not r.remaining:
            raise r.error("missing the terminating NUL after the parameters")
        name = r.cbytes("parameter name")
        if not name:
            break
        value = r.cstring("parameter value")
        parameters.append((name.decode(ENCODING, ERRORS), value))
    r.end()
    return StartupMessage(protocol_version=version, parameters=tuple(parameters))


def _cancel_request(packet: bytes) -> CancelRequest:
    r = BodyReader(packet, "CancelRequest", pos=8)
    process_id = r.int32("process ID")
    secret_key = r.rest()
    if not MIN_SECRET_KEY_LENGTH <= len(secret_key) <= MAX_SECRET_KEY_LENGTH:
        raise r.error(
            f"secret key of {len(secret_key)} bytes, must be "
            f"{MIN_SECRET_KEY_LENGTH} to {MAX_SECRET_KEY_LENGTH}"
        )
    return CancelRequest(process_id=process_id, secret_key=secret_key)


def decode_startup(packet: bytes) -> StartupPacket:
    """Decode a whole untyped startup-phase packet, length word included."""
    if len(packet) < 8:
        raise RemoteProtocolError(f"startup packet of {len(packet)} bytes, need at least 8")
    length, code = _STARTUP_HEADER.unpack_from(packet)
    if length != len(packet):
        raise RemoteProtocolError(
            f"startup packet declares {length} bytes but {len(packet)} were given"
        )
    if length > STARTUP_MAX_LENGTH:
        raise RemoteProtocolError(
            f"startup packet of {length} bytes exceeds the limit of {STARTUP_MAX_LENGTH}"
        )
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        name = "SSLRequest" if code == SSL_REQUEST_CODE else "GSSENCRequest"
        if length != 8:
            raise RemoteProtocolError(f"malformed {name}: expected 8 bytes, got {length}")
        return _SSL_REQUEST if code == SSL_REQUEST_CODE else _GSSENC_REQUEST
    if code == CANCEL_REQUEST_CODE:
        return _cancel_request(packet)
    major, minor = code >> 16, code & 0xFFFF
    if major == 1234:
        raise RemoteProtocolError(f"unknown startup request code 1234.{minor}")
    if major != 3:
        raise RemoteProtocolError(f"unsupported frontend protocol {major}.{minor}")
    return _startup_message(packet, code)
