"""Statements whose capture could change what the client sees run exactly as sent, on
PostgreSQL 15 and 18: a role without SELECT on the table, row-level security, writable
CTE shapes the rewriter does not handle, MERGE before 17; and capture turned off. Each is run direct and through the
sidecar by a raw protocol client and every message compared; a statement-level trigger
records the text the server ran (``current_query()``); the query event says why nothing
was captured, and ``flux stats`` and the metrics count it."""

from __future__ import annotations

import argparse
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from flux_proxy.keysetup import reader_sealer
from protocols.pgwire import Bind, Describe, Execute, Parse, Query, Sync
from recorder.store import open_store
from tests.fix_admin import metrics
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess
from tests.pgraw import RawClient, decoded

# Every statement on a table under test leaves the text the server ran in ``ran``.
RAN = """
CREATE TABLE ran (n bigserial PRIMARY KEY, q text);
CREATE FUNCTION log_ran() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN INSERT INTO ran (q) VALUES (current_query()); RETURN NULL; END $$;
"""
PASSWORD = "w-secret-pw"


def _logged(*tables: str) -> str:
    return "".join(
        f"CREATE TRIGGER ran AFTER INSERT OR UPDATE OR DELETE ON {t} "
        "FOR EACH STATEMENT EXECUTE FUNCTION log_ran();\n"
        for t in tables
    )


