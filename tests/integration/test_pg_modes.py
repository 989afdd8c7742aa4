"""Modes seen from a PostgreSQL client: replay never reaches the upstream."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import replace

import psycopg
import pytest

from tests.fix_pg import PgServer
from tests.fix_sentinel import Sentinel
from tests.fix_sidecar import SidecarProcess


@pytest.fixture
def sentinel() -> Iterator[Sentinel]:
    s = Sentinel()
    yield s
    s.close()


def test_replay_mode_answers_itself_and_forwards_nothing(
    pg15: PgServer, sentinel: Sentinel, sidecar_factory: Callable[..., SidecarProcess]
) -> None:
    sidecar = sidecar_factory(replace(pg15, port=sentinel.port), mode="replay")
    # The sidecar is the server: startup succeeds without the upstream (any password)...
    with psycopg.connect(sidecar.dsn(password="not-checked"), connect_timeout=5) as conn:
        # ...and a statement nobody recorded is an in-protocol error naming the problem.
        with pytest.raises(psycopg.Error, match="no recorded answer") as failure:
            conn.execute("SELECT 'never recorded'")
        assert failure.value.sqlstate == "R9001"
    # A CancelRequest is not forwarded either.
    with socket.create_connection((sidecar.host, sidecar.port), timeout=5) as raw:
        raw.sendall((16).to_bytes(4, "big") + (80877102).to_bytes(4, "big") + b"\0" * 8)
        raw.settimeout(5)
        assert raw.recv(100) == b""
    assert sentinel.connections == 0
