"""``flux bug bisect``: the commit that first broke a recorded request, found by replay.

    flux bug bisect --request <trace-id> --good <rev> --bad <rev> --run "<command>"

For each commit the binary search picks (on the first-parent chain from good to bad),
the commit is checked out in a temporary detached worktree, the app is started there
with ``--run`` (a shell command run in the worktree), and the recorded request is
replayed against it with ``flux replay``: every query and outbound call is answered
from the recording, so no database or API is needed, and none is touched. The verdict
classifies the commit: for a request recorded succeeding, ``same`` is good and any
other verdict bad; for a request recorded failing (a 5xx), ``fixed`` is good and any
other verdict bad; a commit whose app does not start, or whose replay cannot run, is
skipped. Both ends are tested first, so a search that cannot be trusted stops early.

The app of each commit gets ``PORT`` (and ``{port}`` in the command), ``PGHOST``/
``PGPORT`` (``{db_port}``) and ``DATABASE_URL`` (if set, re-pointed) toward the
sidecar's PostgreSQL listener, ``HTTPS_PROXY``/``HTTP_PROXY`` (``{proxy}``) toward its
forward proxy, and ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, ``CURL_CA_BUNDLE`` and
``NODE_EXTRA_CA_CERTS`` naming the CA it signs with.

The sidecar: by default bisect starts its own (``flux serve --mode replay`` on free
loopback ports, the store of ``--data-dir``/``--store``, the app at ``--app-url`` or a
free port) and stops it at the end. With ``--admin URL`` it uses a running one instead
(its token from ``--admin-token``/``FLUX_ADMIN_TOKEN``); the app must then listen where
that sidecar's ``--app`` points, which ``GET /info`` tells.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from recorder.bisect import BisectError, Bisection, Outcome, classify
from recorder.model import HTTP_INBOUND
from recorder.store import StoreError, open_store

from . import render_bisect
from .bisectrun import (
    AppError,
    ReplayResult,
    ReplaySidecar,
    app_environment,
    authorship,
    expand,
    history,
    replay,
    repository_root,
    resolve,
    running_app,
    subject,
    worktree,
)
from .config import add_store_flags, env

START_TIMEOUT_S = 60.0


def register(commands: Any) -> None:
    bug = commands.add_parser("bug", help="hunt a bug with the recordings")
    actions = bug.add_subparsers(dest="bug_command", required=True, metavar="ACTION")
    bisect = actions.add_parser(
        "bisect",
        help="find the commit that first broke a recorded request, by replaying it",
        description=(__doc__ or "").split("\n\n", 1)[1].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bisect.add_argument(
        "--request",
        required=True,
        metavar="TRACE_ID",
        help="the recorded request (trace id, or a unique prefix)",
    )
    bisect.add_argument("--good", required=True, metavar="REV", help="a revision that works")
    bisect.add_argument(
        "--bad", default="HEAD", metavar="REV", help="a revision that does not (default HEAD)"
    )
    bisect.add_argument(
        "--run",
        required=True,
        metavar="COMMAND",
        help="shell command that starts the app, run in each worktree",
    )
    bisect.add_argument("--repo", default=".", help="the git repository (default: here)")
    bisect.add_argument(
        "--app-url", metavar="URL", help="where the app listens (default: a free loopback port)"
    )
    bisect.add_argument(
        "--admin",
        metavar="URL",
        default=None,
        help="use the running sidecar of this admin API instead of starting one",
    )
    bisect.add_argument(
        "--admin-token", default=env("FLUX_ADMIN_TOKEN"), help="its bearer token (FLUX_ADMIN_TOKEN)"
    )
    bisect.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="PATH",
        help="response path flux replay leaves out of the comparison (repeatable)",
    )
    bisect.add_argument(
        "--start-timeout",
        type=float,
        default=START_TIMEOUT_S,
        help=f"seconds the app gets to listen (default {START_TIMEOUT_S:.0f})",
    )
    add_store_flags(bisect)
    bisect.add_argument("--output", "-o", choices=["text", "json"], default="text")
    bisect.set_defaults(handler=run_bisect)


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    commit: str
    subject: str
    outcome: Outcome
    result: ReplayResult

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"commit": self.commit, "subject": self.subject,
                               "outcome": self.outcome, "verdict": self.result.verdict,
                               "exit_code": self.result.exit_code}  # fmt: skip
        if self.result.problem:
            out["problem"] = self.result.problem
        return out


def run_bisect(args: argparse.Namespace) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)  # so worktrees and apps are cleaned up
    try:
        return _bisect(args)
    except (BisectError, StoreError, OSError) as exc:
        print(f"flux bug bisect: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once: a second SIGTERM must not cut the clean-up of the first one short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _bisect(args: argparse.Namespace) -> int:
    repo = repository_root(Path(args.repo).resolve())
    good, bad = resolve(repo, args.good), resolve(repo, args.bad)
    commits = history(repo, good, bad)
    search = Bisection(commits)
    store_args = ["--store", args.store] if args.store else ["--data-dir", args.data_dir]
    trace_id, recorded_status = recorded_request(args)
    recorded_failed = recorded_status is None or recorded_status >= 500
    steps: list[Step] = []
    error: str | None = None
    with contextlib.ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="flux-bisect-"))
        stack.callback(shutil.rmtree, scratch, True)
        ca = scratch / "flux-ca.pem"
        ca.write_bytes(sidecar_ca(Path(args.data_dir)))
        admin_url, token, listeners, app_url = stack.enter_context(
            sidecar(args, store_args, scratch)
        )
        app = urllib.parse.urlsplit(app_url)
        address = (app.hostname or "127.0.0.1", app.port or 80)
        environ = app_environment(os.environ, port=address[1], listeners=listeners, ca=ca)
        command = expand(args.run, port=address[1], listeners=listeners)
        with render_bisect.progress(len(commits)) as shown:
            while (index := search.next_index()) is not None:
                commit = commits[index]
                title = subject(repo, commit)
                shown.advance(len(steps), len(steps) + search.steps_left(), commit, title)
                result = test_commit(repo, commit, scratch, command, environ, address, args,
                                     admin_url, token, trace_id, store_args)  # fmt: skip
                # As flux replay judged the recording (a 5xx, or an error inside it).
                recorded = result.report.get("recorded") or {}
                recorded_failed = bool(recorded.get("failed", recorded_failed))
                outcome = classify(result.verdict, recorded_failed=recorded_failed)
                steps.append(Step(index, commit, title, outcome, result))
                shown.step(steps[-1].as_dict())
                try:
                    search.record(index, outcome)
                except BisectError as exc:
                    error = str(exc)
                    break
    found = None if error else search.first_bad()
    summary: dict[str, Any] = {
        "request": trace_id,
        "recorded_status": recorded_status,
        "recorded_failed": recorded_failed,
        "good": good,
        "bad": bad,
        "commits": len(commits) - 1,
        "first_bad": None,
        "candidates": [] if error else [commits[i] for i in search.candidates()],
        "steps": [s.as_dict() for s in steps],
        "error": error,
    }
    if found is not None:
        at = next(s for s in steps if s.index == found)
        summary["first_bad"] = {
            **at.as_dict(),
            **authorship(repo, at.commit),
            "replay": at.result.report,
        }
    render_bisect.summary(summary, args.output)
    return 0 if found is not None else 2 if error else 1


def test_commit(
    repo: Path, commit: str, scratch: Path, command: str, environ: dict[str, str],
    address: tuple[str, int], args: argparse.Namespace, admin_url: str, token: str | None,
    trace_id: str, store_args: list[str],
) -> ReplayResult:  # fmt: skip
    log = scratch / f"app-{commit[:12]}.log"
    try:
        with (
            worktree(repo, commit, scratch) as path,
            running_app(command, path, environ, address, log, args.start_timeout),
        ):
            return replay(trace_id, admin_url, token, store_args, args.ignore)
    except AppError as exc:
        return ReplayResult(None, 2, {}, str(exc))


def recorded_request(args: argparse.Namespace) -> tuple[str, int | None]:
    """The full trace id and the status its inbound request got when it was recorded."""
    store = open_store(args.store or args.data_dir, readonly=True)
    try:
        trace_id = store.resolve_trace_id(args.request)
        events = store.get_trace(trace_id)
    finally:
        store.close()
    inbound = [e.event for e in events if e.event.kind == HTTP_INBOUND]
    if not inbound:
        raise BisectError(f"trace {trace_id} has no recorded inbound request to replay")
    status = inbound[0].attrs.get("status")
    return trace_id, int(status) if isinstance(status, int) else None


def sidecar_ca(data_dir: Path) -> bytes:
    from .http.ca import CaError, ca_certificate, ensure_ca

    try:
        ensure_ca(data_dir)
        return ca_certificate(data_dir)
    except CaError as exc:
        raise BisectError(str(exc)) from exc


@contextlib.contextmanager
def sidecar(
    args: argparse.Namespace, store_args: list[str], scratch: Path
) -> Iterator[tuple[str, str | None, dict[str, tuple[str, int]], str]]:
    """(admin URL, token, listeners, app URL) of the sidecar that replays."""
    if args.admin:
        with urllib.request.urlopen(args.admin.rstrip("/") + "/info", timeout=10) as response:
            info = json.loads(response.read())
        listeners = {name: _address(text) for name, text in info.get("listeners", {}).items()}
        app_url = args.app_url or info.get("app_url")
        if not app_url:
            raise BisectError("the sidecar at --admin has no --app: give --app-url")
        yield args.admin, args.admin_token, listeners, app_url
        return
    app_url = args.app_url or f"http://127.0.0.1:{_free_port()}"
    token = args.admin_token or os.urandom(16).hex()
    with ReplaySidecar.running(store_args, app_url, token, scratch / "sidecar.log",
                               timeout=60) as replaying:  # fmt: skip
        yield replaying.admin_url, token, dict(replaying.listeners), app_url


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
