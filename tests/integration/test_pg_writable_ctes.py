"""Data-modifying statements inside WITH (writable CTEs) are captured, invisibly, on
PostgreSQL 15 and 18.

One sidecar per server version serves the whole module (the ``world`` fixture): a raw
protocol client runs a corpus direct and through it and every message is compared
byte for byte (errors inside the CTE, a row-limited Execute, Describe, SHOW ALL in the
same transaction); then psycopg and asyncpg run a corpus of writable-CTE shapes in
autocommit, transactions, savepoints and failed transactions, simple and extended
protocol, and the mutation log must equal an audit trigger's rows exactly.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from protocols.pgwire import Bind, Describe, Execute, Parse, Query, Sync
from recorder.store import open_store
from tests.fix_admin import metrics
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess, start_sidecar
from tests.integration import mutation_oracle as oracle
from tests.pgraw import RawClient, decoded

RAW = """
CREATE TABLE wc (id int PRIMARY KEY, v int, note varchar(10), amount numeric(8, 2));
CREATE TABLE wc_arch (id int, v int, note varchar(10), amount numeric(8, 2));
CREATE TABLE ran (n bigserial PRIMARY KEY, q text);
CREATE FUNCTION log_ran() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO ran (q) VALUES (current_query()); RETURN NULL; END $$;
CREATE TRIGGER ran AFTER INSERT OR UPDATE OR DELETE ON wc
  FOR EACH STATEMENT EXECUTE FUNCTION log_ran();
