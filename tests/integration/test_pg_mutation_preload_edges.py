"""The session-start preload against clients that do not wait: requests pipelined before
the session's first ReadyForQuery, and a CancelRequest that arrives while the client's
first bytes wait behind the sidecar's own query. Each is compared byte for byte with the
same client talking to the server direct."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest

from protocols import pgwire
from protocols.pgwire import Query, Sync
from tests.fix_admin import metrics
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess
from tests.integration.test_pg_mutation_failopen import assert_counted, mutations
from tests.integration.test_pg_mutation_preload import AUDITED, PIPELINED
from tests.pgraw import RawClient, decoded


class EagerClient(RawClient):
    """Sends ``early`` in the same write as its last authentication message, without
    waiting for AuthenticationOk or the session's first ReadyForQuery."""

    def __init__(self, host: str, port: int, db: PgServer, early: Sequence[Any]) -> None:
        self._early = b"".join(pgwire.encode(m) for m in early)
        super().__init__(host, port, db.user, db.password, db.dbname)

    def send(self, messages: Sequence[Any]) -> None:
        if self._early and any(isinstance(m, pgwire.SASLResponse) for m in messages):
            data = b"".join(m if isinstance(m, bytes) else pgwire.encode(m) for m in messages)
            self.sock.sendall(data + self._early)
            self._early = b""
            return
        super().send(messages)

    def answers(self, cycles: int) -> list[bytes]:
        return [m for m in self.exchange([], until_ready=cycles) if m[0] not in b"SK"]


# The same writes as test_pg_mutation_preload's pipelined client, then a read.
EARLY = [*PIPELINED[:6], Query(query="SELECT id, v FROM fw ORDER BY id")]
RESET = "TRUNCATE fw, audit; INSERT INTO fw VALUES (1, 1), (2, 2), (3, 3);"


