"""Building ErrorResponse / NoticeResponse messages for the proxy's own use.

Keyword arguments instead of a field-letter dict so that a typo is a
TypeError at the call site rather than a field the client silently ignores.
"""

from __future__ import annotations

import re
from typing import Final

from ._errors import LocalProtocolError
from ._messages_backend import ErrorResponse, NoticeResponse

# Field letters from the "Error and Notice Message Fields" page, in the order
# the server writes them.
FIELD_CODES: Final = {
    "severity": "S",
    "severity_nonlocalized": "V",
    "code": "C",
    "message": "M",
    "detail": "D",
    "hint": "H",
    "position": "P",
    "internal_position": "p",
    "internal_query": "q",
    "where": "W",
    "schema": "s",
    "table": "t",
    "column": "c",
    "data_type": "d",
    "constraint": "n",
    "file": "F",
    "line": "L",
    "routine": "R",
}

# The severities the server sends untranslated; V repeats S for these.
SEVERITIES: Final = frozenset(
    {"ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "DEBUG", "INFO", "LOG"}
)

_SQLSTATE = re.compile(r"[0-9A-Z]{5}")


def _notice_fields(
    severity: str, code: str, message: str, optional: dict[str, str | None]
) -> tuple[tuple[str, str], ...]:
    if not _SQLSTATE.fullmatch(code):
        raise LocalProtocolError(f"SQLSTATE must be 5 characters 0-9/A-Z, got {code!r}")
    if not severity:
        raise LocalProtocolError("severity must not be empty")
    nonlocalized = optional.pop("severity_nonlocalized", None)
    if nonlocalized is None and severity in SEVERITIES:
        nonlocalized = severity
    fields: list[tuple[str, str]] = [("S", severity)]
    if nonlocalized is not None:
        fields.append(("V", nonlocalized))
    fields += [("C", code), ("M", message)]
    fields += [(FIELD_CODES[name], value) for name, value in optional.items() if value is not None]
    return tuple(fields)


def error_response(
    severity: str,
    code: str,
    message: str,
    *,
    severity_nonlocalized: str | None = None,
    detail: str | None = None,
    hint: str | None = None,
    position: str | None = None,
    internal_position: str | None = None,
    internal_query: str | None = None,
    where: str | None = None,
    schema: str | None = None,
    table: str | None = None,
    column: str | None = None,
    data_type: str | None = None,
    constraint: str | None = None,
    file: str | None = None,
    line: str | None = None,
    routine: str | None = None,
) -> ErrorResponse:
    """An ErrorResponse with fields S, V, C, M and the optional ones given, in server order.

    ``severity_nonlocalized`` (V) defaults to ``severity`` when that is one of
    the untranslated severity words, as a current server would send it.
    """
    optional = {
        "severity_nonlocalized": severity_nonlocalized,
        "detail": detail,
        "hint": hint,
        "position": position,
        "internal_position": internal_position,
        "internal_query": internal_query,
        "where": where,
        "schema": schema,
        "table": table,
        "column": column,
        "data_type": data_type,
        "constraint": constraint,
        "file": file,
        "line": line,
        "routine": routine,
    }
    return ErrorResponse(fields=_notice_fields(severity, code, message, optional))


def notice_response(
    severity: str,
    code: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    where: str | None = None,
) -> NoticeResponse:
    """A NoticeResponse built like :func:`error_response` (fewer optional fields)."""
    optional = {"detail": detail, "hint": hint, "where": where}
    return NoticeResponse(fields=_notice_fields(severity, code, message, dict(optional)))