@pytest.fixture
def role(pg_db: PgServer) -> Iterator[str]:
    """A login role without privileges of its own (roles are per cluster: a fresh name)."""
    name = f"w_{secrets.token_hex(4)}"
    pg_db._superuser_query(f"CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'")
    try:
        yield name
    finally:
        pg_db._superuser_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        with psycopg.connect(pg_db.superuser_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {name}".encode())
        pg_db._superuser_query(f"DROP ROLE {name}")


def _run(client: RawClient, messages: list[Any]) -> list[bytes]:
    syncs = sum(1 for m in messages if isinstance(m, Sync | Query))
    return [m for m in client.exchange(messages, until_ready=syncs) if m[0] not in b"SK"]


def _ext(sql: str) -> list[Any]:
    return [Parse(query=sql), Describe(kind="S"), Bind(), Execute(), Sync()]


Corpus = list[tuple[str, str, list[Any]]]  # (name, SQL text, messages)


def _q(name: str, sql: str) -> tuple[str, str, list[Any]]:
    return name, sql, [Query(query=sql)]


def same_direct_and_through(
    db: PgServer, sidecar: SidecarProcess, user: str, password: str, reset: str, corpus: Corpus
) -> tuple[list[dict[str, list[str]]], set[str]]:
    """Runs the corpus twice through the sidecar (first on a fresh session, then with
    everything the sidecar learnt since), each statement also direct, from the same state; every message
    must be the same. Returns, per round, the texts the server ran for each statement,
    and the statements that succeeded."""
    rounds: list[dict[str, list[str]]] = []
    succeeded: set[str] = set()
    with (
        psycopg.connect(db.superuser_dsn(dbname=db.dbname), autocommit=True) as admin,
        RawClient(db.host, db.port, user, password, db.dbname) as direct,
        RawClient(sidecar.host, sidecar.port, user, password, db.dbname) as proxied,
    ):
        for number in range(2):
            ran: dict[str, list[str]] = {}
            for name, _, messages in corpus:
                admin.execute(reset.encode())
                expected = _run(direct, messages)
                admin.execute(reset.encode())
                mark = admin.execute(b"SELECT coalesce(max(n), 0) FROM ran").fetchone()
                got = _run(proxied, messages)
                assert decoded(got) == decoded(expected), f"round {number}: {name}"
                assert got == expected, f"round {number}: {name}"
                rows = admin.execute(b"SELECT q FROM ran WHERE n > %s ORDER BY n", mark)
                ran[name] = [r[0] for r in rows.fetchall()]
                if not any(m[0] == ord("E") for m in expected):
                    succeeded.add(name)
            rounds.append(ran)
    return rounds, succeeded


def uncaptured_reasons(sidecar: SidecarProcess) -> Counter[str]:
    """Why statements were not captured, from the query events (the sidecar stopped)."""
    sidecar.stop()
    store = open_store(sidecar.data_dir, readonly=True)
    try:
        return Counter(
            reason
            for stored in store.events(kind="pg.query")
            for reason in stored.event.attrs.get("uncaptured", ())
        )
    finally:
        store.close()


def mutations(sidecar: SidecarProcess) -> list[Any]:
    """The mutation events stored, payloads opened with the data dir's dev key."""
    sealer = reader_sealer(None, sidecar.data_dir)
    store = open_store(sidecar.data_dir, readonly=True, sealer=sealer)
    try:
        return [s.event for s in store.events(kind="mutation")]
    finally:
        store.close()


def assert_counted(sidecar: SidecarProcess, counts: dict[str, int]) -> None:
    """Each reason counted in the metrics (now) and, once stopped, in the query events and
    ``flux stats``."""
    samples = metrics(sidecar.admin_url)
    for reason, count in counts.items():
        name = "flux_pg_mutations_uncaptured_" + reason.replace("-", "_").replace(" ", "_")
        assert samples.get(name + "_total", 0) == count, (reason, samples)
    reasons = uncaptured_reasons(sidecar)
    stats = sidecar.stats()
    for reason, count in counts.items():
        assert reasons[reason] == count, (reason, reasons)
        assert stats.get(f"mutations.uncaptured.{reason}", 0) == count, (reason, stats)


PRIVILEGES = """
CREATE TABLE secret (id int PRIMARY KEY, v int);
CREATE TABLE partial (id int PRIMARY KEY, v int, hidden text);
CREATE TABLE colsel (id int PRIMARY KEY, v int);
"""
PRIVILEGES_RESET = """
TRUNCATE secret, partial, colsel;
INSERT INTO secret VALUES (1, 1), (2, 2); INSERT INTO partial VALUES (1, 1, 'x'), (2, 2, 'y');
INSERT INTO colsel VALUES (1, 1), (2, 2);
"""


def test_a_role_without_select_gets_what_it_gets_direct(
    pg_db: PgServer, role: str, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    with psycopg.connect(pg_db.superuser_dsn(dbname=pg_db.dbname), autocommit=True) as conn:
        conn.execute((RAN + PRIVILEGES + _logged("secret", "partial", "colsel")).encode())
        conn.execute(
            f"GRANT INSERT, UPDATE, DELETE ON secret, partial, colsel TO {role}; "
            f"GRANT SELECT (id, v) ON partial, colsel TO {role}".encode()
        )
    sidecar = sidecar_factory(pg_db)
    corpus: Corpus = []
    for table in ("secret", "partial", "colsel"):
        corpus += [
            _q(f"{table} update", f"UPDATE {table} SET v = 7"),
            _q(f"{table} insert", f"INSERT INTO {table} (id, v) VALUES (10, 1)"),
            _q(f"{table} upsert", f"INSERT INTO {table} (id, v) VALUES (1, 1) ON CONFLICT DO NOTHING"),
            (f"{table} extended", f"DELETE FROM {table}", _ext(f"DELETE FROM {table}")),
            _q(f"{table} where", f"UPDATE {table} SET v = 3 WHERE id = 1"),
        ]  # fmt: skip
    rounds, succeeded = same_direct_and_through(
        pg_db, sidecar, role, PASSWORD, PRIVILEGES_RESET, corpus
    )
    assert "secret where" not in succeeded and "partial where" in succeeded  # 42501 both ways
    for name, sql, _ in corpus:
        if name.startswith("colsel") or name not in succeeded:
            continue
        assert rounds[1][name] == [sql], name  # ran exactly as sent
    captured = [name for name, sql, _ in corpus if name.startswith("colsel")]
    assert all(rounds[1][name] and rounds[1][name][0] != sql for name in captured)
    denied = sum(1 for name in succeeded if not name.startswith("colsel"))
    # Known from the session's start: even the first statement on a table runs as sent.
    assert_counted(sidecar, {"no-select-privilege": 2 * denied, "identity-unknown": 0})
    changes = [e for e in mutations(sidecar) if e.attrs["table"] == "public.colsel"]
    # Per round: the first UPDATE's 2 rows, insert, delete 2, update.
    assert len(changes) == 2 * (2 + 1 + 2 + 1)
    # SELECT granted on every column reads the row but not its version (a system column).
    assert not any("version_before" in e.attrs for e in changes)


def test_a_role_switch_is_followed(
    pg_db: PgServer, role: str, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    reset = "TRUNCATE owned; INSERT INTO owned VALUES (1, 1), (2, 2);"
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:  # its owner may read it
        conn.execute((RAN + "CREATE TABLE owned (id int PRIMARY KEY, v int);" + reset).encode())
        conn.execute((_logged("owned") + f"GRANT UPDATE ON owned TO {role}").encode())
    pg_db._superuser_query(f"GRANT {role} TO {pg_db.user}")
    sidecar = sidecar_factory(pg_db)
    steps = [
        "UPDATE owned SET v = v + 1",  # captured: the owner's tables known from the start
        "UPDATE owned SET v = v + 2",  # captured
        f"SET ROLE {role}",
        "UPDATE owned SET v = 7",  # another role: looked up (its capture would be refused)
        "UPDATE owned SET v = 8",  # then run as sent
        "RESET ROLE",
        "UPDATE owned SET v = 9",  # the owner's again: captured
        f"BEGIN; SET LOCAL ROLE {role}; UPDATE owned SET v = 10; COMMIT",
        f"BEGIN; SET LOCAL ROLE {role}",
        "UPDATE owned SET v = 11",  # as sent
        "COMMIT",
        "UPDATE owned SET v = 12",  # captured
    ]
    answers: list[list[list[bytes]]] = []
    with psycopg.connect(pg_db.dsn(), autocommit=True) as admin:
        for host, port in ((pg_db.host, pg_db.port), (sidecar.host, sidecar.port)):
            admin.execute(reset.encode())
            mark = admin.execute(b"SELECT coalesce(max(n), 0) FROM ran").fetchone()
            with RawClient(host, port, pg_db.user, pg_db.password, pg_db.dbname) as client:
                answers.append([_run(client, [Query(query=sql)]) for sql in steps])
        texts = admin.execute(b"SELECT q FROM ran WHERE n > %s ORDER BY n", mark).fetchall()
    direct, through = answers
    for sql, expected, got in zip(steps, direct, through, strict=True):
        assert decoded(got) == decoded(expected), sql
        assert got == expected, sql
    ran = {sql: [t for (t,) in texts if sql in t] for sql in steps if sql.startswith("UPDATE")}
    assert ran["UPDATE owned SET v = 8"] == ["UPDATE owned SET v = 8"]  # as sent
    assert ran["UPDATE owned SET v = 11"] == ["UPDATE owned SET v = 11"]
    (looked_up,) = ran["UPDATE owned SET v = 7"]
    assert "json_build_array(c.oid" in looked_up and "to_json" not in looked_up
    (captured,) = ran["UPDATE owned SET v = 12"]
    assert "pg_catalog.to_json(" in captured and "json_build_array(c.oid" not in captured
    (mixed,) = [t for (t,) in texts if "v = 10" in t]
    assert "to_json" not in mixed  # the role changes inside the text: looked up only
    assert_counted(sidecar, {"no-select-privilege": 2})
    (first,) = ran["UPDATE owned SET v = v + 1"]
    assert "pg_catalog.to_json(" in first and "json_build_array(c.oid" not in first
    assert len(mutations(sidecar)) == 4 * 2  # + 1, + 2, = 9 and = 12, two rows each


ROW_SECURITY = """
CREATE TABLE rls (id int PRIMARY KEY, owner text, v int);
ALTER TABLE rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON rls FOR SELECT USING (owner = current_user);
CREATE POLICY upd ON rls FOR UPDATE USING (true) WITH CHECK (true);
CREATE POLICY ins ON rls FOR INSERT WITH CHECK (true);
CREATE POLICY del ON rls FOR DELETE USING (true);
CREATE TABLE forced (id int PRIMARY KEY, v int);
ALTER TABLE forced ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY low ON forced FOR SELECT USING (v < 100);
CREATE POLICY upd ON forced FOR UPDATE USING (true) WITH CHECK (true);
CREATE POLICY del ON forced FOR DELETE USING (true);
"""


def test_row_level_security_tables_run_as_sent(
    pg_db: PgServer, role: str, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    with psycopg.connect(pg_db.superuser_dsn(dbname=pg_db.dbname), autocommit=True) as conn:
        conn.execute((RAN + ROW_SECURITY + _logged("rls", "forced")).encode())
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON rls TO {role}; "
            f"ALTER TABLE forced OWNER TO {role}".encode()  # FORCE: even its owner is filtered
        )
    reset = f"""
    TRUNCATE rls, forced;
    INSERT INTO rls VALUES (1, '{role}', 1), (2, 'other', 2), (3, '{role}', 3), (4, 'other', 4);
    INSERT INTO forced VALUES (1, 1), (2, 200), (3, 3);
    """
    sidecar = sidecar_factory(pg_db)
    corpus: Corpus = [
        # Without a column read, no SELECT policy applies: every row is changed. A RETURNING
        # that read the row would limit them to the ones the role may see, or fail.
        _q("update all", "UPDATE rls SET v = 9"),
        _q("insert unseen", "INSERT INTO rls VALUES (20, 'someone', 1)"),
        ("delete all", "DELETE FROM rls", _ext("DELETE FROM rls")),
        _q("forced update", "UPDATE forced SET v = 500"),
        _q("forced delete", "DELETE FROM forced"),
        _q("filtered", "UPDATE rls SET v = v + 1 WHERE id > 0"),
    ]
    rounds, succeeded = same_direct_and_through(pg_db, sidecar, role, PASSWORD, reset, corpus)
    assert succeeded == {name for name, _, _ in corpus}
    for name, sql, _ in corpus:
        assert rounds[1][name] == [sql], name
    assert_counted(sidecar, {"row-level security": 2 * len(corpus), "identity-unknown": 0})
    assert not mutations(sidecar)


WRITABLE = """
CREATE TABLE wc (id int PRIMARY KEY, v int);
CREATE TABLE wc_arch (id int, v int);
"""
WRITABLE_RESET = "TRUNCATE wc, wc_arch; INSERT INTO wc VALUES (1, 1), (2, 2), (3, 3);"


def test_writable_ctes_it_does_not_handle_run_as_sent(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    """Writable CTEs are captured (test_pg_writable_ctes.py), but not every shape: these run
    exactly as sent, and are counted with why."""
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute((RAN + WRITABLE + _logged("wc", "wc_arch")).encode())
    sidecar = sidecar_factory(pg_db)
    over_from = "WITH u AS (UPDATE wc SET v = 0 FROM wc_arch RETURNING *) SELECT count(*) FROM u"
    unnamed = "WITH u AS (UPDATE wc SET v = 1 RETURNING id, EXISTS (SELECT 1)) SELECT * FROM u"
    corpus: Corpus = [
        _q("star over from", over_from),
        ("star over from extended", over_from, _ext(over_from)),
        _q("unnamed", unnamed),
        _q("nested with", "WITH d AS (WITH x AS (SELECT 1 AS id) DELETE FROM wc WHERE id IN "
           "(SELECT id FROM x) RETURNING *) SELECT * FROM d"),
        _q("recursive", "WITH RECURSIVE d AS (DELETE FROM wc WHERE id = 2 RETURNING id) "
           "SELECT * FROM d"),
        _q("fails", "WITH d AS (DELETE FROM wc RETURNING *) INSERT INTO wc SELECT * FROM d, d AS e"),
    ]  # fmt: skip
    rounds, succeeded = same_direct_and_through(
        pg_db, sidecar, pg_db.user, pg_db.password, WRITABLE_RESET, corpus
    )
    assert "fails" not in succeeded  # a duplicate key, the same error both ways
    for ran in rounds:
        for name, sql, _ in corpus:
            if name != "fails":
                assert all(text == sql for text in ran[name]), name
    assert_counted(
        sidecar,
        {"writable-cte-star-over-from": 4, "writable-cte-unnamed-column": 2,
         "writable-cte-nested-with": 2, "writable-cte-recursive": 2},
    )  # fmt: skip
    assert not mutations(sidecar)


MERGE = "CREATE TABLE mt (id int PRIMARY KEY, v int);"
MERGE_RESET = "TRUNCATE mt; INSERT INTO mt VALUES (1, 1), (2, 2), (4, 4);"
MERGE_SQL = (
    "MERGE INTO mt USING (VALUES (1, 10), (3, 30), (4, 40)) s(id, v) ON mt.id = s.id "
    "WHEN MATCHED AND s.v > 20 THEN DELETE WHEN MATCHED THEN UPDATE SET v = mt.v + s.v "
    "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)"
)


def test_merge_is_captured_from_18_and_runs_as_sent_before(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute((RAN + MERGE + _logged("mt")).encode())
    sidecar = sidecar_factory(pg_db)
    corpus: Corpus = [_q("merge", MERGE_SQL), ("merge extended", MERGE_SQL, _ext(MERGE_SQL))]
    if pg_db.version >= 18:
        returning = MERGE_SQL + " RETURNING merge_action(), old.v, new.*"
        corpus.append(_q("merge returning", returning))
    rounds, succeeded = same_direct_and_through(
        pg_db, sidecar, pg_db.user, pg_db.password, MERGE_RESET, corpus
    )
    assert succeeded == {name for name, _, _ in corpus}
    if pg_db.version < 17:
        for ran in rounds:
            assert all(ran[name] == [sql] * len(ran[name]) for name, sql, _ in corpus)
        assert_counted(sidecar, {"merge-before-pg17": 2 * len(corpus)})
        assert not mutations(sidecar)
        return
    assert all(rounds[1][name][0] != sql for name, sql, _ in corpus)  # captured
    assert_counted(sidecar, {"identity-unknown": 0})
    changes = [(e.attrs["op"], e.payload["before"], e.payload["after"])
               for e in mutations(sidecar)]  # fmt: skip
    expected = [("update", '{"id":1,"v":1}', '{"id":1,"v":11}'),
                ("insert", None, '{"id":3,"v":30}'), ("delete", '{"id":4,"v":4}', None)]  # fmt: skip
    # Every MERGE, the very first included, in both rounds, is captured.
    assert sorted(changes, key=str) == sorted(expected * (2 * len(corpus)), key=str)


def test_capture_off_forwards_every_statement_as_sent(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute((RAN + MERGE + _logged("mt")).encode())
    off = [
        sidecar_factory(pg_db, "--no-capture-mutations", name="flag"),
        sidecar_factory(pg_db, name="env", env={"FLUX_CAPTURE_MUTATIONS": "off"}),
    ]
    on = sidecar_factory(
        pg_db, "--capture-mutations", name="on", env={"FLUX_CAPTURE_MUTATIONS": "off"}
    )
    sql = "UPDATE mt SET v = v + 1"
    for sidecar in [*off, on, on]:
        with psycopg.connect(pg_db.superuser_dsn(dbname=pg_db.dbname), autocommit=True) as conn:
            conn.execute(MERGE_RESET.encode())
            mark = conn.execute(b"SELECT coalesce(max(n), 0) FROM ran").fetchone()
            with psycopg.connect(sidecar.dsn(), autocommit=True) as client:
                assert client.execute(sql.encode()).rowcount == 3
            (text,) = conn.execute(b"SELECT q FROM ran WHERE n > %s", mark).fetchone() or ("",)
        assert (text == sql) == (sidecar is not on), sidecar.data_dir.name
    for sidecar in off:
        sidecar.stop()
        assert not mutations(sidecar)
        assert not any(k.startswith("mutations.") for k in sidecar.stats())
    on.stop()
    assert len(mutations(on)) == 6  # both UPDATEs, the first one on the table included


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [([], None, True), ([], "off", False), ([], "0", False), ([], "on", True),
     (["--no-capture-mutations"], None, False), (["--capture-mutations"], "off", True)],
)  # fmt: skip
def test_capture_setting_from_flag_and_environment(
    argv: list[str], env: str | None, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flux_proxy.config import add_serve_flags, settings_from_args

    if env is None:
        monkeypatch.delenv("FLUX_CAPTURE_MUTATIONS", raising=False)
    else:
        monkeypatch.setenv("FLUX_CAPTURE_MUTATIONS", env)
    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    assert settings_from_args(parser.parse_args(argv)).capture_mutations is expected
