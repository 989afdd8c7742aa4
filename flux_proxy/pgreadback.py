"""Reading back the rows writable CTEs left in a setting (see :mod:`recorder.mutation.ctes`).

Simple Query: the rewritten text carries the read-back statement right after the
statement; its RowDescription, DataRow and CommandComplete are ours. Extended
protocol: after the client's Execute of a portal whose statement has writable CTEs
comes our own Parse of a named statement, Bind of a named portal, Execute and two
Closes (the client's unnamed statement and portal are never touched, and no simple
Query ever runs inside an extended-protocol sequence: it would end the implicit
transaction). Its answers are ours. A statement with a data-modifying CTE runs to
completion at its portal's first Execute, even with a row limit, so that is the Execute
read back after. If the client's Execute fails, the backend
skips ours with everything else up to Sync. Not a byte of any answer to ours is
forwarded to the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from protocols import pgwire
from recorder.mutation.ctes import read_back, readback_sql
from recorder.mutation.identity import parse_lookup
from recorder.mutation.splice import IDENTITY, Capture, Rewrite

from .pgrows import cut_data_row

if TYPE_CHECKING:  # pganswers imports this module
    from .pganswers import AnswerSide, Request

READBACK_KIND: Final = 10  # a request kind beside pganswers' own: our Execute of the read-back
STATEMENT: Final = "__flux_readback"
PORTAL: Final = "__flux_readback"


def messages(rewrite: Rewrite, server_major: int) -> bytes:
    """Parse, Bind, Execute (the READBACK_KIND request), Close portal, Close statement."""
    sql = readback_sql(rewrite.statements[0].ctes, server_major)
    return b"".join(
        pgwire.encode(m)
        for m in (
            pgwire.Parse(statement=STATEMENT, query=sql),
            pgwire.Bind(portal=PORTAL, statement=STATEMENT),
            pgwire.Execute(portal=PORTAL),
            pgwire.Close(kind="P", name=PORTAL),
            pgwire.Close(kind="S", name=STATEMENT),
        )
    )


def ctes_of(rewrite: Rewrite | None, statement: int) -> tuple[Capture, ...]:
    """The writable-CTE captures a statement of a rewrite reads back (``readback``)."""
    if rewrite is None or statement >= len(rewrite.statements):
        return ()
    return rewrite.statements[statement].readback


def rewrite_ctes(rewrite: Rewrite, statement: int) -> tuple[Capture, ...]:
    """The writable-CTE captures a statement of a rewrite carries (``ctes``)."""
    return rewrite.statements[statement].ctes if statement < len(rewrite.statements) else ()


def executes_ctes(rewrite: Rewrite | None) -> bool:
    """Whether an Execute of a portal of this (single-statement) rewrite needs a read-back."""
    return rewrite is not None and bool(rewrite.statements) and bool(rewrite.statements[0].ctes)


def answer(side: AnswerSide, head: Request, type_byte: int, message: bytes) -> bytes:
    """One answer to a read-back (``head``, at the head of ``side``'s queue): dropped; at
    its CommandComplete the rows become captures of the statement just executed, which is
    what the transaction tracker marks."""
    rewrite = head.rewrite
    assert rewrite is not None
    if head.kind == READBACK_KIND:
        ctes = rewrite.statements[0].ctes
    else:
        ctes = ctes_of(rewrite, head.statement)
    if type_byte == 0x44:  # DataRow
        lookups = sum(1 for c in ctes if IDENTITY in c.roles)
        head.rows.append(tuple(cut_data_row(message, 3 + lookups)[1]))
    elif type_byte == 0x43:  # CommandComplete
        if head.kind == READBACK_KIND:
            side._queue.popleft()
        else:
            head.statement += 1  # not an execution of the client's
        values: tuple[bytes | None, ...] = head.rows[0] if head.rows else (None, None, None)
        head.rows = []
        found = read_back(ctes, values, index=max(side._executions - 1, 0))
        for capture in found:
            if capture.uncaptured is not None:
                side.counters["pg.mutations.uncaptured"] += 1
                side.counters[f"pg.mutations.uncaptured.{capture.uncaptured}"] += 1
                learnt = parse_lookup(capture.rows[0][0]) if capture.rows else None
                if learnt is not None:
                    side.planner.identities.put(side._scope(rewrite), capture.relation, learnt)
        if any(c.truncated for c in found):
            side.counters["pg.mutations.truncated.writable-cte-too-large"] += 1
        side._cycle.extend(c for c in found if c.rows or c.uncaptured)
    return b""