"""
RAW_RESET = (
    "TRUNCATE wc, wc_arch; INSERT INTO wc VALUES (1, 1, 'one', 1.5), (2, 2, 'two', 2.25), "
    "(3, 3, NULL, NULL);"
)
MOVED = "WITH d AS (DELETE FROM wc WHERE id = 1 RETURNING *) INSERT INTO wc_arch SELECT * FROM d"
BUMPED = (
    "WITH u AS (UPDATE wc SET v = v + 1 RETURNING id, v AS v, note, amount, amount AS id, "
    "v * 2, lower(note), note::text, CASE WHEN v > 1 THEN 'big' END, coalesce(note, 'x')) "
    "SELECT * FROM u ORDER BY 1"
)
# More rows than a capture keeps (see recorder.mutation.ctes.MAX_WEIGHT): the statement is
# unaffected, the capture marked truncated.
BIG = (
    "WITH i AS (INSERT INTO wc_arch SELECT g, g FROM generate_series(1, 20000) g RETURNING id) "
    "SELECT count(*) FROM i"
)
STAR_RETURNED = "WITH u AS (UPDATE wc SET v = 4 WHERE id = 2 RETURNING *) SELECT * FROM u"
REFUSED = "WITH u AS (UPDATE wc SET v = 0 FROM wc_arch RETURNING *) SELECT count(*) FROM u"


def _ext(sql: str, *, limit: int = 0) -> list[Any]:
    return [Parse(query=sql), Describe(kind="S"), Bind(), Execute(max_rows=limit), Sync()]


# (name, SQL, messages): every message the client gets must be the same direct and through.
RAW_CORPUS: list[tuple[str, str, list[Any]]] = [
    ("moved", MOVED, [Query(query=MOVED)]),
    ("moved extended", MOVED, _ext(MOVED)),
    ("bumped", BUMPED, [Query(query=BUMPED)]),
    ("bumped extended", BUMPED, _ext(BUMPED)),
    ("bumped row-limited", BUMPED,
     [Parse(query=BUMPED), Bind(), Describe(kind="P"), Execute(max_rows=1), Execute(max_rows=1),
      Execute(), Sync()]),
    ("aliased", "WITH u(a, b) AS (UPDATE wc SET v = 5 WHERE id = 2 RETURNING *) "
     "SELECT a * 10 + b FROM u",
     [Query(query="WITH u(a, b) AS (UPDATE wc SET v = 5 WHERE id = 2 RETURNING *) "
                  "SELECT a * 10 + b FROM u")]),
    ("whole row", "WITH u AS (UPDATE wc SET v = 6 RETURNING *) SELECT u::text FROM u ORDER BY 1",
     _ext("WITH u AS (UPDATE wc SET v = 6 RETURNING *) SELECT u::text FROM u ORDER BY 1")),
    # Its result reports each column's table and number, which (row).* would not.
    ("refused star returned", STAR_RETURNED, _ext(STAR_RETURNED)),
    ("no returning", "WITH i AS (INSERT INTO wc VALUES (7, 7)) SELECT 1",
     [Query(query="WITH i AS (INSERT INTO wc VALUES (7, 7)) SELECT 1")]),
    ("outer update", "WITH i AS (INSERT INTO wc VALUES (9, 9) RETURNING v) UPDATE wc SET "
     "v = (SELECT v FROM i) WHERE id = 2 RETURNING *",
     _ext("WITH i AS (INSERT INTO wc VALUES (9, 9) RETURNING v) UPDATE wc SET "
          "v = (SELECT v FROM i) WHERE id = 2 RETURNING *")),
    ("outer delete", "WITH i AS (INSERT INTO wc_arch VALUES (9, 9) RETURNING v) DELETE FROM wc "
     "WHERE id IN (SELECT v FROM i)",
     [Query(query="WITH i AS (INSERT INTO wc_arch VALUES (9, 9) RETURNING v) DELETE FROM wc "
                  "WHERE id IN (SELECT v FROM i)")]),
    ("two ctes; then a select", "",
     [Query(query="WITH a AS (UPDATE wc SET v = 0 WHERE id = 1 RETURNING v), b AS (DELETE FROM "
                  "wc WHERE id = 3 RETURNING id) SELECT (SELECT v FROM a), (SELECT id FROM b);"
                  " SELECT 2")]),
    ("error in cte", "", [Query(query="WITH i AS (INSERT INTO wc VALUES (1, 1) RETURNING v) "
                                      "SELECT * FROM i")]),
    ("error in cte extended", "",
     _ext("WITH i AS (INSERT INTO wc VALUES (1, 1) RETURNING v) SELECT * FROM i")),
    ("error position", "", [Query(query="WITH u AS (UPDATE wc SET v = 1 RETURNING id) "
                                        "SELECT nope FROM u")]),
    ("read without returning", "",
     [Query(query="WITH i AS (INSERT INTO wc VALUES (8, 8)) SELECT * FROM i")]),
    ("refused", REFUSED, _ext(REFUSED)),
    ("big", BIG, _ext(BIG)),
    ("in a transaction, then SHOW ALL", "",
     [Query(query="BEGIN"), *_ext(BUMPED), Query(query="SHOW ALL"),
      Query(query="SELECT name FROM pg_settings WHERE name LIKE 'flux%'"),
      Query(query="ROLLBACK")]),
    ("pipelined", "",
     [Parse(query=BUMPED), Bind(), Execute(), Parse(query=MOVED), Bind(), Execute(),
      Parse(query="SELECT 1"), Bind(), Execute(), Sync()]),
]  # fmt: skip

# The oracle corpus: (sql, params), {b} the driver's key base, $n placeholders.
CORPUS: list[tuple[str, tuple[Any, ...]]] = [
    ("INSERT INTO accounts (id, owner, balance) VALUES ({b}+201, 'c1', 1), ({b}+202, 'c2', 2), "
     "({b}+203, 'c3', 3), ({b}+204, 'c4', 4)", ()),
    ("INSERT INTO parts VALUES ({b}+201, 'eu', 1); INSERT INTO stamped VALUES ({b}+201, 1)", ()),
    ("WITH u AS (UPDATE accounts SET balance = balance + 10 WHERE id IN ({b}+201, {b}+202) "
     "RETURNING id) SELECT count(*) FROM u", ()),
    ("WITH d AS (DELETE FROM accounts WHERE id = {b}+203 RETURNING *) "
     "INSERT INTO archive SELECT owner, id FROM d", ()),
    ("WITH i AS (INSERT INTO notes VALUES ('cte', {b})) SELECT 1", ()),
    ("WITH i AS (INSERT INTO pairs VALUES ({b}+201, 'c', 1) RETURNING a, b) UPDATE accounts "
     "SET balance = balance + (SELECT count(*) FROM i) WHERE id = {b}+201 RETURNING id, balance",
     ()),
    ("WITH u(x, y) AS (UPDATE pairs SET v = v + 1 WHERE a = {b}+201 RETURNING *) "
     "SELECT x + 0, v * 2 FROM u", ()),
    ("WITH a AS (UPDATE accounts SET owner = owner || '!' WHERE id = {b}+201 RETURNING owner), "
     "n AS (DELETE FROM notes WHERE body = 'cte' AND n = {b} RETURNING n) "
     "SELECT (SELECT owner FROM a), (SELECT n FROM n)", ()),
    ("WITH u AS (UPDATE accounts SET balance = $1 WHERE id = $2 RETURNING balance, id) "
     "SELECT * FROM u", (Decimal("5.50"), "+202")),
    ("WITH up AS (INSERT INTO accounts (id, owner) VALUES ({b}+202, 'up') ON CONFLICT (id) "
     "DO UPDATE SET owner = excluded.owner RETURNING id) SELECT id FROM up", ()),
    ("WITH p AS (UPDATE parts SET v = v + 1 WHERE id = {b}+201 RETURNING v) SELECT v FROM p", ()),
    # Run to completion, and every row captured, though the outer query reads one.
    ("WITH u AS (UPDATE accounts SET balance = balance + 1 WHERE id IN ({b}+201, {b}+202) "
     "RETURNING id) SELECT id FROM u LIMIT 1", ()),
    ("WITH s AS (UPDATE stamped SET v = 5 WHERE id = {b}+201 RETURNING touched) "
     "SELECT * FROM s", ()),
    ("WITH d AS (DELETE FROM accounts WHERE id = {b}+204 RETURNING id) "
     "DELETE FROM pairs WHERE a = {b}+201", ()),
    # Refused (an UPDATE ... FROM whose * spans the FROM item): runs uncaptured.
    ("WITH u AS (UPDATE accounts a SET balance = 0 FROM src s WHERE a.id = s.id + {b} + 300 "
     "RETURNING *) SELECT count(*) FROM u", ()),
]  # fmt: skip
REFUSED_MARK = "s.id + "  # in the refused statement's text only
# In transactions: (statements, committed?)
EXPLICIT: list[tuple[list[str], bool]] = [
    (["WITH u AS (UPDATE accounts SET balance = 77 WHERE id = {b}+201 RETURNING id) "
      "SELECT * FROM u"], True),
    (["WITH u AS (UPDATE accounts SET balance = 88 WHERE id = {b}+201 RETURNING id) "
      "SELECT * FROM u"], False),
]  # fmt: skip
SAVEPOINT = "WITH u AS (UPDATE accounts SET balance = 99 WHERE id = {b}+202 RETURNING id) SELECT 1"
ROLLED_BACK_PER_DRIVER = 3  # EXPLICIT[1], the savepoint's, the failed transaction's


@dataclass
class World:
    version: int
    raw: dict[str, tuple[list[bytes], list[bytes]]] = field(default_factory=dict)
    ran: dict[str, list[str]] = field(default_factory=dict)
    logged: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    samples: dict[str, float] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    forms: Counter[str] = field(default_factory=Counter)  # mutation events by capture form
    truncated: int = 0
    stale: list[Any] = field(default_factory=list)


def _bind(sql: str, base: int) -> str:
    return sql.replace("{b}", str(base))


def _psycopg(dsn: str, base: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        simple = psycopg.ClientCursor(conn)
        for n, (sql, params) in enumerate(CORPUS):
            text, values = oracle.bind(sql, params, base)
            if ";" in text or n % 3 == 1:
                simple.execute(oracle.psycopg_sql(text), values)  # the simple protocol
            else:
                conn.execute(oracle.psycopg_sql(text).encode(), values, prepare=n % 3 == 0)
        for statements, commit in EXPLICIT:
            with conn.transaction():
                for sql in statements:
                    conn.execute(_bind(sql, base).encode())
                if not commit:
                    raise psycopg.Rollback()
        with conn.transaction():
            with conn.transaction(force_rollback=True):
                conn.execute(_bind(SAVEPOINT, base).encode())
            conn.execute(_bind(SAVEPOINT, base).replace("99", "98").encode())
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute(_bind(SAVEPOINT, base).replace("99", "97").encode())
            conn.execute(b"SELECT 1/0")
        with pytest.raises(psycopg.errors.DivisionByZero):  # one implicit transaction
            simple.execute(_bind(SAVEPOINT, base).replace("99", "66") + "; SELECT 1/0")
        # A table created since the session's start: its first writable CTE runs as sent and
        # learns its identity, the next one is captured.
        conn.execute(b"CREATE TABLE fresh (id int PRIMARY KEY, v int)")
        for n in (1, 2):
            conn.execute(
                f"WITH i AS (INSERT INTO fresh VALUES ({n}, {n}) RETURNING id) SELECT * FROM i"
                .encode()
            )  # fmt: skip
        # The same through a statement prepared while it was learnt: prepared again since.
        conn.execute(b"CREATE TABLE fresh2 (id int PRIMARY KEY, v int)")
        for n in (1, 2, 3):
            conn.execute(b"WITH i AS (INSERT INTO fresh2 VALUES (%s, %s) RETURNING id) SELECT 1",
                         (n, n), prepare=True)  # fmt: skip


async def _asyncpg(info: dict[str, Any], base: int) -> None:
    conn = await asyncpg.connect(**info, server_settings={"application_name": oracle.APP})
    try:
        for sql, params in CORPUS:
            text, values = oracle.bind(sql, params, base)
            if values:
                await conn.execute(text, *values)  # extended protocol
            else:
                await conn.execute(text)  # simple protocol
        for statements, commit in EXPLICIT:
            tr = conn.transaction()
            await tr.start()
            for sql in statements:
                await conn.fetch(_bind(sql, base))  # extended protocol
            await (tr.commit() if commit else tr.rollback())
        async with conn.transaction():
            inner = conn.transaction()
            await inner.start()
            await conn.fetch(_bind(SAVEPOINT, base))
            await inner.rollback()
            await conn.fetch(_bind(SAVEPOINT, base).replace("99", "98"))
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with conn.transaction():
                await conn.fetch(_bind(SAVEPOINT, base).replace("99", "97"))
                await conn.execute("SELECT 1/0")
    finally:
        await conn.close()


def _stale(world: World, db: PgServer, sidecar: SidecarProcess) -> None:
    """A column added behind the sidecar's back (not through it): a ``*`` is expanded with
    the row type the server knows when the statement runs, not the cached column list, so
    the result is the client's own and the after image has the new column."""
    sql = (
        b"WITH d AS (UPDATE stale SET v = v + 1 RETURNING *) INSERT INTO stale_copy SELECT * FROM d"
    )
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute(b"CREATE TABLE stale (id int PRIMARY KEY, v int)")
        conn.execute(b"CREATE TABLE stale_copy (id int, v int, extra int)")
        conn.execute(b"INSERT INTO stale VALUES (1, 1)")  # learns the identity
        conn.execute(sql)
        with psycopg.connect(db.dsn(), autocommit=True) as direct:
            direct.execute(b"ALTER TABLE stale ADD COLUMN extra int DEFAULT 7")
        conn.execute(sql)
        world.stale.append(conn.execute(b"SELECT * FROM stale_copy ORDER BY v").fetchall())
        world.stale.append(conn.execute(b"SELECT v FROM stale").fetchone())


