"""The first write on a table through a fresh sidecar: every table's identity is loaded at
the session's start by a query of the sidecar's own, whose answer the client never sees.
So the very first write is captured, a view or a table with DO INSTEAD rules runs as sent,
and when that query fails the client notices nothing (the table is looked up as before)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest

from protocols.pgwire import Bind, Describe, Execute, Parse, Query, Sync
from tests.fix_admin import metrics
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess
from tests.integration.test_pg_mutation_failopen import (
    RAN,
    Corpus,
    _ext,
    _logged,
    _q,
    _run,
    assert_counted,
    mutations,
    same_direct_and_through,
)
from tests.pgraw import RawClient, decoded

AUDITED = """
CREATE TABLE fw (id int PRIMARY KEY, v int);
CREATE TABLE audit (n bigserial PRIMARY KEY, op text, old jsonb, new jsonb);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (op, old, new) VALUES (lower(TG_OP),
    CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
    CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
  RETURN NULL;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON fw
  FOR EACH ROW EXECUTE FUNCTION audit_row();
INSERT INTO fw VALUES (1, 1), (2, 2), (3, 3);
"""
FIRST = "UPDATE fw SET v = v * 10 WHERE id <= 2"


def _first_write_psycopg(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(FIRST.encode()).rowcount == 2


def _first_write_asyncpg(info: dict[str, Any]) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(**info)
        try:
            assert await conn.execute(FIRST) == "UPDATE 2"
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_the_first_write_through_a_fresh_sidecar_is_captured_as_the_trigger_saw_it(
    pg_db: PgServer, driver: str, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute((AUDITED + "TRUNCATE audit;").encode())
    sidecar = sidecar_factory(pg_db)
    if driver == "psycopg":
        _first_write_psycopg(sidecar.dsn())
    else:
        info = sidecar.conninfo()
        info["database"] = info.pop("dbname")
        _first_write_asyncpg(info)
    samples = metrics(sidecar.admin_url)
    assert samples.get("flux_pg_mutations_preloaded_total") == 1
    assert_counted(sidecar, {"identity-unknown": 0})
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        truth = conn.execute(b"SELECT op, old, new FROM audit ORDER BY n").fetchall()
    logged = [
        (e.attrs["op"], json.loads(e.payload["before"]), json.loads(e.payload["after"]))
        for e in mutations(sidecar)
    ]
    assert len(truth) == 2 and sorted(logged, key=str) == sorted(truth, key=str)


RULES = """
CREATE TABLE base (id int PRIMARY KEY, v int);
CREATE VIEW ruled_view AS SELECT id, v FROM base;
CREATE RULE ins AS ON INSERT TO ruled_view DO INSTEAD INSERT INTO base VALUES (NEW.id, NEW.v);
CREATE RULE upd AS ON UPDATE TO ruled_view DO INSTEAD UPDATE base SET v = NEW.v WHERE id = OLD.id;
CREATE TABLE ruled (id int PRIMARY KEY, v int);
CREATE RULE del AS ON DELETE TO ruled DO INSTEAD DELETE FROM base WHERE id = OLD.id;
"""
RULES_RESET = "TRUNCATE base, ruled; INSERT INTO base VALUES (1, 1), (2, 2); INSERT INTO ruled VALUES (1, 1);"  # fmt: skip


def test_views_and_do_instead_rules_run_as_sent_from_the_first_write(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute((RAN + RULES + _logged("base", "ruled")).encode())
    sidecar = sidecar_factory(pg_db)
    corpus: Corpus = [
        _q("view insert", "INSERT INTO ruled_view VALUES (5, 5)"),
        ("view update", "UPDATE ruled_view SET v = 9", _ext("UPDATE ruled_view SET v = 9")),
        _q("rule delete", "DELETE FROM ruled WHERE id = 1"),
    ]
    rounds, succeeded = same_direct_and_through(
        pg_db, sidecar, pg_db.user, pg_db.password, RULES_RESET, corpus
    )
    assert succeeded == {name for name, _, _ in corpus}  # no 0A000 for the first ones
    for ran in rounds:
        for name, sql, _ in corpus:
            assert ran[name] and all(text == sql for text in ran[name]), name
    assert_counted(sidecar, {"view": 4, "rules": 2, "identity-unknown": 0})


def test_a_failing_preload_is_invisible_and_tables_are_looked_up_as_before(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    """The session's role may not read a catalog column the preload needs (and the
    per-table lookup does not): the preload's error and its ReadyForQuery never reach the
    client, and the first write on the table is looked up as before."""
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute(
            (RAN + "CREATE TABLE pl (id int PRIMARY KEY, v int);" + _logged("pl")).encode()
        )
    with psycopg.connect(pg_db.superuser_dsn(dbname=pg_db.dbname), autocommit=True) as conn:
        (columns,) = conn.execute(
            b"SELECT string_agg(quote_ident(attname), ', ') FROM pg_attribute "
            b"WHERE attrelid = 'pg_catalog.pg_class'::regclass AND attnum > 0 "
            b"AND attname <> 'relpersistence'"
        ).fetchone()
        conn.execute(
            f"REVOKE SELECT ON pg_catalog.pg_class FROM PUBLIC; "
            f"GRANT SELECT ({columns}) ON pg_catalog.pg_class TO PUBLIC".encode()
        )
    sidecar = sidecar_factory(pg_db)
    reset = "TRUNCATE pl; INSERT INTO pl VALUES (1, 1), (2, 2);"
    corpus: Corpus = [
        _q("update", "UPDATE pl SET v = v + 1"),
        ("delete", "DELETE FROM pl WHERE id = 1", _ext("DELETE FROM pl WHERE id = 1")),
    ]
    rounds, succeeded = same_direct_and_through(
        pg_db, sidecar, pg_db.user, pg_db.password, reset, corpus
    )
    assert succeeded == {"update", "delete"}
    (looked_up,) = rounds[0]["update"]
    assert "json_build_array(c.oid" in looked_up and "to_json" not in looked_up
    assert "pg_catalog.to_json(" in rounds[1]["update"][0]
    samples = metrics(sidecar.admin_url)
    assert samples.get("flux_pg_mutations_preload_failed_total") == 1
    assert "flux_pg_mutations_preloaded_total" not in samples
    assert_counted(sidecar, {"identity-unknown": 1})
    assert len(mutations(sidecar)) == 1 + 2 + 1  # all but the first UPDATE's 2 rows


PIPELINED = [
    Query(query="UPDATE fw SET v = v + 1 WHERE id = 1"),
    Parse(query="DELETE FROM fw WHERE id = $1 RETURNING v", param_types=(23,)),
    Describe(kind="S"),
    Bind(params=(b"2",)),
    Execute(),
    Sync(),
    Query(query="INSERT INTO fw VALUES (1, 0)"),  # a duplicate key: the same error both ways
    Query(query="SELECT id, v FROM fw ORDER BY id"),
]


def test_a_session_whose_very_first_messages_write_sees_what_it_sees_direct(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    """The first messages arrive while the sidecar's own query is under way: they are held
    and sent on once its answer is in, and every message the client gets is the same."""
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute(AUDITED.encode())
    sidecar = sidecar_factory(pg_db)
    reset = "TRUNCATE fw, audit; INSERT INTO fw VALUES (1, 1), (2, 2), (3, 3);"
    answers = []
    for host, port in ((pg_db.host, pg_db.port), (sidecar.host, sidecar.port)):
        with psycopg.connect(pg_db.dsn(), autocommit=True) as admin:
            admin.execute(reset.encode())
        with RawClient(host, port, pg_db.user, pg_db.password, pg_db.dbname) as client:
            answers.append(_run(client, PIPELINED))  # sent at once, right after ReadyForQuery
    direct, through = answers
    assert decoded(through) == decoded(direct)
    assert through == direct
    assert_counted(sidecar, {"identity-unknown": 0})
    changes = sorted((e.attrs["op"], e.payload["before"], e.payload["after"])
                     for e in mutations(sidecar))  # fmt: skip
    assert changes == [
        ("delete", '{"id":2,"v":2}', None), ("update", '{"id":1,"v":1}', '{"id":1,"v":2}')
    ]  # fmt: skip
