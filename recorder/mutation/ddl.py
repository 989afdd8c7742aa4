"""Which cached table identities a statement makes stale (see :mod:`.identity`).

An identity holds what the catalog said about a table for a role: its key, rules,
row-level security, triggers, generated columns and the role's SELECT privilege. A
statement that may change any of that forgets the identities of the tables it
names, on every role; one whose effect cannot be named from its text forgets every
identity of the database: dropping a schema, an extension or an index (its table is
not in the text), whatever a role owned, privileges on all tables of a schema or on a
schema itself, role membership and attributes (a privilege a role gains or loses
through another), default settings of roles and databases (``role``,
``search_path``), new schemas and imported foreign tables (a bare name may now find
another table) and a ``DO`` block, whose statements are not seen. Those are rare;
forgetting is cheap (each table is looked up again on its next write).

Not seen at all: schema changes made inside a function or procedure a client calls
(``SELECT f()``, ``CALL p()``) or by another client that does not go through the
sidecar. A table dropped and created again is still caught by the OID each capture
carries, a privilege lost by the rewrite failing (the table then runs uncaptured for
a while); a key, rule or trigger changed in place is not, until the next DDL seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from .nodes import unwrap
from .safety import walk

# Statements on tables: the ones they name are forgotten.
_NAMED: Final = frozenset(
    {"AlterTableStmt", "RenameStmt", "IndexStmt", "CreateStmt", "AlterObjectSchemaStmt",
     "ReindexStmt", "CreateTrigStmt", "RuleStmt", "CreatePolicyStmt", "AlterPolicyStmt",
     "AlterOwnerStmt", "GrantStmt", "ViewStmt", "CreateTableAsStmt", "CreateForeignTableStmt"}
)  # fmt: skip
# Statements whose effect on tables cannot be named: every identity is forgotten.
_EVERY: Final = frozenset(
    {"DropOwnedStmt", "ReassignOwnedStmt", "CreateExtensionStmt", "AlterExtensionStmt",
     "AlterExtensionContentsStmt", "AlterDefaultPrivilegesStmt", "AlterRoleStmt",
     "AlterRoleSetStmt", "GrantRoleStmt", "DropRoleStmt", "SecLabelStmt", "CreateSchemaStmt",
     "ImportForeignSchemaStmt", "AlterDatabaseSetStmt", "DoStmt"}
)  # fmt: skip
# DROP of these names a relation last (schema.relation, or relation).
_DROP_RELATION: Final = frozenset(
    {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE", "OBJECT_SEQUENCE"}
)
# DROP RULE / TRIGGER / POLICY name ON table: the table is the item before the name.
_DROP_ON_RELATION: Final = frozenset({"OBJECT_RULE", "OBJECT_TRIGGER", "OBJECT_POLICY"})


def stale_names(kind: str, fields: dict[str, Any]) -> frozenset[str] | None:
    """For a statement of node type ``kind``: None if it leaves identities alone, else
    the table names (any schema) whose identities are stale; the empty set means every
    table of the database."""
    if kind in _EVERY:
        return frozenset()
    if kind == "DropStmt":
        return frozenset(_dropped(fields))
    if kind not in _NAMED:
        return None
    if kind == "GrantStmt":
        objects = fields.get("objtype", "OBJECT_TABLE")
        if objects == "OBJECT_SCHEMA":
            return frozenset()  # USAGE: whether its tables can be reached at all
        if objects != "OBJECT_TABLE":
            return None  # functions, sequences, types...: no identity holds those
    return frozenset(_relnames(fields))


def _relnames(fields: dict[str, Any]) -> Iterator[str]:
    for field in ("relation", "into"):
        relation = fields.get(field)
        if isinstance(relation, dict):
            relation = relation.get("rel", relation)  # CREATE TABLE AS: into.rel
            if relation.get("relname"):
                yield str(relation["relname"])
    for kind, child in walk(fields):
        if kind == "RangeVar" and child.get("relname"):
            yield str(child["relname"])


def _dropped(fields: dict[str, Any]) -> Iterator[str]:
    """Table names a DROP makes stale; none yielded means it cannot tell (every table)."""
    kind = fields.get("removeType", "")
    if kind not in _DROP_RELATION and kind not in _DROP_ON_RELATION:
        return
    last = -2 if kind in _DROP_ON_RELATION else -1
    for obj in fields.get("objects", ()):
        items = unwrap(obj)[1].get("items", ())
        if len(items) >= -last:
            yield str(unwrap(items[last])[1].get("sval", ""))
