"""Things going wrong around the sidecar: cancels, bad passwords, clients and upstreams
vanishing mid-query, garbage on the wire, unreachable upstreams, and TLS on either side."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.fix_pg import PgServer, PgUnavailable, _chown, _run_as, free_port, start_pg_server

# Fixtures: the shared sidecar per server (``sidecar``).
from tests.fix_shared import (  # noqa: F401
    alive,
    asyncpg_kwargs,
    shared_pg_sidecar,
    shared_sidecars,
    upstream_of,
)
from tests.fix_sidecar import SidecarProcess, start_sidecar
from tests.fix_tls import make_ca

pytestmark = pytest.mark.timeout(90)


SLEEP_60 = "SELECT pg_sleep(60)"


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _active_pids(server: PgServer, query: str) -> list[int]:
    rows = server._superuser_query(
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query = %s ORDER BY pid",
        (query,),
    )
    return [int(r[0]) for r in rows]


def _wait_for_log(
    sidecar: SidecarProcess, *needles: str, offset: int = 0, timeout: float = 5.0
) -> str:
    """The sidecar's log from ``offset`` on, once it holds every one of ``needles``."""
    found = _wait(lambda: all(n in sidecar.stderr()[offset:] for n in needles), timeout)
    log = sidecar.stderr()[offset:]
    assert found, f"sidecar log lacks {needles!r}:\n{log[-2000:]}"
    return log


# ---------------------------------------------------------------------------
# cancel
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_psycopg_cancel_reaches_the_backend(sidecar: SidecarProcess, how: str) -> None:
    # cancel(): libpq's PQcancel, a bare CancelRequest. cancel_safe(): libpq 17's
    # cancel connection, which negotiates like a normal one (SSLRequest first) before
    # sending its CancelRequest.
    with psycopg.connect(sidecar.dsn(), autocommit=True, connect_timeout=10) as conn:
        timer = threading.Timer(0.5, getattr(conn, how))
        started = time.monotonic()
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                conn.execute("SELECT pg_sleep(30)")
        finally:
            timer.cancel()
        elapsed = time.monotonic() - started
        # Far below the 30 s the query would have run had the cancel not reached it.
        assert 0.4 < elapsed < 20.0
        assert info.value.sqlstate == "57014"
        assert info.value.diag.message_primary == "canceling statement due to user request"
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)


async def test_asyncpg_timeout_cancels_the_query(sidecar: SidecarProcess) -> None:
    upstream = upstream_of(sidecar)
    conn = await asyncpg.connect(**asyncpg_kwargs(sidecar.conninfo()))
    try:
        pid = conn.get_server_pid()
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetch("SELECT pg_sleep(30)", timeout=0.5)
        # asyncpg sent a CancelRequest; the next query waits for the cancelled one's end,
        # so it only answers quickly if the cancel reached the backend.
        async with asyncio.timeout(20):  # the cancelled pg_sleep(30) must not be waited out
            assert await conn.fetchval("SELECT 'usable'") == "usable"
        assert time.monotonic() - started < 20.0
        assert pid not in await asyncio.to_thread(_active_pids, upstream, "SELECT pg_sleep(30)")
    finally:
        await conn.close()


# ---------------------------------------------------------------------------
# authentication
# ---------------------------------------------------------------------------


async def test_wrong_password_gives_the_server_error(sidecar: SidecarProcess) -> None:
    upstream = upstream_of(sidecar)
    errors: dict[str, Any] = {}
    for name, host, port in (("direct", upstream.host, upstream.port),
                             ("proxied", sidecar.host, sidecar.port)):  # fmt: skip
        kwargs = {**asyncpg_kwargs(upstream.conninfo()), "host": host, "port": port,
                  "password": "not-the-password"}  # fmt: skip
        with pytest.raises(asyncpg.InvalidPasswordError) as info:
            await asyncpg.connect(**kwargs)
        errors[name] = (info.value.sqlstate, str(info.value))
        dsn = upstream.dsn(host=host, port=port, password="not-the-password")
        with pytest.raises(psycopg.OperationalError) as pinfo:
            await asyncio.to_thread(psycopg.connect, dsn, connect_timeout=10)
        errors[name + " psycopg"] = str(pinfo.value).split(":", 2)[-1]
    assert errors["proxied"] == errors["direct"]
    assert errors["proxied"] == ("28P01", 'password authentication failed for user "flux"')
    assert 'password authentication failed for user "flux"' in errors["proxied psycopg"]
    assert errors["proxied psycopg"] == errors["direct psycopg"]
    # and the right password still works through the same sidecar
    conn = await asyncpg.connect(**asyncpg_kwargs(sidecar.conninfo()))
    try:
        assert await conn.fetchval("SELECT current_user") == "flux"
    finally:
        await conn.close()


