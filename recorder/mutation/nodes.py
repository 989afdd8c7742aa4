"""Reading pglast's JSON parse tree, and spelling names back into SQL.

In that JSON a field typed as a generic node is wrapped in its type name
(``{"A_Expr": {...}}``), a field of a fixed type (``relation``, ``alias``,
``returningClause``...) is not, defaults are left out, and locations are byte
offsets into the UTF-8 text.
"""

from __future__ import annotations

import re
from typing import Any, Final

from pglast.keywords import RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

_RESERVED: Final = frozenset(RESERVED_KEYWORDS) | frozenset(TYPE_FUNC_NAME_KEYWORDS)
_PLAIN_NAME: Final = re.compile(r"[a-z_][a-z0-9_$]*")  # needs no quotes (unless reserved)


def quote_ident(name: str) -> str:
    if _PLAIN_NAME.fullmatch(name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def unwrap(node: Any) -> tuple[str, dict[str, Any]]:
    """A wrapped node's type name and fields; ("", {}) for anything else."""
    if isinstance(node, dict) and len(node) == 1:
        name, fields = next(iter(node.items()))
        if name[:1].isupper() and isinstance(fields, dict):
            return name, fields
    return "", {}


def target_names(targets: Any) -> tuple[str, ...]:
    """The columns a SET list (``ResTarget``s) assigns, as the catalog names them."""
    return tuple(dict.fromkeys(str(unwrap(t)[1].get("name", "")) for t in targets or ()))


class Offsets:
    """Byte offsets (the parser's) to character offsets (everything else's)."""

    def __init__(self, sql: str) -> None:
        self.encoded = None if sql.isascii() else sql.encode("utf-8")

    def __call__(self, offset: int) -> int:
        if self.encoded is None:
            return offset
        return len(self.encoded[:offset].decode("utf-8", "replace"))
