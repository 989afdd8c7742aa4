"""Tests of the real-PostgreSQL fixtures in tests/fix_pg.py themselves."""

from __future__ import annotations

import os
import socket
import time

import asyncpg
import psycopg
import pytest

from tests.fix_pg import PgServer, PsqlError


def test_psycopg_scram_login_and_version(pg: PgServer) -> None:
    with psycopg.connect(pg.dsn(), connect_timeout=10) as conn:
        num = conn.execute("SHOW server_version_num").fetchone()
        assert num is not None
        assert int(num[0]) // 10000 == pg.version
        assert conn.info.server_version // 10000 == pg.version
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row == ("flux", "flux")
        # the role's stored password is a SCRAM verifier, so the login above was SCRAM
    with psycopg.connect(pg.superuser_dsn(), connect_timeout=10) as su:
        verifier = su.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'flux'").fetchone()
        assert verifier is not None and verifier[0].startswith("SCRAM-SHA-256$")
        hba = su.execute(
            "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'"
        ).fetchall()
        assert hba == [("scram-sha-256",)]
        assert su.execute("SHOW max_connections").fetchone() == ("300",)


async def test_asyncpg_scram_login_and_version(pg: PgServer) -> None:
    conn = await asyncpg.connect(
        host=pg.host, port=pg.port, user=pg.user, password=pg.password,
        database=pg.dbname, timeout=10,
    )  # fmt: skip
    try:
        num = await conn.fetchval("SELECT current_setting('server_version_num')::int")
        assert num // 10000 == pg.version
        assert conn.get_server_version().major == pg.version
        assert await conn.fetchval("SELECT current_user") == "flux"
    finally:
        await conn.close()
    # the URL form works for asyncpg too
    conn = await asyncpg.connect(pg.dsn(), timeout=10)
    try:
        assert await conn.fetchval("SELECT 41 + 1") == 42
    finally:
        await conn.close()


def test_psycopg_wrong_password_is_28P01(pg: PgServer) -> None:
    app = f"wrong-pw-probe-{pg.version}-{os.getpid()}"
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pg.dsn(password="not-the-password", application_name=app),
                        connect_timeout=10)  # fmt: skip
    err = info.value
    assert 'password authentication failed for user "flux"' in str(err)
    if err.sqlstate is not None:  # libpq does not hand psycopg the code at connect time
        assert err.sqlstate == "28P01"
    # ...so check the server's side: it logged that FATAL with SQLSTATE 28P01 (%e)
    deadline = time.monotonic() + 5
    while True:
        fatal = [
            line for line in pg.log_file.read_text(errors="replace").splitlines()
            if "FATAL" in line and 'password authentication failed for user "flux"' in line
        ]  # fmt: skip
        if fatal or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert fatal and all(" 28P01 " in line for line in fatal), fatal


async def test_asyncpg_wrong_password_is_28P01(pg: PgServer) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await asyncpg.connect(pg.dsn(password="not-the-password"), timeout=10)
    assert info.value.sqlstate == "28P01"


def test_psql_runs_against_the_server(pg: PgServer) -> None:
    out = pg.psql("SELECT current_setting('server_version_num')::int / 10000;")
    assert out.strip() == str(pg.version)
    out = pg.psql("SELECT current_user;", superuser=True)
    assert out.strip() == pg.superuser
    with pytest.raises(PsqlError) as info:
        pg.psql("SELECT * FROM no_such_table;")
    assert "no_such_table" in info.value.stderr


def test_server_process_and_listener(pg: PgServer) -> None:
    assert pg.host == "127.0.0.1"
    os.kill(pg.pid, 0)  # the postmaster is alive
    with socket.create_connection((pg.host, pg.port), timeout=5):
        pass
    if os.geteuid() == 0:
        # PostgreSQL refuses root: the cluster belongs to the unprivileged account
        assert pg.data_dir.stat().st_uid != 0
    with psycopg.connect(pg.dsn(application_name="fixture-probe")) as conn:
        mine = conn.info.backend_pid
        assert mine in pg.backend_pids()
        assert mine in pg.backend_pids(dbname=pg.dbname, user=pg.user)
        assert mine not in pg.backend_pids(dbname="postgres")


def test_pg_db_is_fresh_and_isolated(pg_db: PgServer) -> None:
    assert pg_db.dbname.startswith("t_")
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (pg_db.dbname,)
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert owner == ("flux",)
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE scratch (id int)")  # left behind: dropped with the db


def test_pg_db_drop_survives_open_connections(pg_db: PgServer) -> None:
    # a connection left open at teardown must not prevent the database from being dropped
    conn = psycopg.connect(pg_db.dsn())
    conn.execute("SELECT 1")
    assert conn.info.backend_pid in pg_db.backend_pids(dbname=pg_db.dbname)


def test_restart_keeps_port_and_data(pg_db: PgServer) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('yes')")
    old_pid = pg_db.pid
    pg_db.restart()
    assert pg_db.pid != old_pid
    with psycopg.connect(pg_db.dsn()) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == ("yes",)


def test_stopped_server_is_brought_back(pg15: PgServer) -> None:
    pg15.stop()
    assert not pg15.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg15.dsn(), connect_timeout=3)
    # left stopped on purpose: the plugin restarts it for the next test


def test_stopped_server_came_back(pg15: PgServer) -> None:
    assert pg15.is_running()
    assert pg15.psql("SELECT 1;").strip() == "1"


def test_many_concurrent_connections(pg: PgServer) -> None:
    conns = [psycopg.connect(pg.dsn()) for _ in range(200)]
    try:
        assert len(set(pg.backend_pids(dbname=pg.dbname, user=pg.user))) >= 200
    finally:
        for c in conns:
            c.close()
