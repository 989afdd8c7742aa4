"""Encryption end to end: a real sidecar, real PostgreSQL, HTTP and datagrams.

Known secrets go through every kind of event the sidecar records (PostgreSQL cycles
and the mutations they make, HTTP inbound and outbound, UDP); then every file
in the data directory is scanned byte by byte for them. Adding a kind is one more
entry in ``KINDS``: the sidecar flags it needs and a function that sends traffic
carrying secrets and returns them by label.
"""

from __future__ import annotations

import http.client
import json
import secrets
import shutil
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from recorder.crypto import EnvelopeSealer
from recorder.keys import PrivateKey, generate_keypair
from recorder.sqlite_store import SQLiteStore
from recorder.store import pack
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess, run_flux, start_sidecar
from tests.fix_udp import UdpPeer

TRACE = "5af7183fb1d4cf5f8d1e2a0c3b4d6e7f"
COMMENT = f"/*traceparent='00-{TRACE}-00f067aa0ba902b7-01'*/"


def secret(label: str) -> str:
    return f"{label}-{secrets.token_hex(8)}"


class Echo(UdpPeer):
    def answer(self, data: bytes) -> list[bytes]:
        return [b"echo:" + data]


class App(ThreadingHTTPServer):
    """The application (inbound) and a remote API (outbound): answers with a session cookie
    and a token in the body, the two things a response most often leaks."""

    def __init__(self) -> None:
        self.cookie, self.token = secret("setcookie"), secret("resptoken")
        super().__init__(("127.0.0.1", 0), _AppHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _AppHandler(BaseHTTPRequestHandler):
    server: App

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = json.dumps({"token": self.server.token}).encode()
        self.send_response(200)
        self.send_header("Set-Cookie", f"session={self.server.cookie}; HttpOnly")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Traffic:
    pg: PgServer
    echo: Echo
    app: App


@dataclass(frozen=True)
class Kind:
    """One kind of recorded traffic: what the sidecar needs, and how to send secrets through it."""

    name: str
    flags: Callable[[Traffic], list[str]]
    send: Callable[[SidecarProcess, Traffic], dict[str, str]]  # label -> secret sent
    events: int  # at least this many events once it is recorded


def send_pg(sidecar: SidecarProcess, traffic: Traffic) -> dict[str, str]:
    password, bound, duplicate, literal = (
        secret("pw"), secret("bind"), secret("dup"), secret("lit")
    )  # fmt: skip
    table = f"accounts_{secrets.token_hex(4)}"
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, password text, token text UNIQUE)")
        # The first write on a table only looks it up (uncaptured); the next ones are logged.
        conn.execute(f"INSERT INTO {table} VALUES (0, 'x', 't0')")
        conn.execute(f"DELETE FROM {table} WHERE id = 0")
        # A password stored in a table, then read back: SQL text and result rows.
        with psycopg.ClientCursor(conn) as cursor:  # literals inlined, simple Query protocol
            cursor.execute(f"INSERT INTO {table} VALUES (1, %s, 't1') {COMMENT}", (password,))
            cursor.execute(f"SELECT %s, password FROM {table} {COMMENT}", (literal,))
            assert cursor.fetchall() == [(literal, password)]
        # A secret in a bind value (extended protocol), and in an error's detail.
        conn.execute(f"INSERT INTO {table} VALUES (2, 'x', %s) {COMMENT}", (bound,))
        conn.execute(f"INSERT INTO {table} VALUES (3, 'x', %s) {COMMENT}", (duplicate,))
        with pytest.raises(psycopg.errors.UniqueViolation) as failure:
            conn.execute(f"INSERT INTO {table} VALUES (4, 'x', %s) {COMMENT}", (duplicate,))
        assert duplicate in (failure.value.diag.message_detail or "")
    return {
        "pg password in a table": password,
        "pg bind value": bound,
        "pg error detail": duplicate,
        "pg sql literal": literal,
    }


def send_http(sidecar: SidecarProcess, traffic: Traffic) -> dict[str, str]:
    sent = {
        label: secret(label.split()[-1])
        for label in ("http bearer", "http cookie", "http query", "http body", "http sensitive")
    }
    headers = {
        "Authorization": f"Bearer {sent['http bearer']}",
        "Cookie": f"sid={sent['http cookie']}",
        "X-Tenant-Secret": sent["http sensitive"],  # named in --sensitive-header
        "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
        "Content-Type": "application/json",
    }
    body = json.dumps({"password": sent["http body"]})
    target = f"/login?api_key={sent['http query']}&page=1"
    inbound = http.client.HTTPConnection(*sidecar.listeners["inbound"], timeout=10)
    proxy = http.client.HTTPConnection(*sidecar.listeners["http"], timeout=10)
    for conn, url in ((inbound, target), (proxy, traffic.app.url + target)):  # in, then out
        conn.request("POST", url, body=body, headers=headers)
        response = conn.getresponse()
        assert response.status == 200 and traffic.app.token in response.read().decode()
        conn.close()
    return {**sent, "http set-cookie": traffic.app.cookie, "http response": traffic.app.token}


