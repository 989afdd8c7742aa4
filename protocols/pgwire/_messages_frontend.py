"""Typed messages a client (frontend) sends, named as in the PostgreSQL docs.

``CopyData`` and ``CopyDone`` travel in both directions; they are defined here
and re-used by the backend union. Text fields are ``str`` decoded as UTF-8 with
``surrogateescape``, so a session in another client_encoding still decodes and
re-encodes byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Format codes are plain ints (0 text, 1 binary) rather than a Literal: the
# server, not the codec, decides what an unknown code means.
TEXT_FORMAT = 0
BINARY_FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """Simple query protocol: one string that may hold several statements."""

    query: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Parse:
    """Creates a prepared statement ("" is the unnamed one); type OID 0 = unspecified."""

    statement: str = ""
    query: str
    param_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Bind:
    """Creates a portal from a prepared statement; a None parameter is SQL NULL."""

    portal: str = ""
    statement: str = ""
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Describe:
    """Asks for a statement's ('S') or portal's ('P') description."""

    kind: Literal["S", "P"]
    name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Execute:
    """Runs a portal; ``max_rows`` 0 means no limit."""

    portal: str = ""
    max_rows: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    """Closes a prepared statement ('S') or portal ('P')."""

    kind: Literal["S", "P"]
    name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync:
    """Ends an extended-query cycle; the server answers ReadyForQuery."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Flush:
    """Asks the server to send what it has buffered, without ending the cycle."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Terminate:
    """Graceful goodbye before closing the connection."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyData:
    """A chunk of COPY data stream (either direction)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyDone:
    """End of a COPY data stream (either direction)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyFail:
    """The client aborts COPY FROM STDIN with this error message."""

    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCall:
    """Legacy fast-path function call; a None argument is SQL NULL."""

    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = TEXT_FORMAT


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordMessage:
    """Cleartext or MD5 ("md5" + hex) password, answering an Authentication request.

    Bytes, not str: the password's encoding is whatever the client used.
    """

    password: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SASLInitialResponse:
    """First SASL message: the chosen mechanism and optional initial client data."""

    mechanism: str
    data: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SASLResponse:
    """A later SASL message (e.g. the SCRAM client-final-message)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class GSSResponse:
    """GSSAPI or SSPI token from the client."""

    data: bytes


FrontendMessage = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
    | PasswordMessage
    | SASLInitialResponse
    | SASLResponse
    | GSSResponse
)

# Which message a 'p' is depends on the authentication request the server sent.
AuthContext = Literal["password", "sasl-initial", "sasl", "gss"]
