"""``flux bug bisect`` over a real temporary git repository of a small app.

The app (http.server + psycopg, the traceparent appended to its SQL as a sqlcommenter
comment) answers ``GET /orders/<id>/total`` from PostgreSQL. Its history: a good first
commit, harmless changes, a commit whose app cannot start (it must be skipped), the
commit that fixes that, the commit that introduces the bug (the total forgets the
quantities), more harmless changes. The request is recorded through a sidecar in front
of a real PostgreSQL against the first commit; bisect must name the bug's commit.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from tests.fix_app import accepting
from tests.fix_http import recorded
from tests.fix_pg import PgServer, free_port
from tests.fix_sidecar import REPO, run_flux, start_sidecar

pytestmark = [pytest.mark.pg, pytest.mark.slow]

APP = '''\
"""Order totals."""

import json
import os
import secrets
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

DATABASE_URL = os.environ["DATABASE_URL"]


def total(rows):
    return sum(qty * price for qty, price in rows)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        order = int(self.path.split("/")[2])
        comment = "/*traceparent='%s'*/" % self.headers.get("traceparent", "")
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT qty, price_cents FROM order_lines WHERE order_id = %s ORDER BY sku "
                + comment,
                (order,),
            ).fetchall()
        body = json.dumps({"order_id": order, "total_cents": total(rows)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''

# (subject, edit of the previous version); the bug is BUG_SUBJECT.
BUG_SUBJECT = "Totals: sum the line prices"
HISTORY: list[tuple[str, Callable[[str], str]]] = [
    ("Log nothing per request", lambda s: s.replace(
        "class Handler(BaseHTTPRequestHandler):\n",
        "class Handler(BaseHTTPRequestHandler):\n"
        "    def log_message(self, *args):\n        pass\n\n")),
    ("Docstring for the totals", lambda s: s.replace('"""Order totals."""', '"""Order totals, in cents."""')),
    ("Use the new settings module", lambda s: s.replace("import psycopg\n", "import psycopg\nimport settings\n")),
    ("Drop the settings module again", lambda s: s.replace("import settings\n", "")),
    (BUG_SUBJECT, lambda s: s.replace("sum(qty * price for qty, price in rows)",
                                      "sum(price for qty, price in rows)")),
    ("Name the handler's query", lambda s: s.replace("rows = conn.execute(", "rows = conn.execute(  # lines")),
    ("Tidy the response", lambda s: s.replace("body = json.dumps(", "body = json.dumps(  # the answer\n            ")),
]  # fmt: skip


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def commit(repo: Path, text: str, subject: str) -> str:
    (repo / "app.py").write_text(text)
    git(repo, "add", "app.py")
    git(repo, "commit", "--quiet", "-m", subject)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def shop_db(pg15: PgServer) -> Iterator[PgServer]:
    """A fresh database on PostgreSQL 15: what bisect exercises does not vary by version."""
    name = f"t_{secrets.token_hex(6)}"
    pg15.psql(f"CREATE DATABASE {name} OWNER {pg15.user}", superuser=True, dbname="postgres")
    db = pg15.with_dbname(name)
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE order_lines (order_id int, sku text, qty int, price_cents int,"
            " PRIMARY KEY (order_id, sku))"
        )
        conn.execute(
            "INSERT INTO order_lines VALUES (7, 'mug', 3, 1400), (7, 'tea', 2, 850),"
            " (8, 'tea', 1, 850)"
        )
    yield db
    pg15.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", superuser=True, dbname="postgres")


@pytest.fixture
def recording(tmp_path: Path, shop_db: PgServer) -> Iterator[tuple[Path, list[str], str, Path]]:
    """The repository, its commits (oldest first), the recorded trace, the store."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "-b", "main")
    commits = [commit(repo, APP, "Order totals")]
    data_dir = tmp_path / "flux"
    app_port = free_port()
    sidecar = start_sidecar(
        data_dir, shop_db, mode="record", app_url=f"http://127.0.0.1:{app_port}", timeout=60
    )
    app = None
    try:
        env = {**os.environ, "PORT": str(app_port), "DATABASE_URL": sidecar.dsn()}
        app = subprocess.Popen([sys.executable, "app.py"], cwd=repo, env=env)
        deadline = time.monotonic() + 30
        while not accepting(app_port):
            assert app.poll() is None and time.monotonic() < deadline, "the app did not start"
            time.sleep(0.1)
        response = requests.get(sidecar.url("inbound") + "/orders/7/total", timeout=30)
        assert response.json() == {"order_id": 7, "total_cents": 3 * 1400 + 2 * 850}
        trace_id = response.headers["x-flux-trace-id"]
        recorded(sidecar, trace_id, 2)  # the inbound request and its query
    finally:
        if app is not None:
            app.terminate()
            app.wait(10)
        sidecar.stop()
    # Replay needs no database: without this table, a query that reached the real
    # server instead of the recording would fail.
    with psycopg.connect(shop_db.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE order_lines")
    text = APP
    for subject, edit in HISTORY:
        edited = edit(text)
        assert edited != text, subject
        text = edited
        commits.append(commit(repo, text, subject))
    yield repo, commits, trace_id, data_dir


def bisect(
    repo: Path,
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    run: str = f"{sys.executable} app.py",
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flux_proxy", "bug", "bisect", "--repo", str(repo),
         "--data-dir", str(data_dir), "--run", run, *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_bisect_names_the_commit_that_broke_the_recorded_request(
    recording: tuple[Path, list[str], str, Path], shop_db: PgServer
) -> None:
    repo, commits, trace_id, data_dir = recording
    bug = commits[[s for s, _ in HISTORY].index(BUG_SUBJECT) + 1]
    app_port = free_port()
    # DATABASE_URL names the real server: bisect must re-point it at its replaying sidecar.
    result = bisect(
        repo, data_dir, "--request", trace_id[:10], "--good", commits[0], "--bad", "main",
        "--app-url", f"http://127.0.0.1:{app_port}", "--output", "json",
        env={"DATABASE_URL": shop_db.dsn()},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["request"] == trace_id
    assert report["recorded_failed"] is False
    assert report["first_bad"]["commit"] == bug
    assert report["first_bad"]["subject"] == BUG_SUBJECT
    assert report["first_bad"]["verdict"] == "differs"
    assert report["candidates"] == [bug]
    # The replay at the bad commit shows the total that changed.
    replayed = report["first_bad"]["replay"]
    assert replayed["hits"] >= 1
    assert replayed["misses"] == []
    differences = replayed["differences"]
    total = next(d for d in differences if d["where"] == "$.total_cents")
    assert (total["recorded"], total["new"]) == (5900, 2250)
    steps = {s["commit"]: s for s in report["steps"]}
    assert steps[commits[-1]]["outcome"] == "bad"
    assert steps[commits[0]]["outcome"] == "good"
    assert steps[commits[0]]["verdict"] == "same"
    broken = commits[[s for s, _ in HISTORY].index("Use the new settings module") + 1]
    assert steps[broken]["outcome"] == "skip"
    assert "settings" in steps[broken]["problem"]
    assert len(report["steps"]) <= 6
    # Nothing is left behind: no worktree, no app.
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not accepting(app_port)
    assert git(repo, "status", "--porcelain") == ""
    # The text form names the commit and shows the replay's difference.
    # The sidecar's port, given to the command itself this time.
    run = f"DATABASE_URL=postgresql://flux@127.0.0.1:{{db_port}}/shop {sys.executable} app.py"
    text = bisect(
        repo, data_dir, "--request", trace_id, "--good", commits[4], "--bad", bug, run=run
    )
    assert text.returncode == 0, text.stderr
    assert f"first bad commit: {bug}" in text.stdout
    assert BUG_SUBJECT in text.stdout
    assert "$.total_cents: 5900 → 2250" in text.stdout
    assert f"bad  {bug[:12]}" in text.stderr


def test_bisect_stops_when_the_good_revision_does_not_replay_good(
    recording: tuple[Path, list[str], str, Path],
) -> None:
    repo, commits, trace_id, data_dir = recording
    bug = commits[[s for s, _ in HISTORY].index(BUG_SUBJECT) + 1]
    result = bisect(repo, data_dir, "--request", trace_id, "--good", bug, "--bad", "main",
                    "--output", "json", env={"DATABASE_URL": "postgresql://flux@db/shop"})  # fmt: skip
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["first_bad"] is None
    assert "good revision does not replay good" in report["error"]
    assert [s["outcome"] for s in report["steps"]] == ["bad", "bad"]
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_bisect_refuses_revisions_out_of_order(
    recording: tuple[Path, list[str], str, Path],
) -> None:
    repo, commits, trace_id, data_dir = recording
    result = bisect(repo, data_dir, "--request", trace_id, "--good", "main", "--bad", commits[0])
    assert result.returncode == 2
    assert "is not an ancestor" in result.stderr


def test_bisect_through_a_running_sidecar(
    recording: tuple[Path, list[str], str, Path], shop_db: PgServer
) -> None:
    """With --admin, bisect starts no sidecar: it asks the running one (GET /info) where
    the app must listen and where its listeners are, and leaves it in the mode it found."""
    repo, commits, trace_id, data_dir = recording
    bug = commits[[s for s, _ in HISTORY].index(BUG_SUBJECT) + 1]
    app_port = free_port()
    sidecar = start_sidecar(
        data_dir, shop_db, "--admin-token", "t0ken", mode="record",
        app_url=f"http://127.0.0.1:{app_port}", timeout=60,
    )  # fmt: skip
    try:
        result = bisect(
            repo, data_dir, "--request", trace_id, "--good", commits[4], "--bad", bug,
            "--admin", sidecar.admin_url, "--admin-token", "t0ken", "--output", "json",
            env={"DATABASE_URL": shop_db.dsn()},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["first_bad"]["commit"] == bug
        assert [s["verdict"] for s in report["steps"]] == ["differs", "same"]
        assert run_flux("mode", "--admin", sidecar.admin_url).stdout.strip() == "record"
        assert sidecar.proc.poll() is None
    finally:
        sidecar.stop()
    assert not accepting(app_port)


def test_an_interrupted_bisect_leaves_no_worktree_or_process(
    recording: tuple[Path, list[str], str, Path], shop_db: PgServer
) -> None:
    repo, commits, trace_id, data_dir = recording
    app_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_proxy", "bug", "bisect", "--repo", str(repo),
         "--data-dir", str(data_dir), "--run", f"{sys.executable} app.py",
         "--request", trace_id, "--good", commits[0], "--app-url",
         f"http://127.0.0.1:{app_port}"],
        cwd=REPO, env={**os.environ, "DATABASE_URL": shop_db.dsn()},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not accepting(app_port):  # the first commit's app is up, in its worktree
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first app never listened"
            time.sleep(0.05)
        assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not accepting(app_port)
    # No sidecar (it serves data_dir) or app (it has PORT=app_port) of this bisect is left.
    for pid in Path("/proc").glob("[0-9]*"):
        try:
            args = (pid / "cmdline").read_bytes().split(b"\0")
            environ = (pid / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        assert str(data_dir).encode() not in args, args
        assert f"PORT={app_port}".encode() not in environ, args
