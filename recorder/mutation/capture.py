"""What the proxy hands the recorder about one statement's captured rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Past this many bytes of row images in one statement the rest is not kept (and the
# capture says so): an UPDATE of a whole big table must not hold the proxy's memory.
MAX_CAPTURE_BYTES = 16 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementCapture:
    """One executed statement of a cycle that changed data, captured or not."""

    index: int  # which execution of the cycle (simple-query statement or Execute), from 0
    op: str  # insert, update, delete, merge
    relation: str  # the target as written, quoted (the identity cache key)
    roles: tuple[str, ...]  # what each value of a row is: old, new, oid, identity, inserted
    rows: tuple[tuple[bytes | None, ...], ...] = ()
    identity: tuple[Any, ...] | None = None  # TableIdentity.to_wire() known at rewrite time
    form: str = ""
    uncaptured: str | None = None  # why the rows were not captured
    tag: str | None = None  # the CommandComplete tag; None when the statement failed
    truncated: bool = False

    def to_wire(self) -> list[Any]:
        return [self.index, self.op, self.relation, list(self.roles), [list(r) for r in self.rows],
                None if self.identity is None else list(self.identity), self.form, self.uncaptured,
                self.tag, self.truncated]  # fmt: skip

    @classmethod
    def from_wire(cls, fields: list[Any]) -> StatementCapture:
        index, op, relation, roles, rows, identity, form, uncaptured, tag, truncated = fields
        return cls(index=index, op=op, relation=relation, roles=tuple(roles),
                   rows=tuple(tuple(r) for r in rows),
                   identity=None if identity is None else tuple(identity), form=form,
                   uncaptured=uncaptured, tag=tag, truncated=truncated)  # fmt: skip
