"""Decoding a raw PostgreSQL cycle into the fields of a ``pg.query`` event.

Plaintext ``attrs`` carry only what display and matching need without
secrets: statement fingerprints and normalized SQL (literals stripped),
command tags, row counts, SQLSTATE. Everything else (SQL with literals, bind
values, error messages and details, the raw bytes) goes to ``payload``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocols import pgwire
from protocols.sqlcommenter import extract_traceparent
from protocols.sqltext import fingerprint, normalize, split_statements, statement_kind
from protocols.traceparent import TraceParent

from .mutation.shapes import shape
from .pgtypes import display_binary

_FRONTEND_DECODED = frozenset(b"QPBDECFd")
_BACKEND_DECODED = frozenset(b"CEINASst")
_DATA_ROW = ord("D")

# Normalizing is the recorder's costliest step, and applications repeat statement texts.
_NORMALIZED_CACHE_SIZE = 4096
_normalized: dict[str, tuple[str, str, str]] = {}


# Texts that differ only in constants and comments (values sent inline) normalize alike:
# shape key -> [result, the text it came from, whether a second text confirmed it].
_by_shape: dict[str, list[Any]] = {}


def normalized(sql: str) -> tuple[str, str, str]:
    """(normalized text, fingerprint, statement kind), cached by statement text, and by
    shape (see recorder.mutation.shapes) once two texts of the shape agreed."""
    hit = _normalized.get(sql)
    if hit is not None:
        return hit
    form = shape(sql)
    entry = _by_shape.get(form.key) if form is not None else None
    if entry is not None and entry[2]:
        result: tuple[str, str, str] = entry[0]
        return result
    if len(_normalized) >= _NORMALIZED_CACHE_SIZE:
        _normalized.clear()
        _by_shape.clear()
    text = normalize(sql)
    hit = _normalized[sql] = (text, fingerprint(sql), statement_kind(text))
    if form is not None:
        if entry is None:
            _by_shape[form.key] = [hit, sql, None]
        elif entry[2] is None and entry[1] != sql:
            entry[2] = entry[0] == hit
    return hit


# Command tags whose last word is a row count ("INSERT 0 5", "UPDATE 3", "SELECT 2"...).
_COUNTED_TAGS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "SELECT", "MERGE", "MOVE", "FETCH", "COPY"}
)


@dataclass(slots=True, kw_only=True)
class DecodedCycle:
    attrs: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    error: bool = False
    comment_trace: TraceParent | None = None
    # Statements parsed in this cycle: name -> (SQL, parameter type OIDs)
    parsed: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    bound: list[str] = field(default_factory=list)  # names bound that this cycle did not parse
    closed: list[str] = field(default_factory=list)
    # Per execution, in order: its SQL, and how it ended (tag; None for the error that
    # stopped the cycle). Not stored: the mutation log's transaction tracking reads them.
    executed: list[str] = field(default_factory=list)
    outcomes: list[str | None] = field(default_factory=list)


def iter_messages(
    data: bytes, *, backend: bool, only: frozenset[int] | None = None
) -> Iterator[Any]:
    """Decodes the complete messages in ``data``; a malformed one is yielded as its exception.

    With ``only``, messages of other types are yielded as their type byte (an int) without
    being decoded: most of a cycle's bytes are DataRows the recorder only counts.
    """
    decode = pgwire.decode_backend if backend else pgwire.decode_frontend
    size = len(data)
    pos = 0
    while pos + 5 <= size:
        type_byte = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        end = pos + 1 + length
        if length < 4 or end > size:
            if length < 4:
                yield pgwire.RemoteProtocolError(f"invalid message length {length}")
            return  # a truncated recording: the rest was not kept
        if only is not None and type_byte not in only:
            yield type_byte
        else:
            try:
                yield decode(type_byte, data[pos + 5 : end])
            except pgwire.RemoteProtocolError as exc:
                yield exc
        pos = end


def row_count(tag: str) -> int | None:
    parts = tag.split()
    if len(parts) >= 2 and parts[0] in _COUNTED_TAGS and parts[-1].isdigit():
        return int(parts[-1])
    return None


def decode_session_start(backend: bytes) -> tuple[dict[str, str], int | None]:
    statuses: dict[str, str] = {}
    pid: int | None = None
    for message in iter_messages(backend, backend=True):
        match message:
            case pgwire.ParameterStatus(name=name, value=value):
                statuses[name] = value
            case pgwire.BackendKeyData(process_id=process_id):
                pid = process_id
    return statuses, pid


def _param_format(formats: tuple[int, ...], index: int) -> int:
    """Bind's format codes: none means all text, one applies to all, else one each."""
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[index] if index < len(formats) else 0


def _display_param(value: bytes | None, binary: bool, type_oid: int) -> Any:
    if value is None:
        return None
    if binary:
        return display_binary(value, type_oid)
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


