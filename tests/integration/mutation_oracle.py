"""The independent truth for the mutation log: an audit trigger, and a corpus of statements.

Every table under test carries an AFTER ROW trigger that writes ``to_jsonb(OLD)`` and
``to_jsonb(NEW)`` into ``audit``, with the session's application_name so rows written
through the sidecar are told from the test's own set-up. The sidecar's committed
mutations must equal those rows exactly, row by row and in order.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from flux_proxy.keysetup import reader_sealer
from recorder.store import open_store

APP = "flux-oracle"
TRACE = "0af7651916cd43dd8448eb211c80319c"
COMMENT = f"/*traceparent='00-{TRACE}-b7ad6b7169203331-01'*/"

SCHEMA = """
CREATE TABLE audit (id bigserial PRIMARY KEY, tbl text, op text, old jsonb, new jsonb, app text,
  query text);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (tbl, op, old, new, app, query) VALUES (TG_ARGV[0], TG_OP,
    CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
    CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END, current_setting('application_name'),
    current_query());
  RETURN NULL;
END $$;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END $$;
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL
  DEFAULT 0, tags text[], doubled numeric GENERATED ALWAYS AS (balance * 2) STORED);
CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (a, b));
CREATE TABLE notes (body text, n int);
CREATE TABLE ri (code text NOT NULL, v int);
CREATE UNIQUE INDEX ri_code ON ri (code);
ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_code;
CREATE TABLE parts (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE parts_eu PARTITION OF parts FOR VALUES IN ('eu');
CREATE TABLE parts_us PARTITION OF parts FOR VALUES IN ('us');
CREATE TABLE stamped (id int PRIMARY KEY, v int, touched int NOT NULL DEFAULT 0);
CREATE TRIGGER stamped_touch BEFORE UPDATE ON stamped FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TABLE mtarget (id int PRIMARY KEY, v int);
CREATE TABLE archive (body text, n int);
CREATE TABLE ctr (id int PRIMARY KEY, v int NOT NULL, hits int NOT NULL);
CREATE TABLE src (id int, v int);
INSERT INTO src VALUES (1, 5), (3, 7);
INSERT INTO ctr SELECT g, 0, 0 FROM generate_series(1, 4) g;
"""
KEYS: dict[str, tuple[str, ...]] = {
    "accounts": ("id",), "pairs": ("a", "b"), "notes": (), "ri": ("code",),
    "parts": ("id", "region"), "stamped": ("id",), "mtarget": ("id",), "archive": (),
    "ctr": ("id",),
}  # fmt: skip
AUDITED = tuple(KEYS)


def schema_sql() -> str:
    triggers = "".join(
        f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {t} "
        f"FOR EACH ROW EXECUTE FUNCTION audit_row('{t}');\n"
        for t in AUDITED
    )
    return SCHEMA + triggers


# (sql, params) with {b} the driver's key base and $n placeholders; run in autocommit unless
# grouped in a transaction below. 66 shapes, with the transactions.
CORPUS: list[tuple[str, tuple[Any, ...]]] = [
    ("INSERT INTO accounts (id, owner, balance) VALUES ({b}+1, 'ann', 10)", ()),
    ("INSERT INTO accounts (id, owner, balance, tags) VALUES ($1, $2, $3, $4)",
     ("+2", "bob", Decimal("20.50"), ["x", "y"])),
    ("INSERT INTO accounts (id, owner) VALUES ({b}+3, 'cy'), ({b}+4, 'di'), ({b}+5, 'ed') "
     "RETURNING id, doubled", ()),
    ("INSERT INTO accounts VALUES ({b}+6, 'fay', 7.25) RETURNING *", ()),
    ("INSERT INTO accounts (id, owner) SELECT {b}+10+g, 'gen' || g FROM generate_series(1, 3) g", ()),
    ("UPDATE accounts SET balance = balance + 1 WHERE id = {b}+1", ()),
    ("UPDATE accounts SET balance = $1 WHERE id = $2", (Decimal("99.99"), "+2")),
    ("UPDATE accounts SET owner = upper(owner) WHERE id IN ({b}+3, {b}+4) RETURNING id, owner", ()),
    ("UPDATE accounts SET balance = balance * 2 WHERE id BETWEEN {b}+3 AND {b}+5 AND owner <> 'zz'", ()),
    ("UPDATE accounts SET tags = array_append(tags, 'z') WHERE id = {b}+2 RETURNING *", ()),
    ("UPDATE accounts a SET balance = a.balance + s.v FROM src s WHERE s.id = a.id - {b}", ()),
    ("UPDATE accounts SET balance = 0 WHERE id = -1", ()),
    ("UPDATE accounts SET (owner, balance) = ('multi', 1) WHERE id = {b}+6", ()),
    ("UPDATE accounts SET balance = (SELECT count(*) FROM pairs) WHERE id = {b}+5", ()),
    ("UPDATE accounts SET id = id + 100 WHERE id = {b}+13", ()),
    ("DELETE FROM accounts WHERE id = {b}+11", ()),
    ("DELETE FROM accounts WHERE id = {b}+12 RETURNING owner", ()),
    ("DELETE FROM accounts a USING src s WHERE a.id = s.id + {b} + 112", ()),
    ("INSERT INTO accounts (id, owner, balance) VALUES ({b}+1, 'ann2', 1) ON CONFLICT (id) "
     "DO UPDATE SET owner = excluded.owner, balance = accounts.balance + excluded.balance", ()),
    ("INSERT INTO accounts AS x (id, owner) VALUES ({b}+1, 'nope'), ({b}+20, 'new') ON CONFLICT (id) "
     "DO UPDATE SET owner = x.owner || '!' WHERE x.balance > 1000 RETURNING id", ()),
    ("INSERT INTO accounts (id, owner) VALUES ({b}+20, 'dup') ON CONFLICT DO NOTHING", ()),
    ("INSERT INTO accounts VALUES ({b}+21, 'nolist', 3) ON CONFLICT (id) DO UPDATE SET balance = 4", ()),
    ("INSERT INTO accounts VALUES ({b}+21, 'nolist', 3) ON CONFLICT (id) DO UPDATE SET balance = 4", ()),
    ("UPDATE accounts SET balance = balance + 1 WHERE id = {b}+21 AND random() < 2", ()),
    ("WITH ids AS (SELECT id FROM accounts WHERE owner = 'CY') "
     "UPDATE accounts SET balance = balance + 5 WHERE id IN (SELECT id FROM ids)", ()),
    ("UPDATE accounts SET balance = balance - 1 WHERE id = {b}+1 "
     "RETURNING balance, (SELECT count(*) FROM notes) AS notes", ()),
    ("INSERT INTO pairs VALUES ({b}+1, 'x', 1), ({b}+1, 'y', 2), ({b}+2, 'x', 3)", ()),
    ("UPDATE pairs SET v = v * 10 WHERE a = {b}+1", ()),
    ("UPDATE pairs SET b = b || '2' WHERE a = {b}+2 AND b = 'x'", ()),
    ("INSERT INTO pairs (a, b, v) VALUES ({b}+1, 'x', 100) ON CONFLICT (a, b) "
     "DO UPDATE SET v = pairs.v + excluded.v", ()),
    ("DELETE FROM pairs WHERE a = {b}+1 AND b = 'y' RETURNING *", ()),
    ("INSERT INTO notes VALUES ('hello', {b}), ('hello', {b}), ('bye', {b})", ()),
    ("UPDATE notes SET n = n + 1 WHERE body = 'bye' AND n = {b}", ()),
    ("DELETE FROM notes WHERE body = 'hello' AND n = {b}", ()),
    ("INSERT INTO notes DEFAULT VALUES", ()),
    ("UPDATE notes SET n = {b} WHERE body IS NULL AND n IS NULL", ()),
    ("INSERT INTO ri VALUES ('k{b}', 1), ('j{b}', 2)", ()),
    ("UPDATE ri SET v = v + 1 WHERE code = 'k{b}'", ()),
    ("DELETE FROM ri WHERE code = 'j{b}'", ()),
    ("INSERT INTO parts VALUES ({b}+1, 'eu', 1), ({b}+2, 'us', 2)", ()),
    ("UPDATE parts SET v = v + 5 WHERE id = {b}+1", ()),
    ("DELETE FROM parts WHERE id = {b}+2", ()),
    ("INSERT INTO parts VALUES ({b}+1, 'eu', 9) ON CONFLICT (id, region) DO UPDATE SET v = excluded.v", ()),
    ("INSERT INTO stamped (id, v) VALUES ({b}+1, 1), ({b}+2, 2)", ()),
    ("UPDATE stamped SET v = v + 1 WHERE id = {b}+1", ()),
    ("UPDATE stamped SET v = v + 1 WHERE id >= {b}+1 AND id <= {b}+2 RETURNING touched", ()),
    ("DELETE FROM stamped WHERE id = {b}+2", ()),
    ("INSERT INTO mtarget VALUES ({b}+1, 1), ({b}+2, 2)", ()),
    ("MERGE INTO mtarget t USING (VALUES ({b}+1, 10), ({b}+3, 30)) s(id, v) ON t.id = s.id "
     "WHEN MATCHED THEN UPDATE SET v = t.v + s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)", ()),
    ("MERGE INTO mtarget t USING (VALUES ({b}+2)) s(id) ON t.id = s.id WHEN MATCHED THEN DELETE", ()),
    ("UPDATE mtarget SET v = 0 WHERE id = {b}+1", ()),
    ("INSERT INTO archive VALUES ('keep', {b})", ()),
    ("WITH d AS (DELETE FROM archive WHERE n = {b} RETURNING *) "
     "INSERT INTO archive SELECT 'moved', n FROM d", ()),
    ("UPDATE accounts SET balance = balance + 1 WHERE id = {b}+1 " + COMMENT, ()),
    ("INSERT INTO accounts (id, owner) VALUES ({b}+40, 'dflt')", ()),
    ("UPDATE ONLY accounts SET balance = 3 WHERE id = {b}+40", ()),
    ("UPDATE accounts SET balance = balance + 1 WHERE id = {b}+1 OR id = {b}+2", ()),
    ("DELETE FROM pairs WHERE (a, b) IN (({b}+2, 'x2'))", ()),
]  # fmt: skip

# Transactions: (statements, committed?). Rolled back ones must be absent from the audit
# table and marked rolled back in the log.
EXPLICIT = [
    (["INSERT INTO accounts (id, owner) VALUES ({b}+30, 'txn')",
      "UPDATE accounts SET balance = 30 WHERE id = {b}+30"], True),
    (["INSERT INTO accounts (id, owner) VALUES ({b}+31, 'gone')",
      "UPDATE accounts SET balance = 1000 WHERE id = {b}+1"], False),
]  # fmt: skip
ROLLED_BACK_PER_DRIVER = 2 + 1 + 1 + 1  # EXPLICIT[1], savepoint, failed txn, failed batch
MULTI_OK = "UPDATE accounts SET balance = 1 WHERE id = {b}+3; UPDATE accounts SET balance = 2 WHERE id = {b}+4"
MULTI_FAILS = "UPDATE accounts SET balance = 11 WHERE id = {b}+3; SELECT 1/0"
PREPARED = "UPDATE accounts SET balance = balance + $1 WHERE id = $2"
UNCAPTURED_BEFORE_17 = ("mtarget",)
# Statements that run uncaptured before PostgreSQL 18 (the audit rows they leave are told
# by the statement text the server ran, current_query()): a WHERE evaluated twice by the
# locking CTE must give the same answer twice.
UNCAPTURED_BEFORE_18 = ("random() < 2",)


def bind(sql: str, params: tuple[Any, ...], base: int) -> tuple[str, list[Any]]:
    """The statement for one driver: its key base in, "+n" parameters as base + n."""
    values = [base + int(p[1:]) if isinstance(p, str) and p.startswith("+") else p for p in params]
    return sql.replace("{b}", str(base)), values


def psycopg_sql(sql: str) -> str:
    return re.sub(r"\$\d+", "%s", sql)


def _key(table: str, image: dict[str, Any]) -> tuple[Any, ...]:
    columns = KEYS[table] or tuple(sorted(image))
    return tuple(json.dumps(image.get(c), sort_keys=True) for c in columns)


def audit_history(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[Any]]:
    """(table, key) → [(op, old, new), ...] from the audit table, in the order rows changed."""
    out: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for table, op, old, new in rows:
        out[(table, *_key(table, new if new is not None else old))].append((op.lower(), old, new))
    return dict(out)


def logged_mutations(data_dir: Path) -> list[dict[str, Any]]:
    """Every mutation the sidecar stored, payloads opened with the data dir's dev key, in the
    order ``flux state history`` shows them."""
    from flux_proxy.cmd_state import ordered

    store = open_store(data_dir, readonly=True, sealer=reader_sealer(None, data_dir))
    try:
        rows: dict[str | None, list[Any]] = defaultdict(list)
        for stored in store.events(kind="mutation"):
            rows[stored.event.fingerprint].append(stored)
    finally:
        store.close()
    found = [stored for events in rows.values() for stored in ordered(events)]
    out = []
    for stored in found:
        e = stored.event
        if e.attrs.get("key_changed"):
            continue  # the same change, indexed under its old key too
        before, after = e.payload.get("before"), e.payload.get("after")
        out.append({
            "table": e.attrs["table"].split(".")[-1], "op": e.attrs["op"],
            "status": e.attrs["status"], "trace_id": e.trace_id,
            "old": None if before is None else json.loads(before),
            "new": None if after is None else json.loads(after),
            "key_kind": e.attrs["key_kind"], "key": e.payload.get("key"),
        })  # fmt: skip
    return out


def log_history(
    mutations: list[dict[str, Any]], tables: set[str]
) -> dict[tuple[Any, ...], list[Any]]:
    out: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for m in mutations:
        if m["status"] != "committed" or m["table"] not in tables:
            continue
        image = m["new"] if m["new"] is not None else m["old"]
        out[(m["table"], *_key(m["table"], image))].append((m["op"], m["old"], m["new"]))
    return dict(out)
