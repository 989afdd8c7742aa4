"""Backend messages to bytes (for replies the proxy writes itself, and replay).

Body-less and fixed messages come from pre-encoded constants.
"""

from __future__ import annotations

from typing import Final, Never, NoReturn

from ._errors import LocalProtocolError
from ._messages_backend import (
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
from ._wire import BodyWriter

COPY_DONE: Final = b"c\x00\x00\x00\x04"
AUTHENTICATION_OK: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
PARSE_COMPLETE: Final = b"1\x00\x00\x00\x04"
BIND_COMPLETE: Final = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE: Final = b"3\x00\x00\x00\x04"
NO_DATA: Final = b"n\x00\x00\x00\x04"
PORTAL_SUSPENDED: Final = b"s\x00\x00\x00\x04"
EMPTY_QUERY_RESPONSE: Final = b"I\x00\x00\x00\x04"
READY_FOR_QUERY: Final = {
    "I": b"Z\x00\x00\x00\x05I",
    "T": b"Z\x00\x00\x00\x05T",
    "E": b"Z\x00\x00\x00\x05E",
}
_AUTH_KERBEROS: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x02"
_AUTH_CLEARTEXT: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x03"
_AUTH_GSS: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x07"
_AUTH_SSPI: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x09"
_R: Final = ord("R")


def unencodable(message: Never) -> NoReturn:
    # Typed Never so mypy flags any message class missing from a match.
    raise LocalProtocolError(f"not a PostgreSQL message: {message!r}")


def _with_data(code: int, data: bytes, what: str) -> bytes:
    w = BodyWriter(_R, what)
    w.int32(code, "authentication code")
    w.raw(data, "data")
    return w.finish()


def _row_description(message: RowDescription) -> bytes:
    w = BodyWriter(ord("T"), "RowDescription")
    w.count(message.fields, "fields")
    for field in message.fields:
        w.cstring(field.name, "field name")
        w.uint32(field.table_oid, "table OID")
        w.int16(field.column_number, "column number")
        w.uint32(field.type_oid, "type OID")
        w.int16(field.type_size, "type size")
        w.int32(field.type_modifier, "type modifier")
        w.int16(field.format, "format code")
    return w.finish()


def _notice(type_byte: int, fields: tuple[tuple[str, str], ...], what: str) -> bytes:
    w = BodyWriter(type_byte, what)
    for code, value in fields:
        w.byte(code, "field code")
        w.cstring(value, "field value")
    w.terminator()
    return w.finish()


def _copy_response(type_byte: int, fmt: int, formats: tuple[int, ...], what: str) -> bytes:
    w = BodyWriter(type_byte, what)
    w.uint8(fmt, "overall format")
    w.int16_array(formats, "column formats")
    return w.finish()


def _sasl(mechanisms: tuple[str, ...]) -> bytes:
    w = BodyWriter(_R, "AuthenticationSASL")
    w.int32(10, "authentication code")
    for mechanism in mechanisms:
        if not mechanism:
            raise w.error("a mechanism name is empty (it would end the list)")
        w.cstring(mechanism, "mechanism name")
    w.terminator()
    return w.finish()


def encode_backend(message: BackendMessage) -> bytes:
    """Wire bytes of a backend message; most frequent kinds are matched first."""
    match message:
        case DataRow(values=values):
            w = BodyWriter(ord("D"), "DataRow")
            w.nullables(values, "column values")
            return w.finish()
        case CommandComplete(tag=tag):
            w = BodyWriter(ord("C"), "CommandComplete")
            w.cstring(tag, "command tag")
            return w.finish()
        case RowDescription():
            return _row_description(message)
        case ReadyForQuery(status=status):
            try:
                return READY_FOR_QUERY[status]
            except (KeyError, TypeError):
                raise LocalProtocolError(f"ReadyForQuery status {status!r} not I/T/E") from None
        case ParseComplete():
            return PARSE_COMPLETE
        case BindComplete():
            return BIND_COMPLETE
        case CloseComplete():
            return CLOSE_COMPLETE
        case NoData():
            return NO_DATA
        case PortalSuspended():
            return PORTAL_SUSPENDED
        case EmptyQueryResponse():
            return EMPTY_QUERY_RESPONSE
        case ParameterDescription(type_oids=oids):
            w = BodyWriter(ord("t"), "ParameterDescription")
            w.count(oids, "parameters")
            for oid in oids:
                w.uint32(oid, "type OID")
            return w.finish()
        case ParameterStatus(name=name, value=value):
            w = BodyWriter(ord("S"), "ParameterStatus")
            w.cstring(name, "parameter name")
            w.cstring(value, "parameter value")
            return w.finish()
        case ErrorResponse(fields=fields):
            return _notice(ord("E"), fields, "ErrorResponse")
        case NoticeResponse(fields=fields):
            return _notice(ord("N"), fields, "NoticeResponse")
        case NotificationResponse(process_id=pid, channel=channel, payload=payload):
            w = BodyWriter(ord("A"), "NotificationResponse")
            w.int32(pid, "process ID")
            w.cstring(channel, "channel")
            w.cstring(payload, "payload")
            return w.finish()
        case CopyData(data=data):
            w = BodyWriter(ord("d"), "CopyData")
            w.raw(data, "data")
            return w.finish()
        case CopyDone():
            return COPY_DONE
        case CopyInResponse(format=fmt, column_formats=formats):
            return _copy_response(ord("G"), fmt, formats, "CopyInResponse")
        case CopyOutResponse(format=fmt, column_formats=formats):
            return _copy_response(ord("H"), fmt, formats, "CopyOutResponse")
        case CopyBothResponse(format=fmt, column_formats=formats):
            return _copy_response(ord("W"), fmt, formats, "CopyBothResponse")
        case FunctionCallResponse(value=value):
            w = BodyWriter(ord("V"), "FunctionCallResponse")
            w.nullable(value, "result value")
            return w.finish()
        case BackendKeyData(process_id=pid, secret_key=key):
            w = BodyWriter(ord("K"), "BackendKeyData")
            w.int32(pid, "process ID")
            w.secret_key(key)
            return w.finish()
        case NegotiateProtocolVersion(newest_minor=minor, unrecognized=names):
            w = BodyWriter(ord("v"), "NegotiateProtocolVersion")
            w.int32(minor, "newest minor version")
            w.int32(len(names), "option count")
            for name in names:
                w.cstring(name, "option name")
            return w.finish()
        case AuthenticationOk():
            return AUTHENTICATION_OK
        case AuthenticationKerberosV5():
            return _AUTH_KERBEROS
        case AuthenticationCleartextPassword():
            return _AUTH_CLEARTEXT
        case AuthenticationMD5Password(salt=salt):
            if not isinstance(salt, bytes) or len(salt) != 4:
                raise LocalProtocolError(f"MD5 salt must be 4 bytes, got {salt!r}")
            return _with_data(5, salt, "AuthenticationMD5Password")
        case AuthenticationGSS():
            return _AUTH_GSS
        case AuthenticationGSSContinue(data=data):
            return _with_data(8, data, "AuthenticationGSSContinue")
        case AuthenticationSSPI():
            return _AUTH_SSPI
        case AuthenticationSASL(mechanisms=mechanisms):
            return _sasl(mechanisms)
        case AuthenticationSASLContinue(data=data):
            return _with_data(11, data, "AuthenticationSASLContinue")
        case AuthenticationSASLFinal(data=data):
            return _with_data(12, data, "AuthenticationSASLFinal")
        case _:
            unencodable(message)
