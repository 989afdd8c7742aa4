"""The admin API: probes, Prometheus metrics, and the run-time mode switch.

    GET  /healthz   liveness: 200 while the event loop answers         (no token)
    GET  /readyz    readiness: listeners up, recorder alive, not stopping (no token)
    GET  /metrics   Prometheus text format                              (no token)
    GET  /mode      {"mode": ..., "epoch": ...}                         (no token)
    POST /mode      {"mode": "replay"} with ``Authorization: Bearer T``
    GET  /info      mode, listeners (the inbound one included), app URL,
                    the replay run's scope and generation             (no token)
    POST /replay    {"trace": "<32 hex>" | null}: a new replay run scoped to that
                    trace (switching to replay if needed)             (token)
    GET  /replay    the current run's report: hits, misses, volatile differences (token)

Probes and scrapers carry no token, and what they read is not secret, so those
reads need none. Every change needs the token, and so does the replay report:
a miss quotes the statement or call that missed, values included. With no
token configured the API refuses all of these rather than serve them anonymously.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .httpserve import HttpServer, Request, Response
from .state import MODES, SidecarState

log = logging.getLogger("flux.admin")

_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def _no_listeners() -> Mapping[str, tuple[str, int]]:
    return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSources:
    """What the API reads from the sidecar, as callables so it never holds the Sidecar."""

    state: SidecarState
    problems: Callable[[], list[str]]  # why the sidecar is not ready; empty when it is
    recorder_stats: Callable[[], Mapping[str, int]]
    open_connections: Callable[[], Mapping[str, int]]
    # The addresses each listener bound, by name ("pg", "http", "inbound", "admin").
    listeners: Callable[[], Mapping[str, tuple[str, int]]] = field(default=_no_listeners)
    app_url: str | None = None


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant time in the contents *and* the length: both sides are hashed first,
    so ``compare_digest`` always sees two 32-byte strings."""
    if presented is None:
        return False
    ours = hashlib.sha256(expected.encode()).digest()
    theirs = hashlib.sha256(presented.encode()).digest()
    return hmac.compare_digest(ours, theirs)