# ---------------------------------------------------------------------------
# a client that vanishes mid-query
# ---------------------------------------------------------------------------


async def test_client_disconnect_mid_query_releases_the_backend(sidecar: SidecarProcess) -> None:
    upstream = upstream_of(sidecar)
    conn = await asyncpg.connect(**asyncpg_kwargs(sidecar.conninfo()))
    pid = conn.get_server_pid()
    query = asyncio.create_task(conn.fetch(SLEEP_60))
    try:
        running = await asyncio.to_thread(
            _wait, lambda: pid in _active_pids(upstream, SLEEP_60), 5.0
        )
        assert running, "the query never started on the backend"
        conn.terminate()  # abort the socket: no Terminate message, no cancel from the client
        gone = await asyncio.to_thread(
            _wait, lambda: pid not in upstream.backend_pids(upstream.dbname), 5.0
        )
        assert gone, f"backend {pid} still running pg_sleep 5 s after the client vanished"
    finally:
        conn.terminate()
        query.cancel()
        await asyncio.gather(query, return_exceptions=True)


# ---------------------------------------------------------------------------
# an upstream that vanishes mid-query; upstream TLS (a private cluster with ssl on)
# ---------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 that is its own CA (sslrootcert takes it)."""
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    make_ca("localhost", dns=["localhost"], ips=["127.0.0.1"]).write(cert_path, key_path)
    return cert_path, key_path


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PgServer]:
    """A private PostgreSQL 15 cluster with ssl=on (TLS and plain both allowed), that
    logs every connection and disconnection. Tests may crash it (it restarts itself)."""
    run_as = _run_as()
    certs = Path(tempfile.mkdtemp(prefix="flux-tls-"))
    try:
        certs.chmod(0o755)
        cert, key = _self_signed(certs)
        for path in (certs, cert, key):
            _chown(path, run_as)
        settings = {
            "ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'",
            "log_connections": "on", "log_disconnections": "on",
        }  # fmt: skip
        try:
            server = start_pg_server(15, settings)
        except PgUnavailable as exc:
            pytest.skip(str(exc))
        try:
            yield server
        finally:
            server.destroy()
    finally:
        shutil.rmtree(certs, ignore_errors=True)


def _accepting(server: PgServer) -> bool:
    try:
        server._superuser_query("SELECT 1")
    except psycopg.Error:
        return False
    return True


