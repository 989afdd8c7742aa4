"""Mutation capture is invisible: every message a client receives through the recording
sidecar is the message it receives direct, byte for byte, for a corpus of data-changing
statements in the simple and extended protocols (results, descriptions, NoData, command
tags, row limits, binary formats, and errors with their positions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from protocols.pgwire import Bind, Describe, Execute, Parse, Query, Sync
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess
from tests.pgraw import RawClient, decoded

SETUP = """
CREATE TABLE w_items (id int PRIMARY KEY, name text NOT NULL, qty int CHECK (qty >= 0),
  price numeric(10,2), note varchar(20));
CREATE TABLE w_pairs (a int, b text, v int, PRIMARY KEY (a, b));
CREATE TABLE w_logs (msg text, n int);
CREATE TABLE w_src (id int, v int);
"""
RESET = """
TRUNCATE w_items, w_pairs, w_logs, w_src;
INSERT INTO w_items VALUES (1, 'a', 1, 1.50, 'x'), (2, 'b', 2, 2.50, NULL), (3, 'c', 3, 3.00, 'z');
INSERT INTO w_pairs VALUES (1, 'x', 1), (2, 'y', 2);
INSERT INTO w_logs VALUES ('m', 1), ('m', 1), ('n', 2);
INSERT INTO w_src VALUES (1, 10), (3, 30);
"""


def _q(sql: str) -> list[Any]:
    return [Query(query=sql)]


def _ext(sql: str, *params: bytes | None, name: str = "", rows: int = 0,
         formats: tuple[int, ...] = (), describe: str = "P") -> list[Any]:  # fmt: skip
    out: list[Any] = [Parse(statement=name, query=sql)]
    if describe == "S":
        out.append(Describe(kind="S", name=name))
    out.append(Bind(statement=name, params=params, result_formats=formats))
    if describe == "P":
        out.append(Describe(kind="P"))
    out += [Execute(max_rows=rows), Sync()]
    return out


CASES: list[tuple[str, list[Any]]] = [
    ("insert", _q("INSERT INTO w_items VALUES (10, 'j', 1, 9.99, 'n')")),
    ("insert returning *", _q("INSERT INTO w_items VALUES (11, 'k', 1, 1, 'n'), (12, 'l', 2, 2, NULL) RETURNING *")),
    ("insert returning expr", _q("INSERT INTO w_items (id, name) VALUES (13, 'm') RETURNING id, name || '!' AS label")),
    ("update", _q("UPDATE w_items SET qty = qty + 1 WHERE id = 1")),
    ("update returning", _q("UPDATE w_items SET qty = qty + 1 WHERE id >= 2 RETURNING id, qty")),
    ("update none", _q("UPDATE w_items SET qty = 0 WHERE id = -1 RETURNING *")),
    ("update from", _q("UPDATE w_items i SET qty = s.v FROM w_src s WHERE s.id = i.id RETURNING *")),
    ("update from values", _q("UPDATE w_items SET note = v.n FROM (VALUES (1, 'p'), (2, 'q')) v(id, n) WHERE w_items.id = v.id")),
    ("delete returning *", _q("DELETE FROM w_items WHERE id = 3 RETURNING *")),
    ("delete using", _q("DELETE FROM w_items i USING w_src s WHERE s.id = i.id")),
    ("delete keyless", _q("DELETE FROM w_logs WHERE msg = 'm'")),
    ("update keyless", _q("UPDATE w_logs SET n = n + 1 RETURNING msg")),
    ("upsert", _q("INSERT INTO w_items AS t (id, name) VALUES (1, 'up'), (20, 'new') ON CONFLICT (id) DO UPDATE SET name = t.name || excluded.name RETURNING id, name")),
    ("upsert where", _q("INSERT INTO w_items AS t (id, name) VALUES (1, 'up') ON CONFLICT (id) DO UPDATE SET name = 'no' WHERE t.qty > 100")),
    ("upsert nothing", _q("INSERT INTO w_items VALUES (2, 'dup') ON CONFLICT DO NOTHING RETURNING id")),
    ("upsert no column list", _q("INSERT INTO w_items VALUES (2, 'b2', 5) ON CONFLICT (id) DO UPDATE SET qty = excluded.qty")),
    ("composite", _q("UPDATE w_pairs SET b = b || '2', v = v * 10 WHERE a = 1 RETURNING *")),
    ("merge", _q("MERGE INTO w_items t USING w_src s ON t.id = s.id WHEN MATCHED THEN UPDATE SET qty = s.v WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, 'merged')")),
    ("undefined column in set", _q("UPDATE w_items SET nope = 1 WHERE id = 1")),
    ("undefined column in where", _q("UPDATE w_items SET qty = 1 WHERE nope = 1")),
    ("undefined column in returning", _q("DELETE FROM w_items WHERE id = 1 RETURNING nope")),
    ("unique violation", _q("INSERT INTO w_items VALUES (1, 'again')")),
    ("check violation", _q("UPDATE w_items SET qty = -5 WHERE id = 2")),
    ("division by zero", _q("UPDATE w_items SET qty = qty / 0 WHERE id = 2")),
    ("syntax error", _q("UPDATE w_items SET qty = WHERE id = 2")),
    ("multi statement", _q("UPDATE w_items SET qty = 7 WHERE id = 1; SELECT id, qty FROM w_items ORDER BY id; DELETE FROM w_items WHERE id = 2 RETURNING id")),
    ("multi statement error", _q("UPDATE w_items SET qty = 8 WHERE id = 1; UPDATE w_items SET qty = 1/0; SELECT 1")),
    ("transaction", _q("BEGIN; UPDATE w_items SET qty = 9 WHERE id = 1; SAVEPOINT s; DELETE FROM w_items; ROLLBACK TO s; COMMIT")),
    ("ext update", _ext("UPDATE w_items SET qty = $1 WHERE id = $2", b"4", b"1")),
    ("ext describe statement", _ext("UPDATE w_items SET qty = $1 WHERE id = $2", b"4", b"1", describe="S")),
    ("ext returning describe statement", _ext("UPDATE w_items SET qty = qty + 1 RETURNING id, qty", describe="S")),
    ("ext row limit", [*_ext("UPDATE w_items SET qty = qty + 1 RETURNING id", rows=1)[:-1], Execute(max_rows=1), Execute(), Sync()]),
    ("ext row limit no returning", _ext("UPDATE w_items SET qty = qty + 1", rows=1)),
    ("ext binary formats", _ext("UPDATE w_items SET qty = qty + 1 WHERE id < $1 RETURNING id, name", b"3", formats=(1, 0))),
    ("ext one binary format", _ext("DELETE FROM w_items WHERE id = $1 RETURNING *", b"2", formats=(1,))),
    ("ext insert named", _ext("INSERT INTO w_items (id, name) VALUES ($1, $2)", b"30", b"n", name="ins")),
    ("ext parse error", [Parse(query="UPDATE w_items SET qty = 1 WHERE nope = $1"), Sync()]),
    ("ext execute error then skipped", [*_ext("INSERT INTO w_items VALUES (1, 'x')")[:-1], *_ext("UPDATE w_items SET qty = 1")[:-1], Sync()]),
    ("ext pipeline", [*_ext("UPDATE w_items SET qty = 3 WHERE id = 1"), *_ext("DELETE FROM w_logs RETURNING n")]),
    ("ext null param", _ext("UPDATE w_items SET note = $1 WHERE id = 1 RETURNING note", None)),
]  # fmt: skip


def _run(client: RawClient, messages: list[Any]) -> list[bytes]:
    syncs = sum(1 for m in messages if isinstance(m, Sync | Query))
    return [m for m in client.exchange(messages, until_ready=syncs) if m[0] not in b"SK"]


@pytest.fixture
def wire_db(pg_db: PgServer) -> PgServer:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute(SETUP.encode())
    return pg_db


def test_every_message_is_the_same_direct_and_through_the_sidecar(
    wire_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    sidecar = sidecar_factory(wire_db)
    args = (wire_db.user, wire_db.password, wire_db.dbname)
    with (
        psycopg.connect(wire_db.dsn(), autocommit=True) as admin,
        RawClient(wire_db.host, wire_db.port, *args) as direct,
        RawClient(sidecar.host, sidecar.port, *args) as proxied,
    ):
        # Twice through the sidecar: first from a fresh session (identities loaded at its
        # start, out of the client's sight), then with everything learnt since.
        for round_ in ("learning", "cached"):
            for name, messages in CASES:
                admin.execute(RESET.encode())
                expected = _run(direct, messages)
                admin.execute(RESET.encode())
                got = _run(proxied, messages)
                assert decoded(got) == decoded(expected), f"{round_}: {name}"
                assert got == expected, f"{round_}: {name}"
    stats = sidecar.stats()
    assert stats.get("mutations.captured", 0) > 40
