"""The parts every rewrite form shares: the statement as copied and added text, what a
capture appends, and the columns every capture ends with (see :mod:`.forms`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .analyze import Dml, StatementInfo
from .identity import SELECT_TABLE, TableIdentity, lookup_sql, quote_literal

OLD, NEW, OID, IDENTITY, INSERTED = "old", "new", "oid", "identity", "inserted"
# The xmin of the row version before and after: which change follows which, per row.
VERSION_OLD, VERSION_NEW = "version_old", "version_new"
TEXT = "::pg_catalog.text"
NULL = "NULL" + TEXT

# What the caller knows about a table: its identity, None (unknown), or why to skip it.
Lookup = Callable[[str], "TableIdentity | str | None"]


@dataclass(frozen=True, slots=True)
class Capture:
    """What one rewritten statement returns beyond the client's own columns."""

    op: str
    relation: str  # the target as a regclass literal: the identity cache key
    roles: tuple[str, ...]  # the appended columns, in order
    client_returning: bool  # False: the client expects no rows at all
    form: str
    identity: TableIdentity | None  # what was known at rewrite time
    uncaptured: str | None = None  # "identity-only": why the rows themselves are not captured


@dataclass(frozen=True, slots=True)
class StatementPlan:
    capture: Capture | None = None
    uncaptured: str | None = None  # a data change that runs unchanged, and why
    # Writable CTEs whose rows the statement leaves in a setting (see .ctes), in order.
    ctes: tuple[Capture, ...] = ()
    readback: tuple[Capture, ...] = ()  # our own statement reading that setting back


@dataclass(frozen=True, slots=True)
class Rewrite:
    sql: str
    statements: tuple[StatementPlan, ...]
    segments: tuple[tuple[int, int, int], ...]  # (position in sql, position in original, length)
    changed: bool
    role: str = ""  # whose privileges it was planned for: what it learns is cached under it

    def added(self, position: int) -> bool:
        """Whether a 1-based position in ``sql`` falls in text the rewrite added."""
        index = position - 1
        return not any(s <= index < s + n for s, _, n in self.segments)

    def original_position(self, position: int) -> int:
        """Maps a 1-based character position in ``sql`` back to the client's text."""
        index = position - 1
        best = 0
        for new_start, old_start, length in self.segments:
            if new_start <= index < new_start + length:
                return old_start + index - new_start + 1
            if new_start <= index:
                best = old_start + length  # added text: point just after what preceded it
        return best + 1


class Out:
    """The text being built: spans copied from the client's text, and added text."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.parts: list[str] = []
        self.segments: list[tuple[int, int, int]] = []
        self.size = 0
        # Spans of the source copied as other text (rewritten CTEs): (start, end, text).
        self.patches: list[tuple[int, int, Out]] = []
        # How a form's values end its RETURNING list; None: as columns of their own.
        self.columns: Callable[[list[str]], str] | None = None

    def returning(self, dml: Dml, values: list[str]) -> None:
        self.add(returning_joint(dml) + (self.columns or ", ".join)(values))

    def copy(self, start: int, end: int) -> None:
        for p_start, p_end, text in self.patches:
            if start <= p_start and p_end <= end:
                self.copy_plain(start, p_start)
                for at, origin, length in text.segments:
                    self.segments.append((self.size + at, origin, length))
                self.parts.extend(text.parts)
                self.size += text.size
                start = p_end
        self.copy_plain(start, end)

    def copy_plain(self, start: int, end: int) -> None:
        if end > start:
            self.segments.append((self.size, start, end - start))
            self.parts.append(self.source[start:end])
            self.size += end - start

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)


class Unsupported(Exception):
    """This statement runs unchanged; the message is the reason recorded."""


class NeedIdentity(Unsupported):
    """Capturable once the table's identity is known: until then only the lookup is added."""


def tail(
    dml: Dml,
    known: TableIdentity,
    roles: tuple[str, ...],
    values: list[str],
    versions: tuple[str, str] | None = None,
) -> tuple[tuple[str, ...], list[str]]:
    """Appends the oid and the row versions where the table allows system columns in
    RETURNING (see :func:`stamped`)."""
    oid = f"{quote_literal(dml.target.regclass)}::pg_catalog.regclass::pg_catalog.oid{TEXT}"
    roles, values = (*roles, OID), [*values, oid]
    if versions is not None and stamped(known):
        roles, values = (*roles, VERSION_OLD, VERSION_NEW), [*values, *versions]
    return roles, values


def stamped(known: TableIdentity) -> bool:
    """Row versions (xmin) can be returned: a plain table (partitioned ones refuse system
    columns in RETURNING) whose SELECT privilege is granted on the table (a grant on every
    column does not cover system columns)."""
    return known.relkind == "r" and known.select == SELECT_TABLE


def returning_joint(dml: Dml) -> str:
    return ", " if dml.returning is not None else " RETURNING "


# A statement form: writes the statement with its capture to ``out``, or raises Unsupported.
Form = Callable[[Out, StatementInfo, Dml], Capture]


def plan_dml(
    out: Out, info: StatementInfo, dml: Dml, server_major: int, form: Form
) -> StatementPlan:
    """The statement as ``form`` captures it. When the form refuses it, nothing is written
    and the plan says why, unless only the table's identity is missing: then the statement
    as sent plus the catalog lookup (it reads no column of the table), so that the next
    statement on the table can be captured."""
    mark = (len(out.parts), len(out.segments), out.size)
    try:
        return StatementPlan(capture=form(out, info, dml))
    except Unsupported as exc:
        del out.parts[mark[0] :], out.segments[mark[1] :]
        out.size = mark[2]
        if not isinstance(exc, NeedIdentity):
            return StatementPlan(uncaptured=str(exc))
        out.copy(info.start, info.end)
        out.add(returning_joint(dml) + lookup_sql(dml.target.regclass, server_major))
        capture = Capture(
            dml.op, dml.target.regclass, (IDENTITY,), dml.returning is not None,
            "identity-only", None, str(exc),
        )  # fmt: skip
        return StatementPlan(capture=capture)