def bearer(request: Request) -> str | None:
    value = request.header("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def metric_name(counter: str) -> str:
    name = "flux_" + _METRIC_CHARS.sub("_", counter)
    return name if name.endswith("_total") else name + "_total"


def render_metrics(sources: AdminSources) -> str:
    state = sources.state
    problems = sources.problems()
    lines = [
        "# HELP flux_mode The sidecar's mode: 1 for the current one, 0 for the others.",
        "# TYPE flux_mode gauge",
        *(f'flux_mode{{mode="{mode}"}} {int(mode == state.mode)}' for mode in MODES),
        "# HELP flux_mode_epoch Number of mode switches since start.",
        "# TYPE flux_mode_epoch gauge",
        f"flux_mode_epoch {state.mode_epoch}",
        "# HELP flux_ready 1 when /readyz answers 200.",
        "# TYPE flux_ready gauge",
        f"flux_ready {int(not problems)}",
    ]
    stats = sources.recorder_stats()
    for key, help_text in (
        ("submitted", "Events handed to the recorder."),
        ("dropped", "Events dropped because the recorder could not keep up."),
    ):
        name = f"flux_events_{key}_total"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines.append(f"{name} {int(stats.get(key, 0))}")
    lines += [
        "# HELP flux_open_connections Client connections open now, per listener.",
        "# TYPE flux_open_connections gauge",
    ]
    for listener, count in sorted(sources.open_connections().items()):
        lines.append(f'flux_open_connections{{listener="{listener}"}} {count}')
    for counter, value in sorted(state.counters.items()):
        name = metric_name(counter)
        lines += [f"# TYPE {name} counter", f"{name} {value}"]
    return "\n".join(lines) + "\n"


class AdminApi:
    def __init__(self, sources: AdminSources, *, token: str | None) -> None:
        self.sources = sources
        self.token = token or None
        self.server = HttpServer(self.handle, name="admin")

    async def start(self, host: str, port: int) -> tuple[str, int]:
        if self.token is None:
            log.warning("no admin token (FLUX_ADMIN_TOKEN): the admin API refuses every change")
        return await self.server.start(host, port)

    async def close(self) -> None:
        await self.server.close()

    async def handle(self, request: Request) -> Response:
        match (request.method, request.path):
            case ("GET", "/healthz"):
                return Response.text(200, "ok\n")
            case ("GET", "/readyz"):
                problems = self.sources.problems()
                if problems:
                    return Response.text(503, "not ready: " + "; ".join(problems) + "\n")
                return Response.text(200, "ready\n")
            case ("GET", "/metrics"):
                body = render_metrics(self.sources).encode()
                return Response(
                    status=200, body=body, content_type="text/plain; version=0.0.4; charset=utf-8"
                )
            case ("GET", "/mode"):
                state = self.sources.state
                return Response.json(200, {"mode": state.mode, "epoch": state.mode_epoch})
            case ("POST" | "PUT", "/mode"):
                return self.set_mode(request)
            case ("GET", "/info"):
                return Response.json(200, self.info())
            case ("POST", "/replay"):
                return self.begin_replay(request)
            case ("GET", "/replay"):
                return self.replay_report(request)
            case (_, "/healthz" | "/readyz" | "/metrics" | "/mode" | "/info" | "/replay"):
                return Response.json(405, {"error": f"{request.method} not allowed here"})
            case _:
                return Response.json(404, {"error": f"no such endpoint: {request.path}"})

    def refusal(self, request: Request) -> Response | None:
        """Why ``request`` may not proceed, or None when it carries the token."""
        if self.token is None:
            return Response.json(
                403,
                {"error": "the admin API has no token configured (FLUX_ADMIN_TOKEN or "
                          "--admin-token), so it refuses every change"},
            )  # fmt: skip
        if not token_matches(bearer(request), self.token):
            self.sources.state.counters["admin.unauthorized"] += 1
            return Response.json(
                401,
                {"error": "missing or wrong bearer token"},
                headers=[("www-authenticate", 'Bearer realm="flux"')],
            )
        return None

    def set_mode(self, request: Request) -> Response:
        if (refused := self.refusal(request)) is not None:
            return refused
        try:
            body = json.loads(request.body or b"null")
        except (ValueError, UnicodeDecodeError):
            return Response.json(400, {"error": 'expected a JSON body like {"mode": "replay"}'})
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in MODES:
            return Response.json(
                400, {"error": f"unknown mode {mode!r}; expected one of {', '.join(MODES)}"}
            )
        state = self.sources.state
        previous = state.mode
        changed = state.set_mode(mode, source="admin")
        return Response.json(
            200,
            {
                "mode": state.mode,
                "previous": previous,
                "changed": changed,
                "epoch": state.mode_epoch,
            },
        )

    def info(self) -> dict[str, Any]:
        state = self.sources.state
        return {
            "mode": state.mode,
            "epoch": state.mode_epoch,
            "listeners": {
                name: format_address(address)
                for name, address in sorted(self.sources.listeners().items())
            },
            "app_url": self.sources.app_url,
            "replay": {"scope": state.replay_scope, "generation": state.replay_generation},
        }

    def begin_replay(self, request: Request) -> Response:
        """A new replay run scoped to one trace (or to every recording with null)."""
        if (refused := self.refusal(request)) is not None:
            return refused
        try:
            body = json.loads(request.body or b"null")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or "trace" not in body:
            return Response.json(400, {"error": 'expected a JSON body like {"trace": "<32 hex>"}'})
        trace = body["trace"]
        if trace is not None:
            trace = str(trace).strip().lower()
            if not _TRACE_ID.fullmatch(trace) or not trace.strip("0"):
                return Response.json(
                    400,
                    {"error": f"not a trace id (32 hex digits, not all zero): {body['trace']!r}"},
                )
        state = self.sources.state
        previous = state.mode
        # Set first: entering replay starts a run with the scope it finds.
        state.replay_scope = trace
        if previous == "replay":
            state.begin_replay(trace)
        else:
            state.set_mode("replay", source="admin, replay run")
        return Response.json(
            200,
            {
                "mode": state.mode,
                "previous": previous,
                "epoch": state.mode_epoch,
                "scope": state.replay_scope,
                "generation": state.replay_generation,
            },
        )

    def replay_report(self, request: Request) -> Response:
        if (refused := self.refusal(request)) is not None:
            return refused
        state = self.sources.state
        return Response.json(
            200,
            {
                "mode": state.mode,
                "generation": state.replay_generation,
                **_jsonable(state.report.as_dict()),
            },
        )


def _jsonable(value: Any) -> Any:
    """Report entries quote values as the replaying parts saw them, bytes included."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
