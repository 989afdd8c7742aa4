"""``flux serve``: one process, one event loop, every listener, one recorder thread."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from typing import TYPE_CHECKING

from recorder.crypto import EnvelopeSealer
from recorder.store import StoreError, open_store

from .admin import AdminApi, AdminSources
from .config import Settings
from .keysetup import KeySetupError, reader_sealer, recording_keys, replay_gap
from .otlpexport import OtlpLink
from .pgrewrite import set_capture
from .pgserver import PgProxy
from .podinfo import AnnotationWatcher
from .recording import RecorderLink
from .replaysource import PgReplaySource
from .state import SidecarState
from .udp import UdpService
from .upstream import UpstreamTarget

if TYPE_CHECKING:
    from .http.master import HttpProxy

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
        self.reader: EnvelopeSealer | None = None  # opens recordings for replay
        self.pg: PgProxy | None = None
        self.udp: UdpService | None = None
        self.http: HttpProxy | None = None
        self.admin: AdminApi | None = None
        self.watcher: AnnotationWatcher | None = None
        self.otlp: OtlpLink | None = None  # --otlp-endpoint: spans follow the store
        self.bound: dict[str, tuple[str, int]] = {}  # listener name -> address it bound
        self._started = False
        self._stop = asyncio.Event()

    async def _open_recorder(self) -> RecorderLink:
        location = self.settings.store_location
        if self.settings.store is None:
            self.settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            open_store(location).close()  # fail at start, not in the recorder process
        except (StoreError, OSError) as exc:
            raise StartupError(f"cannot open the store at {location}: {exc}") from exc
        settings = self.settings
        try:
            keys = recording_keys(
                public_key=settings.public_key,
                data_dir=settings.data_dir,
                require_key=settings.require_key,
                no_encrypt=settings.no_encrypt,
            )
            # After the dev pair exists: replay on a laptop opens with its private half.
            self.reader = reader_sealer(settings.private_keys, settings.data_dir)
        except KeySetupError as exc:
            raise StartupError(str(exc)) from None
        log.log(logging.INFO if keys.source == "configured" else logging.WARNING, keys.describe())
        gap = replay_gap(keys, self.reader)
        if gap:  # recording needs no private key; replay does
            log.log(logging.WARNING if settings.mode == "replay" else logging.DEBUG, gap)
        recorder = RecorderLink(
            location, public_keys=keys.texts, max_buffer=self.settings.recorder_buffer
        )
        await recorder.start()
        return recorder

    async def start(self) -> None:
        settings = self.settings
        if settings.pod_annotations:
            # First, so the listeners open in the mode the pod's annotation asks for.
            self.watcher = AnnotationWatcher(settings.pod_annotations, self.state)
            self.watcher.start()
        self.recorder = await self._open_recorder()
        if settings.otlp_endpoint:
            try:
                self.otlp = OtlpLink.for_settings(settings)
            except ValueError as exc:
                raise StartupError(str(exc)) from exc
            await self.otlp.start()
        if settings.upstream_db or settings.mode == "replay":
            # Replay needs no upstream: an imported bundle replays on a laptop without one.
            upstream = None
            if settings.upstream_db:
                try:
                    upstream = UpstreamTarget.from_url(settings.upstream_db)
                except ValueError as exc:
                    raise StartupError(str(exc)) from exc
            set_capture(settings.capture_mutations)
            self.pg = PgProxy(
                upstream=upstream,
                state=self.state,
                submit=self.recorder.submit,
                replay=PgReplaySource(settings.store_location, self.reader),
                tls_context=_tls_context(settings),
                max_cycle_bytes=settings.max_cycle_bytes,
                max_message_length=settings.max_message_length,
            )
            try:
                address = await self.pg.start(*settings.listen_db)
            except OSError as exc:
                raise StartupError(f"cannot listen on {settings.listen_db}: {exc}") from exc
            self.bound["pg"] = address
            target = upstream.address if upstream is not None else "no upstream"
            _announce("pg", address, f" -> {target} ({settings.mode})")
        else:
            log.warning("no --upstream-db (FLUX_UPSTREAM_DB): the PostgreSQL listener is off")
        if settings.udp:
            await self._start_udp()
        await self._start_http()
        self._started = True
        await self._start_admin()

    async def _start_admin(self) -> None:
        sources = AdminSources(
            state=self.state,
            problems=self.problems,
            recorder_stats=lambda: self.recorder.stats() if self.recorder else {},
            open_connections=lambda: {"pg": len(self.pg.connections) if self.pg else 0},
            listeners=lambda: self.bound,
            app_url=self.settings.app_url,
        )
        self.admin = AdminApi(sources, token=self.settings.admin_token)
        try:
            address = await self.admin.start(*self.settings.listen_admin)
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.settings.listen_admin}: {exc}") from exc
        self.bound["admin"] = address
        _announce("admin", address)

    def problems(self) -> list[str]:
        """Why the sidecar should get no traffic now (readiness); empty when it should."""
        problems = []
        if self._stop.is_set():
            problems.append("shutting down")
        elif not self._started:
            problems.append("starting")
        if self.recorder is None or not self.recorder.alive:
            problems.append("the recorder process is not running")
        if self.pg is not None and not self.pg.serving:
            problems.append("the PostgreSQL listener is closed")
        return problems

    async def _start_http(self) -> None:
        assert self.recorder is not None
        # Imported here: mitmproxy is heavy and only `serve` needs it.
        from .http.master import HttpProxy, HttpStartError

        settings = self.settings
        self.http = HttpProxy(
            state=self.state,
            submit=self.recorder.submit,
            data_dir=settings.data_dir,
            listen_http=settings.listen_http,
            listen_inbound=settings.listen_inbound,
            app_url=settings.app_url,
            upstream_ca=settings.upstream_ca,
            no_intercept=settings.no_intercept,
            body_cap=settings.body_cap,
            sensitive_headers=settings.sensitive_headers,
            store_location=settings.store_location,
            reader=self.reader,
        )
        try:
            bound = await self.http.start()
        except (HttpStartError, OSError) as exc:
            raise StartupError(f"cannot start the HTTP proxy: {exc}") from exc
        self.bound.update(bound)
        if "http" in bound:
            _announce("http", bound["http"])
        if "inbound" in bound:
            _announce("inbound", bound["inbound"], f" -> {settings.app_url}")
        else:
            log.warning("no --app (FLUX_APP_URL): the inbound HTTP listener is off")

    async def _start_udp(self) -> None:
        assert self.recorder is not None
        try:
            self.udp = UdpService(self.settings, self.state, self.recorder.submit, self.reader)
            started = await self.udp.start()
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        for mapping, address in started:
            dns = " (dns)" if mapping.dns else ""
            _announce("udp", address, f" -> {mapping.upstream_text}{dns}")

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.close()
        if self.pg is not None:
            await self.pg.stop_accepting()  # now, not after the HTTP listener's grace
        if self.udp is not None:
            await self.udp.close()  # before the recorder: pending requests are recorded
        # The listeners drain side by side, so SIGTERM costs one grace period, not one each.
        draining = []
        if self.http is not None:
            draining.append(self.http.close(self.settings.shutdown_grace))  # before the recorder
        if self.pg is not None:
            draining.append(self.pg.close(self.settings.shutdown_grace))
        await asyncio.gather(*draining)
        if self.recorder is not None:
            await self.recorder.close()
        if self.otlp is not None:
            await self.otlp.close()  # after the recorder: the last events are stored by then
        if self.admin is not None:
            await self.admin.close()  # last: probes see "shutting down" through the grace


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
