"""Typed messages a server (backend) sends, named as in the PostgreSQL docs.

The Authentication* family shares type byte 'R' and is told apart by an Int32
code in the body; each variant is its own class so a ``match`` can name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._messages_frontend import CopyData, CopyDone

# --- authentication -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationOk:
    """Authentication succeeded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationKerberosV5:
    """Obsolete Kerberos V5 request; still decoded so a proxy can report it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationCleartextPassword:
    """Asks for a cleartext PasswordMessage."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationMD5Password:
    """Asks for an MD5-hashed PasswordMessage using this 4-byte salt."""

    salt: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationGSS:
    """Asks for GSSAPI negotiation (answered with GSSResponse)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationGSSContinue:
    """GSSAPI or SSPI data from the server."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationSSPI:
    """Asks for SSPI negotiation (answered with GSSResponse)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationSASL:
    """Starts SASL; lists the mechanisms the server accepts, in preference order."""

    mechanisms: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationSASLContinue:
    """A SASL challenge (e.g. the SCRAM server-first-message)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationSASLFinal:
    """SASL outcome data (e.g. the SCRAM server signature)."""

    data: bytes


AuthenticationMessage = (
    AuthenticationOk
    | AuthenticationKerberosV5
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationGSS
    | AuthenticationGSSContinue
    | AuthenticationSSPI
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
)

# --- session and query results -------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendKeyData:
    """What a client needs for a later CancelRequest; the key is 4 bytes in 3.0, ≤ 256 in 3.2."""

    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ParameterStatus:
    """A run-time parameter's current value; may arrive at any time."""

    name: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ParameterDescription:
    """The parameter type OIDs of a described statement."""

    type_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldDescription:
    """One column of a RowDescription (not a message by itself)."""

    name: str
    table_oid: int = 0  # 0 when the column is not a plain table column
    column_number: int = 0  # attribute number, 0 when not a table column
    type_oid: int
    type_size: int  # pg_type.typlen: negative for variable-width types
    type_modifier: int = -1
    format: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RowDescription:
    """The shape of the rows that follow."""

    fields: tuple[FieldDescription, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DataRow:
    """One row; a None value is SQL NULL."""

    values: tuple[bytes | None, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandComplete:
    """A statement finished; ``tag`` is e.g. "SELECT 3" or "INSERT 0 1"."""

    tag: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EmptyQueryResponse:
    """Answers an empty query string instead of CommandComplete."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _NoticeFields:
    """Shared body of ErrorResponse and NoticeResponse: (field code, value) pairs.

    ``fields`` keeps wire order and duplicates so re-encoding is byte-exact.
    """

    fields: tuple[tuple[str, str], ...]

    def get(self, code: str) -> str | None:
        """The value of field ``code`` (a single letter); the last one wins."""
        found = None
        for key, value in self.fields:
            if key == code:
                found = value
        return found

    def as_dict(self) -> dict[str, str]:
        return dict(self.fields)

    @property
    def severity(self) -> str:
        """'V' (never localized) when present, else 'S'; "" if the peer sent neither."""
        return self.get("V") or self.get("S") or ""

    @property
    def code(self) -> str:
        """The SQLSTATE (field 'C'); "" if the peer left it out."""
        return self.get("C") or ""

    @property
    def message(self) -> str:
        """The primary human-readable message (field 'M'); "" if left out."""
        return self.get("M") or ""

    @property
    def detail(self) -> str | None:
        return self.get("D")

    @property
    def hint(self) -> str | None:
        return self.get("H")


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorResponse(_NoticeFields):
    """An error; the current cycle is over (ReadyForQuery follows, or FATAL ends the session)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NoticeResponse(_NoticeFields):
    """A warning or notice; may arrive at any time and changes no state."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationResponse:
    """A LISTEN/NOTIFY notification; may arrive at any time."""

    process_id: int
    channel: str
    payload: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NoData:
    """Describe found a statement or portal that returns no rows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PortalSuspended:
    """Execute stopped at its row limit; the portal can be executed again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseComplete:
    """Parse succeeded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BindComplete:
    """Bind succeeded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseComplete:
    """Close succeeded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _CopyResponse:
    """Shared body of the Copy*Response messages: overall and per-column format."""

    format: int = 0
    column_formats: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyInResponse(_CopyResponse):
    """The server is ready for COPY FROM STDIN data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyOutResponse(_CopyResponse):
    """COPY TO STDOUT data follows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyBothResponse(_CopyResponse):
    """Both directions copy (streaming replication)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiateProtocolVersion:
    """The server speaks an older minor version or ignored some ``_pq_.`` options."""

    newest_minor: int
    unrecognized: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyForQuery:
    """End of a cycle: idle ('I'), in a transaction ('T'), or in a failed one ('E')."""

    status: Literal["I", "T", "E"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCallResponse:
    """Result of a FunctionCall; None is SQL NULL."""

    value: bytes | None


BackendMessage = (
    AuthenticationMessage
    | BackendKeyData
    | ParameterStatus
    | ParameterDescription
    | RowDescription
    | DataRow
    | CommandComplete
    | EmptyQueryResponse
    | ErrorResponse
    | NoticeResponse
    | NotificationResponse
    | NoData
    | PortalSuspended
    | ParseComplete
    | BindComplete
    | CloseComplete
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | NegotiateProtocolVersion
    | ReadyForQuery
    | FunctionCallResponse
)