@pytest.fixture(scope="module")
def tls_upstream_sidecar(
    private_pg: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """A sidecar whose upstream URL says sslmode=require."""
    assert _wait(lambda: _accepting(private_pg), 30, 0.2)
    url = f"postgresql://{private_pg.host}:{private_pg.port}/?sslmode=require"
    # upstream=None, else start_sidecar appends a plain --upstream-db (and the last one wins).
    sidecar = start_sidecar(tmp_path_factory.mktemp("tls-upstream") / "flux", None,
                            "--upstream-db", url)  # fmt: skip
    sidecar.upstream = private_pg
    try:
        assert f"-> 127.0.0.1:{private_pg.port} " in sidecar.stdout_lines[0]
        yield sidecar
    finally:
        sidecar.stop()


@pytest.fixture(scope="module")
def private_sidecar(
    private_pg: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """A plain sidecar in front of the private cluster."""
    sidecar = start_sidecar(tmp_path_factory.mktemp("private") / "flux", private_pg)
    try:
        yield sidecar
    finally:
        sidecar.stop()


def _ssl_of(cluster: PgServer, app: str) -> list[tuple[Any, ...]]:
    return cluster._superuser_query(
        "SELECT ssl, version FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)"
        " WHERE application_name = %s",
        (app,),
    )


async def test_upstream_tls_asyncpg(private_pg: PgServer, tls_upstream_sidecar: SidecarProcess
                                    ) -> None:  # fmt: skip
    sidecar = alive(tls_upstream_sidecar)
    await asyncio.to_thread(_wait, lambda: _accepting(private_pg), 30, 0.2)
    app = "flux-tls-test-asyncpg"
    conn = await asyncpg.connect(**asyncpg_kwargs(sidecar.conninfo()), ssl=False,
                                 server_settings={"application_name": app})  # fmt: skip
    try:
        assert await conn.fetchval("SELECT 'over tls'") == "over tls"
        rows = await asyncio.to_thread(_ssl_of, private_pg, app)
        assert len(rows) == 1 and rows[0][0] is True, rows  # sidecar to upstream: TLS
        assert str(rows[0][1]).startswith("TLSv1.")
        # A cancel (asyncpg's timeout) reaches the backend over the TLS upstream too.
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetch("SELECT pg_sleep(20)", timeout=0.4)
        async with asyncio.timeout(5):
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_upstream_tls_libpq(private_pg: PgServer, tls_upstream_sidecar: SidecarProcess) -> None:
    # A libpq client (psycopg; psql alike) in the clear; the sidecar's hop to the upstream
    # is TLS, which is where the upstream offers SCRAM-SHA-256-PLUS.
    sidecar = alive(tls_upstream_sidecar)
    assert _wait(lambda: _accepting(private_pg), 30, 0.2)
    app = "flux-tls-test"
    with psycopg.connect(sidecar.dsn(sslmode="disable", application_name=app),
                         autocommit=True, connect_timeout=10) as conn:  # fmt: skip
        assert not conn.pgconn.ssl_in_use  # client to sidecar: plain
        assert conn.execute("SELECT 'over tls'").fetchone() == ("over tls",)
        rows = _ssl_of(private_pg, app)
        assert len(rows) == 1 and rows[0][0] is True, rows  # sidecar to upstream: TLS
        timer = threading.Timer(0.4, conn.cancel)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(20)")
        finally:
            timer.cancel()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_upstream_killed_mid_query(private_pg: PgServer, private_sidecar: SidecarProcess) -> None:
    assert _wait(lambda: _accepting(private_pg), 30, 0.2)
    sidecar = alive(private_sidecar)
    log_offset = len(sidecar.stderr())
    outcome: dict[str, Any] = {}

    def run_query() -> None:
        try:
            with psycopg.connect(sidecar.dsn(), autocommit=True, connect_timeout=10) as conn:
                outcome["pid"] = conn.info.backend_pid
                conn.execute(SLEEP_60)
        except BaseException as exc:
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=run_query, daemon=True)
    thread.start()
    assert _wait(lambda: "pid" in outcome and outcome["pid"] in _active_pids(private_pg, SLEEP_60),
                 10), outcome  # fmt: skip
    killed = time.monotonic()
    os.kill(outcome["pid"], signal.SIGKILL)
    thread.join(10)
    assert not thread.is_alive(), "the client hangs after its backend was killed"
    assert isinstance(outcome.get("error"), psycopg.OperationalError), outcome
    assert outcome["ended"] - killed < 20.0  # not the 60 s of the query it was running
    assert _wait(lambda: "upstream closed mid-query" in sidecar.stderr()[log_offset:], 5), (
        sidecar.stderr()[log_offset:]
    )
    # The postmaster restarts after the crash; the sidecar serves new sessions again.
    assert _wait(lambda: _accepting(private_pg), 30, 0.2)
    with psycopg.connect(sidecar.dsn(), connect_timeout=10) as conn:
        assert conn.execute("SELECT 'back'").fetchone() == ("back",)


_LOG_PID = re.compile(
    r"\[(\d+)\] \S* \S+ LOG:  (connection received|connection authorized"
    r"|disconnection)"
)


def _log_events(server: PgServer, offset: int) -> list[tuple[int, str]]:
    """(pid, event) for each connection line the server logged past ``offset``."""
    with server.log_file.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [(int(m[1]), m[2]) for m in _LOG_PID.finditer(text)]


def _cancel_connections(events: list[tuple[int, str]]) -> set[int]:
    """Connections that never became sessions: CancelRequests (nothing else here makes
    them: no wrong passwords, no probes)."""
    received = {pid for pid, what in events if what == "connection received"}
    return received - {pid for pid, what in events if what == "connection authorized"}


def test_clean_disconnect_is_not_treated_as_mid_query(
    private_pg: PgServer, private_sidecar: SidecarProcess
) -> None:
    """A client that ends its session with Terminate has nothing running: the sidecar must
    not send a CancelRequest to the upstream for it, nor report the upstream's close as
    "upstream closed mid-query"."""
    assert _wait(lambda: _accepting(private_pg), 30, 0.2)
    sidecar = alive(private_sidecar)
    log_offset = len(sidecar.stderr())

    def sessions(count: int, *, mid_query: bool) -> list[tuple[int, str]]:
        offset = private_pg.log_file.stat().st_size
        pids = []
        for _ in range(count):
            conn = psycopg.connect(sidecar.dsn(), autocommit=True, connect_timeout=10)
            pid = conn.info.backend_pid
            pids.append(pid)
            assert conn.execute("SELECT 1").fetchone() == (1,)
            if mid_query:  # the control: a query running when the client vanishes
                conn.pgconn.send_query(SLEEP_60.encode())
                conn.pgconn.flush()
                assert _wait(lambda: pid in _active_pids(private_pg, SLEEP_60), 5)  # noqa: B023
                # Cut the connection under libpq (its fd stays open): the sidecar sees
                # the client go away while the query runs.
                with socket.socket(fileno=os.dup(conn.pgconn.socket)) as raw:
                    raw.shutdown(socket.SHUT_RDWR)
            conn.close()  # libpq sends Terminate, then closes its socket
        assert _wait(
            lambda: all((p, "disconnection") in _log_events(private_pg, offset) for p in pids), 5
        )
        time.sleep(0.5)  # a CancelRequest would have been sent right at the close
        return _log_events(private_pg, offset)

    control = sessions(1, mid_query=True)
    assert len(_cancel_connections(control)) == 1, control
    clean = sessions(10, mid_query=False)
    cancels = _cancel_connections(clean)
    assert not cancels, f"{len(cancels)} CancelRequests reached the upstream for 10 clean sessions"
    log = sidecar.stderr()[log_offset:]
    assert "mid-query" not in log, log[-2000:]


# ---------------------------------------------------------------------------
# garbage on the wire
# ---------------------------------------------------------------------------


def _send_and_drain(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
        raise AssertionError(f"the sidecar kept the connection open; got {received!r}")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid startup packet length"),
        (b"\x7f\xff\xff\xf0" + os.urandom(4), "invalid startup packet length 2147483632"),
        (b"\x00\x00\x00\x08\x00\x02\x00\x00", "unsupported frontend protocol 2.0"),
    ],
    ids=["http", "huge-length", "protocol-2"],
)
def test_garbage_first_packet_is_rejected(
    sidecar: SidecarProcess, payload: bytes, reason: str
) -> None:
    offset = len(sidecar.stderr())
    received = _send_and_drain(sidecar.port, payload)
    assert received == b"" or received.startswith(b"E"), received
    if received:
        assert reason.encode() in received
    log = _wait_for_log(sidecar, "rejected connection", reason, offset=offset)
    assert any("rejected connection" in line and reason in line for line in log.splitlines())
    with psycopg.connect(sidecar.dsn(), connect_timeout=10) as conn:
        assert conn.execute("SELECT 'still serving'").fetchone() == ("still serving",)


