"""What ``flux bug bisect`` does to test one commit: git worktrees, the app, the sidecar.

Every process started here runs in a session of its own and is stopped by its process
group (the ``--run`` command is a shell that may fork the real server), and every
worktree is removed, on success, failure and interrupt alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder.bisect import BisectError

_LISTENING = re.compile(r"^flux: listening (\w+) \[?([^\]\s]+?)\]?:(\d+)")
_PROXY_VARS = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})
_CA_VARS = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
STOP_TIMEOUT_S = 10.0
NO_UPSTREAM = "postgresql://127.0.0.1:1/"  # port 1 on loopback: nothing listens
REPLAY_TIMEOUT_S = 180.0


# -- git ---------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BisectError(f"git {' '.join(args)}: {result.stderr.strip() or result.stdout}")
    return result.stdout


def repository_root(path: Path) -> Path:
    return Path(git(path, "rev-parse", "--show-toplevel").strip())


def resolve(repo: Path, revision: str) -> str:
    return git(repo, "rev-parse", "--verify", "--end-of-options", f"{revision}^{{commit}}").strip()


def subject(repo: Path, commit: str) -> str:
    return git(repo, "log", "-1", "--format=%s", commit).strip()


def authorship(repo: Path, commit: str) -> dict[str, str]:
    author, _, date = (
        git(repo, "log", "-1", "--format=%an <%ae>%x00%aI", commit).strip().partition("\0")
    )
    return {"author": author, "date": date}


def history(repo: Path, good: str, bad: str) -> list[str]:
    """``good``, then the commits after it up to ``bad``, oldest first.

    The first-parent chain from good to bad, as ``git bisect --first-parent`` walks it:
    a merged branch is judged by its merge commit. Off that chain (good on a side
    branch), every commit of ``good..bad`` in topological order."""
    if good == bad:
        raise BisectError("the good and bad revisions are the same commit")
    ancestor = subprocess.run(
        ["git", "-C", str(repo), "merge-base", "--is-ancestor", good, bad], check=False
    )
    if ancestor.returncode != 0:
        raise BisectError(f"the good revision {good[:12]} is not an ancestor of {bad[:12]}")
    chain = git(repo, "rev-list", "--reverse", "--first-parent", "--ancestry-path",
                f"{good}..{bad}").split()  # fmt: skip
    if not chain or chain[-1] != bad:
        chain = git(repo, "rev-list", "--reverse", "--topo-order", f"{good}..{bad}").split()
    return [good, *chain]


@contextlib.contextmanager
def worktree(repo: Path, commit: str, parent: Path) -> Iterator[Path]:
    """``commit`` checked out (detached) in a temporary worktree, removed on the way out."""
    path = parent / f"wt-{commit[:12]}"
    try:  # an interrupt during the add leaves a half-made worktree to remove too
        git(repo, "worktree", "add", "--detach", "--quiet", str(path), commit)
        yield path
    finally:
        with contextlib.suppress(BisectError):
            git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(BisectError):
            git(repo, "worktree", "prune")


# -- processes ---------------------------------------------------------------------------


def stop_group(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the process group ``proc`` leads, SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    # Children the leader left behind (a shell's server) still hold the port.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def accepting(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def running_app(
    command: str, cwd: Path, env: Mapping[str, str], address: tuple[str, int], log: Path,
    timeout: float,
) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """The app started by ``command`` in ``cwd``, once it accepts connections on ``address``."""
    if accepting(*address):
        raise AppError(f"something already listens on {address[0]}:{address[1]}")
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, shell=True, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not accepting(*address):
            if proc.poll() is not None:
                raise AppError(f"the app exited ({proc.returncode}) before it listened:\n"
                               f"{tail(log)}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AppError(f"the app did not listen on port {address[1]} within "
                               f"{timeout:.0f}s:\n{tail(log)}")  # fmt: skip
            time.sleep(0.1)
        yield proc
    finally:
        if proc is not None:
            stop_group(proc)


class AppError(Exception):
    """The app of one commit could not be started: that commit is skipped."""


@dataclass
class ReplaySidecar:
    """``flux serve --mode replay`` on free loopback ports, in front of the app."""

    proc: subprocess.Popen[str]
    token: str
    listeners: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def admin_url(self) -> str:
        return url(self.listeners["admin"])

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, store_args: list[str], app_url: str, token: str, log: Path, timeout: float
    ) -> Iterator[ReplaySidecar]:
        # Replay never connects upstream, but the PostgreSQL listener only opens with a
        # target: one that refuses connections, should anything ever try.
        command = [sys.executable, "-m", "flux_proxy", "serve", "--mode", "replay", *store_args,
                   "--app", app_url, "--admin-token", token,
                   "--upstream-db", NO_UPSTREAM, "--shutdown-grace", "1"]  # fmt: skip
        for flag in ("--listen-db", "--listen-admin", "--listen-http", "--listen-inbound"):
            command += [flag, "127.0.0.1:0"]
        with log.open("w") as err:
            proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                text=True, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "FLUX_ADMIN_TOKEN": token},
            )  # fmt: skip
        try:
            with cls._started(proc, token, log, timeout) as sidecar:
                yield sidecar
        finally:
            stop_group(proc)
            if proc.stdout is not None:
                proc.stdout.close()

    @classmethod
    @contextlib.contextmanager
    def _started(
        cls, proc: subprocess.Popen[str], token: str, log: Path, timeout: float
    ) -> Iterator[ReplaySidecar]:
        sidecar = cls(proc=proc, token=token)
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:  # read to the end: a full pipe would stall the sidecar
                match = _LISTENING.match(line)
                if match:
                    sidecar.listeners[match[1]] = (match[2], int(match[3]))
                    # The admin API is announced last, once every listener is up.
                    if match[1] == "admin":
                        ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not {"admin", "pg", "http"} <= sidecar.listeners.keys():
            raise BisectError(f"the replay sidecar did not start:\n{tail(log)}")
        yield sidecar


def url(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# -- the app's environment ---------------------------------------------------------------


def with_host_port(dsn: str, host: str, port: int) -> str:
    """A PostgreSQL connection string pointed at ``host:port``, the rest kept."""
    if "://" in dsn:
        parts = urllib.parse.urlsplit(dsn)
        auth, _, _ = parts.netloc.rpartition("@")
        netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    keywords = re.sub(r"\b(host|hostaddr|port)\s*=\s*('[^']*'|\S+)", "", dsn).strip()
    return f"{keywords} host={host} port={port}".strip()


def app_environment(
    base: Mapping[str, str], *, port: int, listeners: Mapping[str, tuple[str, int]], ca: Path
) -> dict[str, str]:
    """What the app of each commit runs with: its port, and every upstream set to the
    replaying sidecar (PostgreSQL, the HTTP(S) proxy, the CA it signs with)."""
    env = {k: v for k, v in base.items() if k.lower() not in _PROXY_VARS}
    env["PORT"] = str(port)
    if "pg" in listeners:
        db_host, db_port = listeners["pg"]
        env["PGHOST"], env["PGPORT"] = db_host, str(db_port)
        if "DATABASE_URL" in env:
            env["DATABASE_URL"] = with_host_port(env["DATABASE_URL"], db_host, db_port)
    if "http" in listeners:
        proxy = url(listeners["http"])
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            env[name] = proxy
    for name in _CA_VARS:
        env[name] = str(ca)
    return env


def expand(command: str, *, port: int, listeners: Mapping[str, tuple[str, int]]) -> str:
    """``{port}``, ``{db_port}`` and ``{proxy}`` in the ``--run`` command (a plain
    replace: shell braces such as ``${HOME}`` are left alone)."""
    values = {"{port}": str(port)}
    if "pg" in listeners:
        values["{db_port}"] = str(listeners["pg"][1])
    if "http" in listeners:
        values["{proxy}"] = url(listeners["http"])
    for placeholder, value in values.items():
        command = command.replace(placeholder, value)
    return command


# -- one replay --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayResult:
    verdict: str | None  # None: could not replay
    exit_code: int
    report: dict[str, Any]  # what `flux replay --output json` printed
    problem: str | None = None


def replay(
    trace_id: str, admin_url: str, token: str | None, store_args: list[str], ignore: list[str]
) -> ReplayResult:
    """``flux replay --output json`` as a subprocess: the command's contract, not its code."""
    command = [sys.executable, "-m", "flux_proxy", "replay", trace_id, "--admin", admin_url,
               "--output", "json"]  # fmt: skip
    for path in ignore:
        command += ["--ignore", path]
    env = dict(os.environ)
    if token:
        env["FLUX_ADMIN_TOKEN"] = token
    env.update(_store_env(store_args))
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=REPLAY_TIMEOUT_S,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return ReplayResult(None, 2, {}, f"flux replay took over {REPLAY_TIMEOUT_S:.0f}s")
    try:
        report = json.loads(result.stdout) if result.stdout.strip() else {}
    except ValueError:
        report = {}
    if not isinstance(report, dict):
        report = {"output": report}
    verdict = report.get("verdict")
    if result.returncode not in (0, 1) or not isinstance(verdict, str):
        problem = result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}"
        return ReplayResult(None, result.returncode, report, problem)
    return ReplayResult(verdict, result.returncode, report)


def _store_env(store_args: list[str]) -> dict[str, str]:
    names = {"--data-dir": "FLUX_DATA_DIR", "--store": "FLUX_STORE"}
    pairs = zip(store_args[::2], store_args[1::2], strict=True)
    return {names[flag]: value for flag, value in pairs if flag in names}