def _raw(world: World, db: PgServer, sidecar: SidecarProcess) -> None:
    with (
        psycopg.connect(db.dsn(), autocommit=True) as admin,
        RawClient(db.host, db.port, db.user, db.password, db.dbname) as direct,
        RawClient(sidecar.host, sidecar.port, db.user, db.password, db.dbname) as proxied,
    ):
        for name, _, messages in RAW_CORPUS:
            syncs = sum(1 for m in messages if isinstance(m, Sync | Query))
            admin.execute(RAW_RESET.encode())
            expected = [
                m for m in direct.exchange(messages, until_ready=syncs) if m[0] not in b"SK"
            ]
            admin.execute(RAW_RESET.encode())
            mark = admin.execute(b"SELECT coalesce(max(n), 0) FROM ran").fetchone()
            got = [m for m in proxied.exchange(messages, until_ready=syncs) if m[0] not in b"SK"]
            world.raw[name] = (expected, got)
            rows = admin.execute(b"SELECT q FROM ran WHERE n > %s ORDER BY n", mark).fetchall()
            world.ran[name] = [r[0] for r in rows]


@pytest.fixture(scope="module")
def world(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name = f"t_{secrets.token_hex(6)}"
    pg._superuser_query(f"CREATE DATABASE {name} OWNER {pg.user}")
    db = pg.with_dbname(name)
    sidecar: SidecarProcess | None = None
    try:
        with psycopg.connect(db.dsn(), autocommit=True) as conn:
            conn.execute((oracle.schema_sql() + RAW).encode())
        data: Path = tmp_path_factory.mktemp("ctes") / "flux"
        sidecar = start_sidecar(data, db)
        world = World(db.version)
        _raw(world, db, sidecar)
        _stale(world, db, sidecar)
        _psycopg(sidecar.dsn(application_name=oracle.APP), 0)
        info = sidecar.conninfo()
        info["database"] = info.pop("dbname")
        asyncio.run(_asyncpg(info, 1000))
        world.samples = metrics(sidecar.admin_url)
        sidecar.stop()
        world.stats = sidecar.stats()
        world.logged = oracle.logged_mutations(sidecar.data_dir)
        store = open_store(sidecar.data_dir, readonly=True)
        try:
            for stored in store.events(kind="mutation"):
                world.forms[stored.event.attrs["form"]] += 1
                world.truncated += bool(stored.event.attrs.get("truncated"))
        finally:
            store.close()
        with psycopg.connect(db.dsn(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT tbl, op, old, new, query FROM audit WHERE app = %s ORDER BY id",
                (oracle.APP,),
            ).fetchall()
        world.audit = oracle.audit_history([r[:4] for r in rows if REFUSED_MARK not in r[4]])
        yield world
    finally:
        if sidecar is not None:
            sidecar.stop()
        pg._superuser_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        pg._superuser_query(f"DROP DATABASE IF EXISTS {name}")


def test_every_message_is_the_same_direct_and_through(world: World) -> None:
    for name, (expected, got) in world.raw.items():
        assert decoded(got) == decoded(expected), name
        assert got == expected, name
    shown = decoded(world.raw["in a transaction, then SHOW ALL"][0])
    assert not any("flux" in repr(m) for m in shown)  # no setting of ours is listed
    assert any(m[0] == ord("E") for m in world.raw["error in cte"][0])
    assert any(m[0] == ord("s") for m in world.raw["bumped row-limited"][0])  # PortalSuspended


def test_the_server_ran_the_capture_and_the_refused_shape_as_sent(world: World) -> None:
    for name, sql, _ in RAW_CORPUS:
        if not sql or not world.ran[name]:
            continue
        if name.startswith("refused"):
            assert world.ran[name] == [sql]
        else:
            assert all("flux.cte_rows" in text for text in world.ran[name]), name


def test_the_mutation_log_equals_the_audit_trigger(world: World) -> None:
    tables = {"accounts", "pairs", "notes", "archive", "parts", "stamped"}
    ours = oracle.log_history(world.logged, tables)
    truth = {k: v for k, v in world.audit.items() if k[0] in tables}
    assert set(ours) == set(truth), set(ours) ^ set(truth)
    for key, changes in truth.items():
        assert ours[key] == changes, key
    oracled = [m for m in world.logged if m["table"] in tables]
    rolled_back = [m for m in oracled if m["status"] == "rolled_back"]
    assert len(rolled_back) == 2 * ROLLED_BACK_PER_DRIVER + 1  # + psycopg's failed Query
    assert {m["new"]["balance"] for m in rolled_back} == {88, 99, 97, 66}
    assert all(m["status"] in ("committed", "rolled_back") for m in oracled)


def test_rows_past_the_bound_are_marked_truncated(world: World) -> None:
    assert world.samples.get("flux_pg_mutations_truncated_writable_cte_too_large_total") == 1
    assert world.stats.get("mutations.truncated", 0) == 1
    assert 2000 < world.truncated < 20000  # the rows kept, each marked


def test_the_ctes_rows_were_captured_by_the_side_effect(world: World) -> None:
    captured = sum(n for form, n in world.forms.items() if form.startswith("writable-cte/"))
    assert captured > world.truncated
    native = "writable-cte/returning-old-new"
    if world.version >= 18:
        assert set(world.forms) >= {native}
    else:
        assert {"writable-cte/returning", "writable-cte/cte-key", "writable-cte/cte-upsert"} <= set(
            world.forms
        )


def test_a_new_tables_identity_is_learnt_by_the_read_back(world: World) -> None:
    fresh = [m for m in world.logged if m["table"] == "fresh"]
    assert [(m["op"], m["new"], m["status"]) for m in fresh] == [
        ("insert", {"id": 2, "v": 2}, "committed")
    ]
    prepared = [m["new"]["id"] for m in world.logged if m["table"] == "fresh2"]
    assert prepared == [2, 3]
    # Their first statements, the plain INSERT that learnt the table of _stale() and the
    # first INSERT into its copy.
    assert world.stats.get("mutations.uncaptured.identity-unknown", 0) == 4
    assert world.samples.get("flux_pg_mutations_uncaptured_identity_unknown_total") == 4


def test_a_column_added_behind_the_sidecars_back_never_shifts_the_result(world: World) -> None:
    assert world.stale == [[(1, 2, None), (1, 3, 7)], (3,)]
    updates = [m for m in world.logged if m["table"] == "stale" and m["op"] == "update"]
    assert [(m["old"], m["new"]) for m in updates] == [
        ({"id": 1, "v": 1}, {"id": 1, "v": 2}),
        ({"id": 1, "v": 2, "extra": 7}, {"id": 1, "v": 3, "extra": 7}),
    ]
    assert not any("42601" in name for name in world.stats)


def test_what_was_refused_is_counted(world: World) -> None:
    # The oracle's refused shape, once per driver, and the raw corpus' one (twice: Parse
    # and the statement's Execute are one statement).
    assert world.stats.get("mutations.uncaptured.writable-cte-star-over-from", 0) == 3
    assert world.samples.get("flux_pg_mutations_uncaptured_writable_cte_star_over_from_total") == 3
    assert world.stats.get("mutations.uncaptured.writable-cte-star-returned", 0) == 1
    assert world.stats.get("mutations.uncaptured.writable-cte", 0) == 0