# ---------------------------------------------------------------------------
# upstream unreachable
# ---------------------------------------------------------------------------


def test_upstream_unreachable(pg: PgServer, sidecar_factory: Callable[..., SidecarProcess]) -> None:
    if pg.version != 15:
        pytest.skip("run once: no server is involved, only the sidecar's own error")
    nowhere = dataclasses.replace(pg, port=free_port())
    sidecar = sidecar_factory(nowhere, name="nowhere")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(sidecar.dsn(), connect_timeout=30)
    # The sidecar's own error, not libpq's "timeout expired": no hang.
    message = str(info.value)
    assert f"127.0.0.1:{nowhere.port}" in message, message
    assert "could not connect to the upstream" in message
    _wait_for_log(sidecar, "unreachable", f"127.0.0.1:{nowhere.port}")


# ---------------------------------------------------------------------------
# TLS between the client and the sidecar
# ---------------------------------------------------------------------------


def test_sslmode_require_without_tls_configured(sidecar: SidecarProcess) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(sidecar.dsn(sslmode="require"), connect_timeout=10)
    assert "server does not support SSL, but SSL was required" in str(info.value)
    # sslmode=prefer falls back to a plain session
    with psycopg.connect(sidecar.dsn(sslmode="prefer"), connect_timeout=10) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_client_tls_to_the_sidecar(
    sidecar: SidecarProcess, sidecar_factory: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    upstream = upstream_of(sidecar)
    if upstream.version != 15:
        pytest.skip("run once: TLS ends at the sidecar; the server's version plays no part")
    cert, key = _self_signed(tmp_path)
    tls_sidecar = sidecar_factory(upstream, "--db-tls-cert", str(cert), "--db-tls-key", str(key),
                              name="tls")  # fmt: skip
    with psycopg.connect(tls_sidecar.dsn(sslmode="require"), connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use
    # The certificate presented is ours: full verification against it succeeds.
    dsn = tls_sidecar.dsn(sslmode="verify-full", sslrootcert=str(cert))
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == ("flux",)
        assert conn.info.encoding == "utf-8"
        # libpq's cancel connection negotiates TLS too; its CancelRequest comes over TLS.
        timer = threading.Timer(0.4, conn.cancel_safe)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(20)")
        finally:
            timer.cancel()
        assert conn.execute("SELECT 3").fetchone() == (3,)
    # and a plain client still gets in
    with psycopg.connect(tls_sidecar.dsn(sslmode="disable"), connect_timeout=10) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 2").fetchone() == (2,)