@pytest.mark.parametrize("early", [EARLY[:1], EARLY], ids=["one", "several"])
def test_requests_pipelined_before_the_first_ready_for_query_get_their_own_answers(
    pg_db: PgServer, early: list[Any], sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute(AUDITED.encode())
    sidecar = sidecar_factory(pg_db)
    cycles = sum(1 for m in early if isinstance(m, Query | Sync))
    answers = []
    for host, port in ((pg_db.host, pg_db.port), (sidecar.host, sidecar.port)):
        with psycopg.connect(pg_db.dsn(), autocommit=True) as admin:
            admin.execute(RESET.encode())
        with EagerClient(host, port, pg_db, early) as client:
            answers.append(client.answers(cycles))
    direct, through = answers
    assert decoded(through) == decoded(direct)
    assert through == direct
    assert_counted(sidecar, {"identity-unknown": 0})
    changes = sorted((e.attrs["op"], e.payload["before"], e.payload["after"])
                     for e in mutations(sidecar))  # fmt: skip
    expected = [("update", '{"id":1,"v":1}', '{"id":1,"v":2}')]
    if len(early) > 1:
        expected.insert(0, ("delete", '{"id":2,"v":2}', None))
    assert changes == expected


class KeyedClient(RawClient):
    """Keeps its session's BackendKeyData, to cancel with."""

    key = b""

    def read(self) -> tuple[int, bytes]:
        type_byte, message = super().read()
        if type_byte == ord("K"):
            self.key = message[5:]
        return type_byte, message

    def cancel(self, host: str, port: int) -> None:
        """A CancelRequest on a connection of its own; returns once the other end has
        read it (it closes the connection then)."""
        body = struct.pack("!I", 80877102) + self.key
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(struct.pack("!I", len(body) + 4) + body)
            while sock.recv(4096):
                pass


SLEEP = Query(query="SELECT pg_sleep(120)")


def _preload_waits(db: PgServer) -> bool:
    rows = db._superuser_query(
        "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
        "AND query LIKE %s",
        (db.dbname, "%json_build_array(c.oid%"),
    )
    return bool(rows)


@pytest.mark.parametrize("idle_cancel", [False, True], ids=["held", "idle-then-held"])
def test_a_cancel_for_a_statement_held_behind_the_preload_cancels_that_statement(
    pg_db: PgServer, idle_cancel: bool, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    """The preload waits on a lock (held by a test transaction on pg_trigger, which it
    reads); the client's statement waits behind it. A cancel sent while the client had
    nothing under way is ignored, as the server ignores it; one sent for the held statement
    cancels that statement once it runs, not the preload."""
    sidecar = sidecar_factory(pg_db)
    with KeyedClient(pg_db.host, pg_db.port, pg_db.user, pg_db.password, pg_db.dbname) as c:
        c.send([SLEEP])
        time.sleep(0.5)  # let it start; a cancel before it would be ignored
        c.cancel(pg_db.host, pg_db.port)
        direct = c.exchange([])
    with psycopg.connect(pg_db.superuser_dsn(dbname=pg_db.dbname)) as locker:
        locker.execute(b"LOCK pg_catalog.pg_trigger IN ACCESS EXCLUSIVE MODE")
        client = KeyedClient(sidecar.host, sidecar.port, pg_db.user, pg_db.password, pg_db.dbname)
        deadline = time.monotonic() + 30
        while not _preload_waits(pg_db):
            assert time.monotonic() < deadline, "the preload never waited on the lock"
            time.sleep(0.1)
        if idle_cancel:  # nothing of the client's under way
            client.cancel(sidecar.host, sidecar.port)
        client.send([SLEEP])
        client.cancel(sidecar.host, sidecar.port)
        locker.rollback()
    with client:
        through = client.exchange([])
    # Where the server notices a cancel (before or after the statement's RowDescription)
    # is its own timing, direct or not: what counts is that the statement was cancelled.
    for answer in (direct, through):
        assert bytes(m[0] for m in answer) in (b"TEZ", b"EZ"), decoded(answer)
        assert decoded(answer)[-2] == decoded(direct)[-2]  # 57014, the same text
    samples = metrics(sidecar.admin_url)
    assert samples.get("flux_pg_mutations_preloaded_total") == 1
    assert "flux_pg_mutations_preload_failed_total" not in samples


def test_a_failing_preload_is_not_sent_again_by_the_next_sessions(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    """statement_timeout cancels a first session's preload (57014), waiting on a lock:
    its client notices nothing and its first write is looked up per table. The sessions
    of the same user that follow do not send the preload again for a while: a pool's
    connections would each fail the same way. Each is counted."""
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute(b"CREATE TABLE bo (id int PRIMARY KEY, v int); INSERT INTO bo VALUES (1, 0)")
    sidecar = sidecar_factory(pg_db)
    with psycopg.connect(pg_db.superuser_dsn(dbname=pg_db.dbname)) as locker:
        locker.execute(b"LOCK pg_catalog.pg_trigger IN ACCESS EXCLUSIVE MODE")
        first = psycopg.connect(sidecar.dsn(), options="-c statement_timeout=1000", autocommit=True)
        deadline = time.monotonic() + 30
        while not metrics(sidecar.admin_url).get("flux_pg_mutations_preload_failed_total"):
            assert time.monotonic() < deadline, "the preload never failed"
            time.sleep(0.2)
        locker.rollback()
    with first:
        assert first.execute(b"UPDATE bo SET v = 1").rowcount == 1
    for _ in range(5):
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            assert conn.execute(b"UPDATE bo SET v = v + 1").rowcount == 1
    samples = metrics(sidecar.admin_url)
    assert samples.get("flux_pg_mutations_preload_failed_total") == 1
    assert samples.get("flux_pg_mutations_preload_skipped_total") == 5
    assert "flux_pg_mutations_preloaded_total" not in samples
    assert_counted(sidecar, {"identity-unknown": 1})
    assert len(mutations(sidecar)) == 5


def _premature(host: str, port: int, db: PgServer) -> list[Any]:
    """A client that sends a Query before answering the server's second SASL message."""
    client = RawClient.__new__(RawClient)
    client.sock = socket.create_connection((host, port), timeout=30)
    client._buf = b""
    params = (("user", db.user), ("database", db.dbname))
    client.send([pgwire.StartupMessage(parameters=params)])
    assert decoded([client.read()[1]])[0].__class__.__name__ == "AuthenticationSASL"
    first = pgwire.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=abcdefghijkl")
    client.send([first, Query(query="SELECT 1")])
    got = []
    with client.sock:
        while True:
            try:
                got.append(client.read()[1])
            except ConnectionError:
                return decoded(got)


def test_a_request_sent_in_the_middle_of_authentication_meets_the_server_as_it_came(
    pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    """The sidecar holds what a client sends ahead of its session; but a server that still
    waits for an authentication answer gets what the client sent instead, and says so."""
    sidecar = sidecar_factory(pg_db)
    direct = _premature(pg_db.host, pg_db.port, pg_db)
    through = _premature(sidecar.host, sidecar.port, pg_db)
    assert isinstance(direct[-1], pgwire.ErrorResponse) and "08P01" in str(direct[-1])
    assert [type(m) for m in through] == [type(m) for m in direct]
    assert through[-1] == direct[-1]
