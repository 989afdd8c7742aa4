"""Bodies to messages, server side.

DataRow gets a hand-unrolled loop because it is most of what a backend sends;
everything else goes through BodyReader, which trades a little speed for one
place that turns every shortfall into a RemoteProtocolError.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from ._errors import RemoteProtocolError
from ._messages_backend import (
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationMessage,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendKeyData,
    BackendMessage,
    BindComplete,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    FieldDescription,
    FunctionCallResponse,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    ParseComplete,
    PortalSuspended,
    ReadyForQuery,
    RowDescription,
)
from ._messages_frontend import CopyData, CopyDone
from ._messages_startup import MAX_SECRET_KEY_LENGTH, MIN_SECRET_KEY_LENGTH
from ._wire import ENCODING, ERRORS, BodyReader, describe_type

_unpack_int32 = struct.Struct("!i").unpack_from
_unpack_uint16 = struct.Struct("!H").unpack_from
# RowDescription field after its name: table OID, column number, type OID,
# type size, type modifier, format code.
_FIELD = struct.Struct("!IhIhih")

# Shared instances of body-less messages (frozen, so sharing is safe).
_AUTH_OK: Final = AuthenticationOk()
_AUTH_KERBEROS: Final = AuthenticationKerberosV5()
_AUTH_CLEARTEXT: Final = AuthenticationCleartextPassword()
_AUTH_GSS: Final = AuthenticationGSS()
_AUTH_SSPI: Final = AuthenticationSSPI()
_EMPTY_QUERY: Final = EmptyQueryResponse()
_NO_DATA: Final = NoData()
_PORTAL_SUSPENDED: Final = PortalSuspended()
_PARSE_COMPLETE: Final = ParseComplete()
_BIND_COMPLETE: Final = BindComplete()
_CLOSE_COMPLETE: Final = CloseComplete()
_COPY_DONE: Final = CopyDone()
_READY: Final = {
    0x49: ReadyForQuery(status="I"),
    0x54: ReadyForQuery(status="T"),
    0x45: ReadyForQuery(status="E"),
}


def _authentication(body: bytes) -> AuthenticationMessage:
    r = BodyReader(body, "Authentication")
    code = r.int32("authentication code")
    message: AuthenticationMessage
    match code:
        case 0:
            message = _AUTH_OK
        case 2:
            message = _AUTH_KERBEROS
        case 3:
            message = _AUTH_CLEARTEXT
        case 5:
            message = AuthenticationMD5Password(salt=r.take(4, "salt"))
        case 7:
            message = _AUTH_GSS
        case 8:
            message = AuthenticationGSSContinue(data=r.rest())
        case 9:
            message = _AUTH_SSPI
        case 10:
            mechanisms: list[str] = []
            while name := r.cstring("mechanism name"):
                mechanisms.append(name)
            message = AuthenticationSASL(mechanisms=tuple(mechanisms))
        case 11:
            message = AuthenticationSASLContinue(data=r.rest())
        case 12:
            message = AuthenticationSASLFinal(data=r.rest())
        case _:
            raise r.error(f"unknown authentication request code {code}")
    r.end()
    return message


def _backend_key_data(body: bytes) -> BackendKeyData:
    r = BodyReader(body, "BackendKeyData")
    process_id = r.int32("process ID")
    secret_key = r.rest()
    if not MIN_SECRET_KEY_LENGTH <= len(secret_key) <= MAX_SECRET_KEY_LENGTH:
        raise r.error(
            f"secret key of {len(secret_key)} bytes, must be "
            f"{MIN_SECRET_KEY_LENGTH} to {MAX_SECRET_KEY_LENGTH}"
        )
    return BackendKeyData(process_id=process_id, secret_key=secret_key)


def _parameter_status(body: bytes) -> ParameterStatus:
    r = BodyReader(body, "ParameterStatus")
    name = r.cstring("parameter name")
    message = ParameterStatus(name=name, value=r.cstring("parameter value"))
    r.end()
    return message


def _parameter_description(body: bytes) -> ParameterDescription:
    r = BodyReader(body, "ParameterDescription")
    type_oids = r.uint32_array(r.uint16("parameter count"), "parameter type OIDs")
    r.end()
    return ParameterDescription(type_oids=type_oids)


def _row_description(body: bytes) -> RowDescription:
    r = BodyReader(body, "RowDescription")
    count = r.uint16("field count")
    # A field is at least 19 bytes (empty name + 18 bytes of numbers).
    if count * 19 > r.remaining:
        raise r.error(f"{count} fields cannot fit in {r.remaining} bytes")
    fields = []
    for _ in range(count):
        name = r.cstring("field name")
        table_oid, column, type_oid, size, modifier, fmt = r.unpack(_FIELD, "field attributes")
        fields.append(
            FieldDescription(
                name=name,
                table_oid=table_oid,
                column_number=column,
                type_oid=type_oid,
                type_size=size,
                type_modifier=modifier,
                format=fmt,
            )
        )
    r.end()
    return RowDescription(fields=tuple(fields))


def _data_row(body: bytes) -> DataRow:
    end = len(body)
    if end < 2:
        raise RemoteProtocolError("malformed DataRow: body ends inside the column count")
    count = _unpack_uint16(body, 0)[0]
    if count * 4 > end - 2:
        raise RemoteProtocolError(
            f"malformed DataRow: {count} columns need {count * 4} bytes but {end - 2} left"
        )
    values: list[bytes | None] = []
    append = values.append
    pos = 2
    for column in range(count):
        if pos + 4 > end:
            raise RemoteProtocolError(f"malformed DataRow: body ends inside column {column}")
        size = _unpack_int32(body, pos)[0]
        pos += 4
        if size == -1:
            append(None)
            continue
        if size < 0 or size > end - pos:
            raise RemoteProtocolError(
                f"malformed DataRow: column {column} of {size} bytes but {end - pos} left"
            )
        append(body[pos : pos + size])
        pos += size
    if pos != end:
        raise RemoteProtocolError(f"malformed DataRow: {end - pos} unexpected trailing bytes")
    return DataRow(values=tuple(values))


def _command_complete(body: bytes) -> CommandComplete:
    r = BodyReader(body, "CommandComplete")
    message = CommandComplete(tag=r.cstring("command tag"))
    r.end()
    return message


def _notice_fields(r: BodyReader) -> tuple[tuple[str, str], ...]:
    fields = []
    while code := r.byte("field code"):
        fields.append((bytes((code,)).decode(ENCODING, ERRORS), r.cstring("field value")))
    r.end()
    return tuple(fields)


def _error_response(body: bytes) -> ErrorResponse:
    return ErrorResponse(fields=_notice_fields(BodyReader(body, "ErrorResponse")))


def _notice_response(body: bytes) -> NoticeResponse:
    return NoticeResponse(fields=_notice_fields(BodyReader(body, "NoticeResponse")))


def _notification_response(body: bytes) -> NotificationResponse:
    r = BodyReader(body, "NotificationResponse")
    process_id = r.int32("process ID")
    channel = r.cstring("channel name")
    message = NotificationResponse(
        process_id=process_id, channel=channel, payload=r.cstring("payload")
    )
    r.end()
    return message


def _copy_response(r: BodyReader) -> tuple[int, tuple[int, ...]]:
    overall = r.byte("overall format")
    formats = r.int16_array(r.uint16("column count"), "column formats")
    r.end()
    return overall, formats


def _copy_in_response(body: bytes) -> CopyInResponse:
    overall, formats = _copy_response(BodyReader(body, "CopyInResponse"))
    return CopyInResponse(format=overall, column_formats=formats)


def _copy_out_response(body: bytes) -> CopyOutResponse:
    overall, formats = _copy_response(BodyReader(body, "CopyOutResponse"))
    return CopyOutResponse(format=overall, column_formats=formats)


def _copy_both_response(body: bytes) -> CopyBothResponse:
    overall, formats = _copy_response(BodyReader(body, "CopyBothResponse"))
    return CopyBothResponse(format=overall, column_formats=formats)


def _negotiate_protocol_version(body: bytes) -> NegotiateProtocolVersion:
    r = BodyReader(body, "NegotiateProtocolVersion")
    newest_minor = r.int32("newest minor version")
    count = r.int32("unrecognized option count")
    # Every option name is at least its NUL terminator.
    if count < 0 or count > r.remaining:
        raise r.error(f"{count} option names cannot fit in {r.remaining} bytes")
    names = tuple([r.cstring("option name") for _ in range(count)])
    r.end()
    return NegotiateProtocolVersion(newest_minor=newest_minor, unrecognized=names)


def _ready_for_query(body: bytes) -> ReadyForQuery:
    message = _READY.get(body[0]) if len(body) == 1 else None
    if message is None:
        raise RemoteProtocolError(f"malformed ReadyForQuery: status {body!r} is not I, T or E")
    return message


def _function_call_response(body: bytes) -> FunctionCallResponse:
    r = BodyReader(body, "FunctionCallResponse")
    message = FunctionCallResponse(value=r.nullable("result value"))
    r.end()
    return message


def _copy_data(body: bytes) -> CopyData:
    return CopyData(data=body)


def _empty(message: BackendMessage, what: str) -> Callable[[bytes], BackendMessage]:
    def decode(body: bytes) -> BackendMessage:
        if body:
            raise RemoteProtocolError(f"malformed {what}: expected no body, got {len(body)} bytes")
        return message

    return decode


_BACKEND: Final[dict[int, Callable[[bytes], BackendMessage]]] = {
    ord("D"): _data_row,
    ord("R"): _authentication,
    ord("K"): _backend_key_data,
    ord("S"): _parameter_status,
    ord("t"): _parameter_description,
    ord("T"): _row_description,
    ord("C"): _command_complete,
    ord("I"): _empty(_EMPTY_QUERY, "EmptyQueryResponse"),
    ord("E"): _error_response,
    ord("N"): _notice_response,
    ord("A"): _notification_response,
    ord("n"): _empty(_NO_DATA, "NoData"),
    ord("s"): _empty(_PORTAL_SUSPENDED, "PortalSuspended"),
    ord("1"): _empty(_PARSE_COMPLETE, "ParseComplete"),
    ord("2"): _empty(_BIND_COMPLETE, "BindComplete"),
    ord("3"): _empty(_CLOSE_COMPLETE, "CloseComplete"),
    ord("G"): _copy_in_response,
    ord("H"): _copy_out_response,
    ord("W"): _copy_both_response,
    ord("d"): _copy_data,
    ord("c"): _empty(_COPY_DONE, "CopyDone"),
    ord("v"): _negotiate_protocol_version,
    ord("Z"): _ready_for_query,
    ord("V"): _function_call_response,
}
BACKEND_TYPES: Final = frozenset(_BACKEND)


def decode_backend(type_byte: int, body: bytes) -> BackendMessage:
    """Decode one backend message body (without type byte and length)."""
    decoder = _BACKEND.get(type_byte)
    if decoder is None:
        raise RemoteProtocolError(f"unknown backend message type {describe_type(type_byte)}")
    return decoder(body)
