"""Pytest plugin: the sidecar as a real process in front of a real PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fix_pg import PgServer

REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"^flux: listening (\w+) \[?([^\]\s]+?)\]?:(\d+)")
_UDP_LISTENING = re.compile(r"^flux: listening udp \[?([^\]\s]+?)\]?:(\d+) -> \S*:(\d+)")


@dataclass
class SidecarProcess:
    proc: subprocess.Popen[str]
    data_dir: Path
    stderr_path: Path
    upstream: PgServer | None
    listeners: dict[str, tuple[str, int]] = field(default_factory=dict)
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.listeners["pg"][0]

    @property
    def port(self) -> int:
        return self.listeners["pg"][1]

    def dsn(self, **overrides: Any) -> str:
        assert self.upstream is not None
        overrides.setdefault("host", self.host)
        overrides.setdefault("port", self.port)
        return self.upstream.dsn(**overrides)

    def conninfo(self) -> dict[str, Any]:
        assert self.upstream is not None
        return {**self.upstream.conninfo(), "host": self.host, "port": self.port}

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def udp_listener(self, upstream_port: int, timeout: float = 10.0) -> tuple[str, int]:
        """The ``--udp`` listener forwarding to ``upstream_port`` (several may be announced)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.stdout_lines):
                match = _UDP_LISTENING.match(line)
                if match and int(match[3]) == upstream_port:
                    return match[1], int(match[2])
            if time.monotonic() > deadline:
                raise AssertionError(f"no udp listener toward port {upstream_port} announced")
            time.sleep(0.05)

    def flux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_flux(*args, "--data-dir", str(self.data_dir), check=check)

    def flux_json(self, *args: str) -> Any:
        return json.loads(self.flux(*args, "--output", "json").stdout)

    @property
    def admin_url(self) -> str:
        """The admin API's base URL; start the sidecar with ``expect=(..., "admin")``."""
        host, port = self.listeners["admin"]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def url(self, listener: str) -> str:
        """``http://HOST:PORT`` of a listener: ``http`` (the forward proxy) or ``inbound``."""
        host, port = self.listeners[listener]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self.flux_json("stats")
        return result

    def wait_for(
        self, predicate: Callable[[dict[str, int]], bool], timeout: float = 15.0
    ) -> dict[str, int]:
        """Polls ``flux stats`` until ``predicate`` holds: the writer flushes in batches."""
        deadline = time.monotonic() + timeout
        stats: dict[str, int] = {}
        while time.monotonic() < deadline:
            stats = self.stats()
            if predicate(stats):
                return stats
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting on the store; last stats: {stats}")

    def wait_for_events(self, count: int, timeout: float = 15.0) -> dict[str, int]:
        return self.wait_for(lambda s: s.get("events", 0) >= count, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def run_flux(
    *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "flux_proxy", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"flux {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


_SEEDED_KEYS: list[tuple[str, str]] = []


def seed_dev_keys(data_dir: Path) -> None:
    """Writes one pair per test session where ``flux serve`` would make a development key:
    an RSA-3072 key takes seconds to generate, and most tests start several sidecars."""
    from recorder.keys import dev_key_paths, generate_keypair

    if not _SEEDED_KEYS:
        private, public = generate_keypair()
        _SEEDED_KEYS.append((public.to_text(), private.to_text()))
    pub_path, key_path = dev_key_paths(data_dir)
    if pub_path.exists() or key_path.exists():
        return
    pub_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, text in zip((pub_path, key_path), _SEEDED_KEYS[0], strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")


def start_sidecar(
    data_dir: Path,
    upstream: PgServer | None,
    *args: str,
    mode: str = "record",
    env: dict[str, str] | None = None,
    expect: tuple[str, ...] = ("pg",),
    timeout: float = 20.0,
    app_url: str | None = None,
    seed_key: bool = True,
) -> SidecarProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    if seed_key:
        seed_dev_keys(data_dir)
    # The admin API is announced last, once every listener is up and start-up work (the
    # HTTP proxy's CA, keys) is done: until then the event loop may not answer promptly.
    expect = (*expect, "admin") if "admin" not in expect else expect
    stderr_path = data_dir.parent / f"{data_dir.name}.stderr.log"
    command = [
        sys.executable,
        "-m",
        "flux_proxy",
        "serve",
        "--mode",
        mode,
        "--data-dir",
        str(data_dir),
        "--listen-db",
        "127.0.0.1:0",
        "--listen-admin",
        "127.0.0.1:0",
        "--listen-http",
        "127.0.0.1:0",
        "--listen-inbound",
        "127.0.0.1:0",
        *args,
    ]
    if upstream is not None:
        command += ["--upstream-db", f"postgresql://{upstream.host}:{upstream.port}"]
    if app_url is not None:
        command += ["--app", app_url]
    stderr = stderr_path.open("w")
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    stderr.close()
    sidecar = SidecarProcess(
        proc=proc, data_dir=data_dir, stderr_path=stderr_path, upstream=upstream
    )
    ready = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sidecar.stdout_lines.append(line)
            match = _LISTENING.match(line)
            if match:
                sidecar.listeners[match[1]] = (match[2], int(match[3]))
                if all(name in sidecar.listeners for name in expect):
                    ready.set()
        ready.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    if not ready.wait(timeout) or not all(name in sidecar.listeners for name in expect):
        sidecar.stop(signal.SIGKILL)
        raise AssertionError(
            f"sidecar did not start (exit {proc.poll()}):\n{sidecar.stderr()[-3000:]}"
        )
    return sidecar


@pytest.fixture
def sidecar_factory(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def factory(
        upstream: PgServer | None, *args: str, name: str = "flux", **kwargs: Any
    ) -> SidecarProcess:
        sidecar = start_sidecar(tmp_path / name, upstream, *args, **kwargs)
        started.append(sidecar)
        return sidecar

    yield factory
    for sidecar in started:
        sidecar.stop()


@pytest.fixture
def sidecar(pg_db: PgServer, sidecar_factory: Callable[..., SidecarProcess]) -> SidecarProcess:
    """A recording sidecar in front of a fresh database, on PostgreSQL 15 and 18."""
    return sidecar_factory(pg_db)
