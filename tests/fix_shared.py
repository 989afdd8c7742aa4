"""The shared sidecar: one database and one recording sidecar per PostgreSQL server.

Not a plugin: the ``sidecar`` fixture here overrides the suite's per-test one only in
the modules that import it (test_pg_clients, test_pg_load, test_pg_failures and
test_pg_transparency).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess, start_sidecar

# One database and one recording sidecar per PostgreSQL server, shared by the tests of
# the modules that import it: the CI budget does not allow
# a sidecar process (and a database) per test, at a second or more each to start and stop
# on a small machine. The tests use temporary tables or names of their own and close every
# connection they open. Keyed by the server's port.
_SHARED: dict[int, SidecarProcess] = {}


def alive(sidecar: SidecarProcess) -> SidecarProcess:
    """The shared sidecar, checked to still run before a test uses it."""
    code = sidecar.proc.poll()
    assert code is None, f"the shared sidecar exited ({code}):\n{sidecar.stderr()[-3000:]}"
    return sidecar


def shared_sidecar(pg: PgServer, factory: pytest.TempPathFactory) -> SidecarProcess:
    sidecar = _SHARED.get(pg.port)
    if sidecar is None:
        if not pg.is_running():
            pg.start()
        dbname = f"t_{secrets.token_hex(6)}"
        pg._superuser_query(f"CREATE DATABASE {dbname} OWNER {pg.user}")
        directory = factory.mktemp(f"shared-pg{pg.version}")
        sidecar = _SHARED[pg.port] = start_sidecar(directory / "flux", pg.with_dbname(dbname))
    return alive(sidecar)


def close_shared() -> None:
    while _SHARED:
        _, sidecar = _SHARED.popitem()
        sidecar.stop()
        upstream = sidecar.upstream
        if upstream is None or not upstream.is_running():
            continue  # the cluster is gone already, and its databases with it
        with contextlib.suppress(psycopg.Error):
            upstream._superuser_query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (upstream.dbname,),
            )
            upstream._superuser_query(f"DROP DATABASE IF EXISTS {upstream.dbname} WITH (FORCE)")


@pytest.fixture(scope="session")
def shared_sidecars() -> Iterator[None]:
    """Stops the shared sidecars at the end of the session."""
    yield
    close_shared()


@pytest.fixture(name="sidecar")
def shared_pg_sidecar(
    pg: PgServer, shared_sidecars: None, tmp_path_factory: pytest.TempPathFactory
) -> SidecarProcess:
    """Overrides the suite's per-test ``sidecar`` with the shared one."""
    return shared_sidecar(pg, tmp_path_factory)


def upstream_of(sidecar: SidecarProcess) -> PgServer:
    assert sidecar.upstream is not None
    return sidecar.upstream


def asyncpg_kwargs(conninfo: dict[str, Any]) -> dict[str, Any]:
    info = dict(conninfo)
    info["database"] = info.pop("dbname")
    info.setdefault("timeout", 10)
    return info
