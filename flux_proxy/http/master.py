"""mitmproxy as a library, on the sidecar's event loop.

One mitmproxy ``Master`` serves both HTTP listeners: the forward proxy
(``regular@HOST:PORT``, for ``HTTP_PROXY``/``HTTPS_PROXY``) and, when an app
is configured, the inbound reverse proxy (``reverse:APP@HOST:PORT``). We do
not call ``Master.run()``, which owns the process until shutdown and installs
its own loop-wide exception handler; we bring the servers up and down
ourselves and fire the same running/done hooks.

Only the addons the proxy core needs are loaded, not mitmdump's default set
of thirty: each hook is looked up on every addon for every flow, so fewer
addons is less work per request.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recorder.abc import PayloadSealer
from recorder.model import Event

from ..state import SidecarState
from .addons import Recorder
from .ca import CaError, ensure_ca, upstream_trust
from .hosts import HostMatcher
from .replay import HttpReplay

log = logging.getLogger("flux.http")


def _addon_manager(master: Any) -> Any:
    """mitmproxy's addon manager, with each event's hooks looked up once.

    For every hook of every flow, mitmproxy walks each addon with getattr, a generator
    and a context manager, then fires an ``update`` hook for its interactive views. On
    this proxy that bookkeeping cost more than the recording itself. The callables
    called are the same, found once per event name; ``update`` is not fired because no
    addon loaded here has one.
    """
    from mitmproxy import exceptions
    from mitmproxy.addonmanager import AddonManager

    class Addons(AddonManager):
        def __init__(self, master: Any) -> None:
            super().__init__(master)
            self._by_event: dict[str, list[Callable[..., Any]]] = {}

        def add(self, *addons: Any) -> None:
            super().add(*addons)
            self._by_event.clear()

        def remove(self, addon: Any) -> None:
            super().remove(addon)
            self._by_event.clear()

        async def handle_lifecycle(self, event: Any) -> None:
            await self.trigger_event(event)

        async def trigger_event(self, event: Any) -> None:
            funcs = self._by_event.get(event.name)
            if funcs is None:
                funcs = [f for a in self.chain for _, f in self._iter_hooks(a, event)]
                self._by_event[event.name] = funcs
            args = event.args()
            for func in funcs:
                try:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
                except exceptions.AddonHalt:
                    return
                except exceptions.OptionsError:
                    raise
                except Exception:  # as mitmproxy does: one addon's bug is logged, not fatal
                    log.exception("addon error in the %s hook", event.name)

    return Addons(master)


class HttpStartError(Exception):
    """The HTTP listeners cannot start; the message says what to fix."""


def _listen_spec(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class HttpProxy:
    def __init__(
        self,
        *,
        state: SidecarState,
        submit: Callable[[Event], object],
        data_dir: Path,
        listen_http: tuple[str, int],
        listen_inbound: tuple[str, int],
        app_url: str | None,
        upstream_ca: str | None = None,
        no_intercept: list[str] | None = None,
        body_cap: int = 1 << 20,
        sensitive_headers: list[str] | None = None,
        store_location: str | None = None,
        reader: PayloadSealer | None = None,
    ) -> None:
        self.state = state
        self.data_dir = data_dir
        self.listen_http = listen_http
        self.listen_inbound = listen_inbound
        self.app_url = app_url
        self.upstream_ca = upstream_ca
        self.recorder = Recorder(
            state=state,
            submit=submit,
            body_cap=body_cap,
            no_intercept=HostMatcher(no_intercept or []),
            sensitive_headers=sensitive_headers or (),
        )
        # Replay answers from the store the recorder writes (the data dir's by default).
        self.replay = HttpReplay(
            state=state,
            store_location=store_location or str(data_dir),
            sealer=reader,
            no_intercept=HostMatcher(no_intercept or []),
        )
        self._master: Any = None

    def _modes(self) -> dict[str, str]:
        modes = {"http": f"regular@{_listen_spec(self.listen_http)}"}
        if self.app_url:
            inbound = self.listen_inbound
            if inbound == self.listen_http and inbound[1] == 0:
                # mitmproxy refuses two modes on one address, ":0" included; pick the port
                # the way it does for a single ":0" (bind, read, release).
                inbound = (inbound[0], _free_port(inbound[0]))
            modes["inbound"] = f"reverse:{self.app_url}@{_listen_spec(inbound)}"
        return modes

    async def start(self) -> dict[str, tuple[str, int]]:
        """Starts the listeners; returns the address each one bound, by name."""
        # Imported here: mitmproxy takes a while to import and only serve needs it.
        from mitmproxy import exceptions, master, options
        from mitmproxy.addons import disable_h2c, next_layer, proxyserver, tlsconfig

        # mitmproxy logs every client connect and disconnect at INFO.
        logging.getLogger("mitmproxy").setLevel(logging.WARNING)
        try:
            confdir, created = ensure_ca(self.data_dir)
            trust = upstream_trust(self.data_dir, self.upstream_ca)
        except (CaError, OSError) as exc:
            raise HttpStartError(str(exc)) from exc
        if created:
            log.info("created the flux CA in %s; clients trust it via `flux ca export`", confdir)
        modes = self._modes()
        opts = options.Options()
        self._master = m = master.Master(opts, with_termlog=False)
        m.addons = _addon_manager(m)
        # Our addon goes first: its next_layer hook picks the tunnel for --no-intercept
        # hosts, and mitmproxy's NextLayer leaves a layer another addon chose alone.
        m.addons.add(
            self.recorder,
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            disable_h2c.DisableH2C(),
            # Last: its tls_clienthello overrides TlsConfig's, and in replay mode it answers
            # requests before mitmproxy would connect anywhere (see replay.py).
            self.replay,
        )
        try:
            opts.update(
                mode=list(modes.values()),
                confdir=str(confdir),
                ssl_verify_upstream_trusted_ca=str(trust),
                keep_host_header=True,  # the app sees the Host its clients sent
                connection_strategy="eager",  # mirror ALPN (HTTP/2) and see connect failures early
            )
        except exceptions.OptionsError as exc:
            raise HttpStartError(str(exc)) from exc
        ps = m.addons.get("proxyserver")
        self.recorder.connections = ps.connections
        if not await ps.setup_servers():
            failures = [str(s.last_exception) for s in ps.servers if s.last_exception]
            raise HttpStartError("; ".join(failures) or "the HTTP listeners did not start")
        await m.running()
        bound: dict[str, tuple[str, int]] = {}
        for name, spec in modes.items():
            addresses = ps.servers[spec].listen_addrs
            if addresses:
                bound[name] = (str(addresses[0][0]), int(addresses[0][1]))
        return bound

    async def close(self, grace: float) -> None:
        """Stops listening, gives exchanges in progress ``grace`` seconds, then stops."""
        m = self._master
        if m is None:
            return
        self._master = None
        ps = m.addons.get("proxyserver")
        await ps.servers.update([])
        deadline = time.monotonic() + grace
        while self.recorder.active > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.recorder.active > 0:
            log.warning("%d HTTP exchanges still open at shutdown", self.recorder.active)
        # Idle keep-alive connections would otherwise be cancelled by the loop's teardown,
        # each with a traceback; end them the way mitmproxy ends an idle one.
        for handler in list(ps.connections.values()):
            io = handler.transports.get(handler.client)
            if io is not None and io.handler is not None:
                io.handler.cancel("the sidecar is stopping")
        deadline = time.monotonic() + 2.0
        while ps.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await m.done()