def send_udp(sidecar: SidecarProcess, traffic: Traffic) -> dict[str, str]:
    token = secret("udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(f"metric,api_key={token}:1|c".encode(), sidecar.listeners["udp"])
        assert sock.recv(2048).startswith(b"echo:metric,api_key=")
    return {"udp payload": token}


KINDS = [
    Kind("postgresql", lambda t: [], send_pg, events=7),
    Kind(
        "http",
        lambda t: ["--app", t.app.url, "--sensitive-header", "x-tenant-secret"],
        send_http,
        events=2,
    ),
    Kind("udp", lambda t: ["--udp", f"127.0.0.1:0=127.0.0.1:{t.echo.port}"], send_udp, events=1),
]


@pytest.fixture(scope="module")
def key1() -> PrivateKey:
    return generate_keypair()[0]


@pytest.fixture(scope="module")
def key2() -> PrivateKey:
    return generate_keypair()[0]


@dataclass
class Recording:
    data_dir: Path
    stderr: str
    secrets: dict[str, str]  # label -> value
    recorder_cmdline: bytes
    recorder_environ: bytes


@pytest.fixture(scope="module")
def recording(
    pg15: PgServer, key1: PrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recording]:
    """Every kind of traffic through one sidecar that holds only the public key... and,
    in its environment, a private key that must not reach the recorder process."""
    echo, app = Echo(), App()
    traffic = Traffic(pg15, echo, app)
    data_dir = tmp_path_factory.mktemp("encryption") / "flux"
    flags = [flag for kind in KINDS for flag in kind.flags(traffic)]
    env = {"FLUX_PUBLIC_KEY": key1.public.to_text(), "FLUX_PRIVATE_KEY": key1.to_text()}
    expect = ("pg", "udp", "http", "inbound", "admin")
    sidecar = start_sidecar(data_dir, pg15, *flags, env=env, expect=expect)
    try:
        pid = sidecar.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        recorder = next(
            c for c in children if b"recorder.ingest" in Path(f"/proc/{c}/cmdline").read_bytes()
        )
        cmdline = Path(f"/proc/{recorder}/cmdline").read_bytes()
        environ = Path(f"/proc/{recorder}/environ").read_bytes()
        sent: dict[str, str] = {}
        for kind in KINDS:
            before = sidecar.stats().get("events", 0)
            sent.update(kind.send(sidecar, traffic))
            sidecar.wait_for_events(before + kind.events)
    finally:
        sidecar.stop()
        echo.close()
        app.shutdown()
    yield Recording(data_dir, sidecar.stderr(), sent, cmdline, environ)


def decrypted(data_dir: Path, *keys: PrivateKey, kind: str | None = None) -> bytes:
    with SQLiteStore(data_dir / "flux.db", readonly=True, sealer=EnvelopeSealer([], keys)) as store:
        return b"".join(
            pack(s.event.payload) + pack(s.event.attrs) for s in store.events(kind=kind)
        )


# Labels of secrets a module does not seal yet (none now): excluded from the scan below,
# each with its own strict xfail test, so the day it is fixed the test says so.
PENDING: set[str] = set()


def leaks(recording: Recording, labels: set[str]) -> list[tuple[str, str]]:
    files = [p for p in recording.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "flux.db" for p in files)
    found = [
        (label, str(p.relative_to(recording.data_dir)))
        for p in files
        for label in labels
        if recording.secrets[label].encode() in p.read_bytes()
    ]
    found += [(label, "stderr") for label in labels if recording.secrets[label] in recording.stderr]
    return found


def test_no_secret_in_any_file(recording: Recording, key1: PrivateKey, pg15: PgServer) -> None:
    labels = set(recording.secrets) - PENDING
    assert {label.split()[0] for label in labels} == {"pg", "http", "udp"}
    assert leaks(recording, labels) == []
    # Not vacuous: every secret was recorded, and opens with the private key.
    opened = decrypted(recording.data_dir, key1)
    assert [label for label, s in recording.secrets.items() if s.encode() not in opened] == []
    # The row images of mutations were recorded too (the stored password), and sealed.
    assert recording.secrets["pg password in a table"].encode() in decrypted(
        recording.data_dir, key1, kind="mutation"
    )
    # Authentication is never recorded, not even sealed: no password, no SCRAM exchange.
    assert pg15.password.encode() not in opened
    assert b"SCRAM-SHA-256" not in opened and b"n,,n=" not in opened


def test_sensitive_header_values_are_sealed(recording: Recording) -> None:
    assert leaks(recording, {"http sensitive"}) == []


def test_recorder_process_gets_no_private_key(recording: Recording, key1: PrivateKey) -> None:
    assert key1.public.to_text().encode() in recording.recorder_cmdline
    for blob in (recording.recorder_cmdline, recording.recorder_environ):
        assert b"fluxpriv_v1_" not in blob and b"FLUX_PRIVATE_KEY" not in blob


def trace_json(data_dir: Path, *args: str) -> tuple[int, Any, str]:
    result = run_flux(
        "trace", TRACE, "--data-dir", str(data_dir), "-o", "json", *args,
        check=False, env={"FLUX_PRIVATE_KEY": ""},
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout or "null"), result.stderr


def test_trace_shows_values_only_with_the_key(
    recording: Recording, key1: PrivateKey, key2: PrivateKey
) -> None:
    status, shown, _ = trace_json(recording.data_dir, "--private-key", key1.to_text())
    assert status == 0
    errors = [e for e in shown["events"] if e["error"]]
    assert errors[0]["attrs"]["sqlstate"] == "23505"
    assert "already exists" in errors[0]["payload"]["error"]["D"]

    status, hidden, stderr = trace_json(recording.data_dir)  # no key, no dev key here
    assert status == 0 and "show as [encrypted]" in stderr
    assert {e["payload"] for e in hidden["events"]} == {"[encrypted]"}
    assert {e["payload_key_id"] for e in hidden["events"]} == {key1.key_id}
    assert [e["attrs"] for e in hidden["events"]] == [e["attrs"] for e in shown["events"]]
    text = run_flux(
        "trace", TRACE, "--data-dir", str(recording.data_dir), env={"FLUX_PRIVATE_KEY": ""}
    )
    assert "[encrypted]" in text.stdout and "accounts_" in text.stdout  # attrs still display

    status, wrong, stderr = trace_json(recording.data_dir, "--private-key", key2.to_text())
    assert status == 1 and f"sealed to key id {key1.key_id}" in stderr
    assert {e["payload"] for e in wrong["events"]} == {"[encrypted]"}


def test_tampered_and_swapped_payloads_fail_clearly(
    recording: Recording, key1: PrivateKey, tmp_path: Path
) -> None:
    data_dir = tmp_path / "copy"
    shutil.copytree(recording.data_dir, data_dir)
    with sqlite3.connect(data_dir / "flux.db") as db:
        rows = db.execute(
            "SELECT id, payload FROM events WHERE trace_id = ? ORDER BY seq", (TRACE,)
        ).fetchall()
        (a, blob_a), (b, blob_b), (c, blob_c) = rows[1], rows[2], rows[3]
        db.execute("UPDATE events SET payload = ? WHERE id = ?", (blob_b, a))
        db.execute("UPDATE events SET payload = ? WHERE id = ?", (blob_a, b))
        db.execute("UPDATE events SET payload = ? WHERE id = ?", (blob_c[:-1] + b"\0", c))
    status, shown, stderr = trace_json(data_dir, "--private-key", key1.to_text())
    assert status == 1
    payloads = [e["payload"] for e in shown["events"]]
    assert payloads[1:4] == ["[unreadable]"] * 3
    assert all(isinstance(p, dict) for p in payloads[:1] + payloads[4:])
    for event in shown["events"][1:4]:
        assert "failed authentication" in event["payload_error"]
        assert f"event #{event['seq']} ({event['kind']}, span {event['span_id']})" in stderr


def test_rotation(
    recording: Recording, pg15: PgServer, key1: PrivateKey, key2: PrivateKey, tmp_path: Path
) -> None:
    # The module's recording was made under key 1; record more under key 2 on top of it.
    data_dir = tmp_path / "rotated"
    shutil.copytree(recording.data_dir, data_dir)
    new = "b2" * 16
    sidecar = start_sidecar(data_dir, pg15, env={"FLUX_PUBLIC_KEY": key2.public.to_text()})
    try:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            conn.execute(f"SELECT %s::text /*traceparent='00-{new}-00f067aa0ba902b7-01'*/", ("n",))
        sidecar.wait_for(lambda s: s.get("executions", 0) >= 2)
    finally:
        sidecar.stop()
    old_value = recording.secrets["pg bind value"]  # sent under key 1

    def read(trace: str, *args: str, env: str = "") -> tuple[int, str]:
        result = run_flux(
            "trace", trace, "--data-dir", str(data_dir), "-o", "json", *args,
            check=False, env={"FLUX_PRIVATE_KEY": env},
        )  # fmt: skip
        return result.returncode, result.stdout

    both = ["--private-key", key1.to_text(), "--private-key", key2.to_text()]
    status, shown = read(TRACE, *both)
    assert status == 0 and old_value in shown and "[encrypted]" not in shown
    status, shown = read(new, *both)
    assert status == 0 and json.loads(shown)["events"][0]["payload"]["params"] == [["n"]]
    # One variable holding both keys, the old one as PEM: as a deployment would set it.
    pem = key1.rsa.private_bytes(*_pem_args()).decode()
    status, shown = read(TRACE, env=f"{key2.to_text()},\n{pem}")
    assert status == 0 and old_value in shown
    # Only the new key: the old recordings stay closed, the new ones open.
    status, shown = read(TRACE, "--private-key", key2.to_text())
    assert status == 1 and old_value not in shown
    assert {e["payload"] for e in json.loads(shown)["events"]} == {"[encrypted]"}
    assert read(new, "--private-key", key2.to_text())[0] == 0


def _pem_args() -> tuple[Any, Any, Any]:
    from cryptography.hazmat.primitives import serialization

    return (
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
