"""``flux serve``: one process, one event loop, every listener, one recorder thread."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys

from recorder.store import StoreError, open_store

from .config import Settings
from .pgserver import PgProxy
from .recording import RecorderLink
from .state import SidecarState
from .upstream import UpstreamTarget

log = logging.getLogger("flux")


class StartupError(Exception):
    """A setting that makes the sidecar unable to start; the message says what to fix."""


def _announce(what: str, address: tuple[str, int], extra: str = "") -> None:
    # One line per listener on stdout, so scripts and tests can learn ports picked with :0.
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(f"flux: listening {what} {shown}{extra}", flush=True)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.db_tls_cert:
        return None
    if not settings.db_tls_key:
        raise StartupError("--db-tls-cert needs --db-tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.db_tls_cert, settings.db_tls_key)
    return context


class Sidecar:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = SidecarState(settings.mode)
        self.recorder: RecorderLink | None = None
        self.pg: PgProxy | None = None
        self._stop = asyncio.Event()

    async def _open_recorder(self) -> RecorderLink:
        location = self.settings.store_location
        if self.settings.store is None:
            self.settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            open_store(location).close()  # fail at start, not in the recorder process
        except (StoreError, OSError) as exc:
            raise StartupError(f"cannot open the store at {location}: {exc}") from exc
        recorder = RecorderLink(location, max_buffer=self.settings.recorder_buffer)
        await recorder.start()
        return recorder

    async def start(self) -> None:
        settings = self.settings
        self.recorder = await self._open_recorder()
        if settings.upstream_db:
            try:
                upstream = UpstreamTarget.from_url(settings.upstream_db)
            except ValueError as exc:
                raise StartupError(str(exc)) from exc
            self.pg = PgProxy(
                upstream=upstream,
                state=self.state,
                submit=self.recorder.submit,
                tls_context=_tls_context(settings),
                max_cycle_bytes=settings.max_cycle_bytes,
                max_message_length=settings.max_message_length,
            )
            try:
                address = await self.pg.start(*settings.listen_db)
            except OSError as exc:
                raise StartupError(f"cannot listen on {settings.listen_db}: {exc}") from exc
            _announce("pg", address, f" -> {upstream.address} ({settings.mode})")
        else:
            log.warning("no --upstream-db (FLUX_UPSTREAM_DB): the PostgreSQL listener is off")

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        if self.pg is not None:
            await self.pg.close(self.settings.shutdown_grace)
        if self.recorder is not None:
            await self.recorder.close()


async def _serve(settings: Settings) -> int:
    sidecar = Sidecar(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, sidecar.request_stop)
    try:
        await sidecar.start()
    except StartupError as exc:
        print(f"flux: {exc}", file=sys.stderr)
        await sidecar.close()
        return 2
    await sidecar.wait()
    log.info("stopping: no new connections, %.0fs grace for open ones", settings.shutdown_grace)
    await sidecar.close()
    return 0


def serve(settings: Settings) -> int:
    if os.environ.get("FLUX_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(_serve(settings))
    return asyncio.run(_serve(settings))
