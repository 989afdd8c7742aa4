"""``flux state history|blame`` over the mutation log, and ``flux explain``.

A row is found by the lookup digest the recorder stored as each mutation's
fingerprint (its table's name and its key values, see
:mod:`recorder.mutation.events`), so listing one row's changes is an index
lookup, and its values stay sealed in the payloads until a private key opens them.
"""

from __future__ import annotations

import argparse
import heapq
import json
from collections import defaultdict
from typing import Any

from recorder.model import MUTATION, StoredEvent
from recorder.store import SEALED_MARKER

from .cmd_read import open_from_args, output_flag, reader_from_args, report_unopened
from .config import add_private_key_flag, add_store_flags, private_key_values

ENCRYPTED = "[encrypted]"


def register(commands: Any) -> None:
    state = commands.add_parser("state", help="the history of rows: every change, who made it")
    sub = state.add_subparsers(dest="state_command", required=True, metavar="COMMAND")
    for name, handler, text in (
        ("history", run_history, "every change of one row, in order, with its trace"),
        ("blame", run_blame, "for each column of the current row, the trace that last wrote it"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument("table", help="table name, optionally schema-qualified")
        parser.add_argument(
            "--id", required=True, dest="row_id",
            help="the row's key: VALUE, or COL=VALUE,COL2=VALUE for a composite key "
            "(or a JSON object)",
        )  # fmt: skip
        add_store_flags(parser)
        add_private_key_flag(parser)
        output_flag(parser)
        parser.set_defaults(handler=handler)

    explain = commands.add_parser(
        "explain", help="a statement as the sidecar would run it, and what it captures"
    )
    explain.add_argument("sql", help="the statement(s), as the application sends them")
    explain.add_argument(
        "--server-version", type=int, default=18, help="PostgreSQL major version (default 18)"
    )
    explain.add_argument(
        "--key", action="append", default=[], metavar="TABLE=COL[,COL]",
        help="act as if TABLE's key were already known (its catalog lookup then is left out)",
    )  # fmt: skip
    output_flag(explain)
    explain.set_defaults(handler=run_explain)


def parse_row_id(text: str) -> dict[str, str]:
    """``42`` → {"": "42"}; ``a=1,b=x`` → {"a": "1", "b": "x"}; a JSON object as is."""
    text = text.strip()
    if text.startswith("{"):
        parsed = json.loads(text)
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in parsed.items()}
    if "=" not in text:
        return {"": text}
    pairs = [part.split("=", 1) for part in text.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"--id {text!r}: expected COL=VALUE[,COL=VALUE]")
    return {col.strip(): value for col, value in pairs}


def _history(args: argparse.Namespace) -> tuple[list[StoredEvent], bool] | int:
    values = private_key_values(args)
    sealer = reader_from_args(args)
    from recorder.mutation.events import pk_digest  # here: pglast loads only when needed
    from recorder.mutation.lookupkey import lookup_key

    schema, _, name = args.table.rpartition(".")
    name = name.strip('"')
    key = parse_row_id(args.row_id)
    store = open_from_args(args, sealer)
    try:
        secret = lookup_key(args.store or args.data_dir)
        found = list(store.events(kind=MUTATION, fingerprint=pk_digest(name, key, secret)))
    finally:
        store.close()
    wanted = f"{schema.strip(chr(34))}.{name}" if schema else None
    found = [e for e in found if wanted is None or e.event.attrs.get("table") == wanted]
    if len(key) > 1 or "" not in key:
        found = [e for e in found if set(e.event.attrs.get("key_columns", ())) == set(key)]
    report_unopened(found, keys_given=values or None)
    return ordered(found), bool(values)


def ordered(found: list[StoredEvent]) -> list[StoredEvent]:
    """One row's changes in the order they happened.

    Transactions go in the order their row versions chain (a change whose before version
    is the after version of another transaction's change comes after it), else in the order
    they ended as the sidecar saw them; within a transaction, in the order its statements
    ran (a ROLLBACK TO is written before the COMMIT of what preceded it).
    """
    groups: dict[Any, list[StoredEvent]] = defaultdict(list)
    for stored in found:
        groups[(stored.event.conn_id, stored.event.attrs.get("txn"))].append(stored)
    arrival = {txn: max(s.id for s in events) for txn, events in groups.items()}
    made: dict[str, Any] = {}
    for txn, events in groups.items():
        for stored in events:
            version = stored.event.attrs.get("version_after")
            if version:
                made[version] = txn
    after: dict[Any, set[Any]] = defaultdict(set)
    waiting = dict.fromkeys(groups, 0)
    for txn, events in groups.items():
        for stored in events:
            source = made.get(stored.event.attrs.get("version_before") or "")
            if source is not None and source != txn and txn not in after[source]:
                after[source].add(txn)
                waiting[txn] += 1
    ready = [(arrival[t], n, t) for n, t in enumerate(groups) if not waiting[t]]
    heapq.heapify(ready)
    sequence: list[Any] = []
    while ready:
        _, _, txn = heapq.heappop(ready)
        sequence.append(txn)
        for follower in sorted(after[txn], key=arrival.__getitem__):
            waiting[follower] -= 1
            if not waiting[follower]:
                heapq.heappush(ready, (arrival[follower], len(sequence), follower))
    if len(sequence) < len(groups):  # a cycle cannot happen; if it did, arrival order
        sequence = sorted(groups, key=arrival.__getitem__)
    return [
        stored
        for txn in sequence
        for stored in sorted(groups[txn], key=lambda s: (s.event.attrs.get("seq", 0), s.id))
    ]


def _image(payload: dict[str, Any], which: str) -> dict[str, Any] | None:
    if SEALED_MARKER in payload or which not in payload:
        return None
    text = payload.get(which)
    if not isinstance(text, str):
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


def change(stored: StoredEvent) -> dict[str, Any]:
    event = stored.event
    attrs = event.attrs
    payload = event.payload
    sealed = SEALED_MARKER in payload or not payload
    before, after = _image(payload, "before"), _image(payload, "after")
    columns: dict[str, Any] = {}
    for column in attrs.get("changed", ()):
        if sealed:
            columns[column] = {"before": ENCRYPTED, "after": ENCRYPTED}
        else:
            columns[column] = {
                "before": None if before is None else before.get(column),
                "after": None if after is None else after.get(column),
            }
    return {
        "time_ns": event.start_ns,
        "op": attrs.get("op"),
        "table": attrs.get("table"),
        "status": attrs.get("status"),
        "committed": attrs.get("status") == "committed",
        "trace_id": event.trace_id,
        "span_id": event.parent_span_id,
        "txn": attrs.get("txn"),
        "columns": columns,
        "before": ENCRYPTED if sealed else before,
        "after": ENCRYPTED if sealed else after,
    }


def _time(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def run_history(args: argparse.Namespace) -> int:
    result = _history(args)
    if isinstance(result, int):
        return result
    changes = [change(e) for e in result[0]]
    if args.output == "json":
        print(json.dumps({"table": args.table, "id": args.row_id, "changes": changes}, indent=2))
        return 0
    if not changes:
        print(f"no recorded change of {args.table} {args.row_id}")
        return 0
    for c in changes:
        mark = "" if c["committed"] else f"  ({c['status']})"
        print(f"{_time(c['time_ns'])}  {c['op']:<6}  trace {c['trace_id'] or '-'}{mark}")
        for column, values in c["columns"].items():
            print(f"    {column}: {_show(values['before'])} → {_show(values['after'])}")
    return 0


def _show(value: Any) -> str:
    return value if value == ENCRYPTED else json.dumps(value)


def blame(changes: list[dict[str, Any]]) -> dict[str, Any]:
    """The current row (after the last committed change) and who wrote each column."""
    row: dict[str, Any] | None = None
    writers: dict[str, dict[str, Any]] = {}
    deleted: dict[str, Any] | None = None
    for c in changes:
        if not c["committed"]:
            continue
        who = {"trace_id": c["trace_id"], "time_ns": c["time_ns"], "op": c["op"]}
        if c["op"] == "delete":
            row, writers, deleted = None, {}, who
            continue
        deleted = None
        after = c["after"]
        row = after if isinstance(after, dict) else row
        for column in c["columns"]:  # an insert's "changed" columns are all of them
            writers[column] = who
    columns = {
        column: {**who, "value": ENCRYPTED if row is None else row.get(column)}
        for column, who in sorted(writers.items())
    }
    return {"exists": deleted is None and bool(writers), "deleted": deleted, "columns": columns}


def run_blame(args: argparse.Namespace) -> int:
    result = _history(args)
    if isinstance(result, int):
        return result
    found = blame([change(e) for e in result[0]])
    if args.output == "json":
        print(json.dumps({"table": args.table, "id": args.row_id, **found}, indent=2))
        return 0
    if found["deleted"] is not None:
        d = found["deleted"]
        print(f"deleted {_time(d['time_ns'])} by trace {d['trace_id'] or '-'}")
        return 0
    if not found["columns"]:
        print(f"no recorded committed change of {args.table} {args.row_id}")
    for column, who in found["columns"].items():
        print(f"{column:<24} {_show(who['value']):<24} {_time(who['time_ns'])}  "
              f"{who['op']:<6} trace {who['trace_id'] or '-'}")  # fmt: skip
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from recorder.mutation.identity import TableIdentity
    from recorder.mutation.planner import Planner

    known: dict[str, TableIdentity] = {}
    for spec in args.key:
        table, _, cols = spec.partition("=")
        columns = tuple(c.strip() for c in cols.split(",") if c.strip())
        known[table] = TableIdentity(0, "", table, "r", columns, "primary key")
    planner = Planner()
    for table, identity in known.items():  # as if the role may read it, without row security
        planner.identities.put(("", ""), table, identity)
    result: dict[str, Any] = {"server_version": args.server_version, "sql": args.sql}
    if not planner.interesting(args.sql):
        result.update(parsed=False, rewritten=args.sql, statements=[])
    else:
        plan = planner.plan(args.sql, "", args.server_version)
        rows = []
        infos = planner.analysis(args.sql) or ()
        for info, stmt in zip(infos, plan.statements if plan else (), strict=False):
            capture = stmt.capture
            rows.append({
                "statement": args.sql[info.start : info.end],
                "captured": capture is not None and capture.uncaptured is None,
                "uncaptured": stmt.uncaptured or (capture.uncaptured if capture else None),
                "form": capture.form if capture else None,
                "table": capture.relation if capture else None,
                "appended_columns": list(capture.roles) if capture else [],
                "client_sees_rows": capture.client_returning if capture else None,
                "writable_ctes": [{"op": c.op, "table": c.relation, "form": c.form,
                                   "captured_columns": list(c.roles)} for c in stmt.ctes],
            })  # fmt: skip
        result.update(parsed=plan is not None, rewritten=plan.sql if plan else args.sql,
                      statements=rows)  # fmt: skip
    if args.output == "json":
        print(json.dumps(result, indent=2))
        return 0
    if not result["parsed"]:
        print("runs unchanged: not a statement that can change data (no parse)")
        return 0
    for row in result["statements"]:
        if row["captured"]:
            what = f"captured ({row['form']}): appends {', '.join(row['appended_columns'])}"
        else:
            what = f"runs uncaptured: {row['uncaptured'] or 'no data change'}"
            if row["writable_ctes"] and not row["uncaptured"]:
                what = "the outer query changes no data"
        print(f"-- {row['statement'][:80]}\n--   {what}")
        for cte in row["writable_ctes"]:
            print(f"--   writable CTE: {cte['op']} {cte['table']} captured ({cte['form']}), "
                  "read back after the statement")  # fmt: skip
    print(result["rewritten"])
    return 0