def decode_cycle(
    cycle: pgwire.RawCycle, known: Mapping[str, tuple[str, tuple[int, ...]]] | None = None
) -> DecodedCycle:
    """``known``: statements the session prepared in earlier cycles, by name."""
    out = DecodedCycle()
    sql_texts: list[str] = []
    statements: list[str] = []  # SQL of each executed statement, in order
    params: list[list[Any]] = []
    statement_sql = {name: sql for name, (sql, _) in (known or {}).items()}
    statement_types = {name: types for name, (_, types) in (known or {}).items()}
    portal_sql: dict[str, str] = {}
    binds: list[tuple[str, tuple[int, ...], tuple[bytes | None, ...]]] = []
    described: list[str] = []  # statement Describes, answered in order by ParameterDescription
    protocol = ""
    malformed = 0
    copy_in_bytes = 0
    for message in iter_messages(cycle.frontend, backend=False, only=_FRONTEND_DECODED):
        match message:
            case pgwire.Query(query=query):
                protocol = protocol or "simple"
                sql_texts.append(query)
                statements.extend(split_statements(query) or [query])
            case pgwire.Parse(statement=name, query=query, param_types=types):
                protocol = protocol or "extended"
                sql_texts.append(query)
                statement_sql[name] = query
                statement_types[name] = types
                out.parsed[name] = (query, types)
            case pgwire.Bind(portal=portal, statement=name, params=values) as bind:
                protocol = protocol or "extended"
                if name not in out.parsed:
                    out.bound.append(name)
                # A statement prepared before recording started has no known text.
                portal_sql[portal] = statement_sql.get(name, "")
                binds.append((name, bind.param_formats, values))
            case pgwire.Describe(kind="S", name=name):
                described.append(name)
            case pgwire.Execute(portal=portal):
                statements.append(portal_sql.get(portal, ""))
            case pgwire.Close(kind="S", name=name):
                out.closed.append(name)
            case pgwire.FunctionCall(function_oid=oid):
                protocol = protocol or "function"
                statements.append(f"-- function call {oid}")
            case pgwire.CopyData(data=data):
                copy_in_bytes += len(data)
            case pgwire.RemoteProtocolError():
                malformed += 1
    tags: list[str] = []
    rows = 0
    data_rows = 0
    notices: list[dict[str, str]] = []
    notifications: list[list[Any]] = []
    parameter_status: dict[str, str] = {}
    error: dict[str, str] | None = None
    suspended = 0  # executions that stopped at their row limit (no command tag)
    for message in iter_messages(cycle.backend, backend=True, only=_BACKEND_DECODED):
        if message == _DATA_ROW:
            data_rows += 1
            continue
        match message:
            case pgwire.CommandComplete(tag=tag):
                tags.append(tag)
                out.outcomes.append(tag)
                rows += row_count(tag) or 0
            case pgwire.ErrorResponse() as err:
                if error is None:
                    out.outcomes.append(None)
                error = error or err.as_dict()
            case pgwire.NoticeResponse() as notice:
                notices.append(notice.as_dict())
            case pgwire.NotificationResponse(process_id=pid, channel=channel, payload=body):
                notifications.append([pid, channel, body])
            case pgwire.ParameterStatus(name=name, value=value):
                parameter_status[name] = value
            case pgwire.EmptyQueryResponse():
                tags.append("")
                out.outcomes.append("")
            case pgwire.PortalSuspended():
                suspended += 1
                out.outcomes.append("")
            case pgwire.ParameterDescription(type_oids=oids) if described:
                # Drivers such as asyncpg leave types to the server: learn them here.
                name = described.pop(0)
                statement_types[name] = oids
                if name in out.parsed:
                    out.parsed[name] = (out.parsed[name][0], oids)
            case pgwire.RemoteProtocolError():
                malformed += 1

    for name, formats, values in binds:
        types = statement_types.get(name, ())
        params.append(
            [
                _display_param(v, _param_format(formats, i) == 1, types[i] if i < len(types) else 0)
                for i, v in enumerate(values)
            ]
        )
    out.executed = statements
    for sql in sql_texts:
        out.comment_trace = extract_traceparent(sql)
        if out.comment_trace is not None:
            break
    shown = [normalized(s) for s in statements or sql_texts]
    fingerprints = [fp for _, fp, _ in shown]
    if len(fingerprints) == 1:
        out.fingerprint = fingerprints[0]
    elif fingerprints:
        out.fingerprint = hashlib.blake2b(
            ",".join(fingerprints).encode(), digest_size=8
        ).hexdigest()
    out.error = error is not None
    out.attrs = {
        "protocol": protocol,
        "statements": [
            {"fingerprint": fp, "normalized": text, "kind": kind} for text, fp, kind in shown
        ],
        "tags": tags,
        "rows": rows + (data_rows if suspended or not tags else 0),
        "suspended": suspended,
        "data_rows": data_rows,
        "sqlstate": error.get("C") if error else None,
        "severity": error.get("V", error.get("S")) if error else None,
        "notices": len(notices),
        "notifications": len(notifications),
        "copy_in_bytes": copy_in_bytes,
        "malformed": malformed,
    }
    out.payload = {"sql": sql_texts, "params": params}
    if error:
        out.payload["error"] = error
    if notices:
        out.payload["notices"] = notices
    if notifications:
        out.payload["notifications"] = notifications
    if parameter_status:
        out.payload["parameter_status"] = parameter_status
    return out
