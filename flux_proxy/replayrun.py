"""Re-running a recorded request against the app, through a running sidecar.

``flux replay``, ``flux incident replay`` and ``flux resume`` are built on this.
One replay run:

1. read the trace's recorded inbound request from the store, opened with the
   private key (the query string, credentials and body are sealed);
2. ``POST /replay`` to the sidecar's admin API: replay mode, scoped to the trace,
   every recording unused again, an empty report;
3. send the request to the sidecar's inbound listener with ``traceparent:
   00-<trace>-<new span>-01``, so that the app's queries and calls, which carry
   that trace, are answered from the trace's recordings;
4. compare the new response with the recorded one (:mod:`recorder.replaycompare`);
5. ``GET /replay`` for the queries and calls that missed or differed inside.

A :class:`ReplaySession` puts the sidecar back in the mode it found when it ends
(unless told to stay), so that an incident of many traces switches modes once.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from protocols.traceparent import new_traceparent
from recorder.abc import Store
from recorder.replaycompare import (
    EXIT_CODES,
    Difference,
    ResponseView,
    compare,
    decoded_body,
    verdict,
)
from recorder.replaypaths import IgnorePath

from .cmd_admin import AdminError, call
from .recordedrequest import RecordedRequest, ReplayError, load_recorded, text

# Hop-by-hop and framing headers are the connection's, not the request's; the trace
# headers are replaced by the run's own.
_NOT_RESENT = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "content-length", "expect",
        "traceparent", "tracestate", "x-flux-trace-id", "x-flux-resumed-from",
    }
)  # fmt: skip
RESUMED_HEADER = "x-flux-resumed-from"
DEFAULT_TIMEOUT = 60.0


# -- the sidecar -----------------------------------------------------------------------


@dataclass(slots=True)
class Admin:
    """The running sidecar's admin API."""

    url: str
    token: str | None
    inbound_override: str | None = None

    def call(self, method: str, path: str, body: Any = None, *, token: bool = False) -> Any:
        if token and not self.token:
            raise ReplayError(
                "replay drives the sidecar's mode and needs the admin token: "
                "--admin-token or FLUX_ADMIN_TOKEN",
                fatal=True,
            )
        try:
            return call(self.url, method, path, token=self.token if token else None, body=body)
        except AdminError as exc:
            raise ReplayError(str(exc), fatal=True) from None

    def info(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("GET", "/info")
        return answer

    def inbound(self, info: dict[str, Any]) -> tuple[str, int]:
        """Where to send requests: ``--inbound`` if given, else the listener /info names."""
        text = self.inbound_override or (info.get("listeners") or {}).get("inbound")
        if not text:
            raise ReplayError(
                "the sidecar has no inbound listener (start it with --app, or FLUX_APP_URL) "
                "to send the request through",
                fatal=True,
            )
        split = urlsplit(text if "//" in text else f"http://{text}")
        host, port = split.hostname or "127.0.0.1", split.port or 80
        if host in ("0.0.0.0", "::"):  # listening everywhere: reach it where the admin API is
            host = urlsplit(self.url).hostname or "127.0.0.1"
        return host, port

    def set_mode(self, mode: str) -> None:
        self.call("POST", "/mode", {"mode": mode}, token=True)


@dataclass(slots=True, kw_only=True)
class ReplayResult:
    trace_id: str
    method: str
    path: str
    verdict: str
    differences: list[Difference]
    ignored: int = 0
    left_out: int = 0
    recorded_status: int | None = None
    new_status: int | None = None
    new_error: str | None = None
    recorded_failures: list[str] = field(default_factory=list)
    recorded_ms: float = 0.0
    new_ms: float = 0.0
    hits: int = 0
    misses: list[dict[str, Any]] = field(default_factory=list)
    volatile: list[dict[str, Any]] = field(default_factory=list)
    generation: int | None = None
    new_excerpt: str = ""  # the start of the new body, to say why a run failed
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def passing(self) -> bool:
        """The new run succeeded: an answer below 500."""
        return self.new_status is not None and self.new_error is None and self.new_status < 500

    def as_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "passing": self.passing,
            "method": self.method,
            "path": self.path,
            "recorded": {
                "status": self.recorded_status,
                "failed": bool(self.recorded_failures),
                "failures": self.recorded_failures,
                "duration_ms": self.recorded_ms,
            },
            "new": {"status": self.new_status, "error": self.new_error, "duration_ms": self.new_ms},
            "differences": [d.as_dict() for d in self.differences],
            "ignored": self.ignored,
            "left_out": self.left_out,
            "hits": self.hits,
            "misses": self.misses,
            "volatile": self.volatile,
            "generation": self.generation,
            "notes": self.notes,
        }


# -- sending ---------------------------------------------------------------------------


def send(
    address: tuple[str, int],
    request: RecordedRequest,
    extra: Sequence[tuple[str, str]],
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[ResponseView, int]:
    """Sends ``request`` as recorded (header order and case kept), with ``extra`` headers.

    Returns the response and how long it took. A refused connection raises: the
    sidecar is not there. A proxy error standing for an unreachable app raises too."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    start = time.monotonic_ns()
    try:
        conn.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
        names = set()
        for name, value in request.headers:
            lowered = text(name).lower()
            if lowered in _NOT_RESENT or lowered.startswith(":"):
                continue
            names.add(lowered)
            conn.putheader(name, value)
        if "host" not in names:
            conn.putheader("Host", f"{address[0]}:{address[1]}")
        if request.body or request.method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(request.body)))
        for name, value in extra:
            conn.putheader(name, value)
        conn.endheaders(request.body or None)
        response = conn.getresponse()
        body = response.read()
        view = ResponseView(status=response.status, headers=response.getheaders(), body=body)
    except ConnectionRefusedError:
        raise ReplayError(
            f"cannot reach the sidecar's inbound listener at {address[0]}:{address[1]}",
            fatal=True,
        ) from None
    except TimeoutError:
        view = ResponseView(status=None, error=f"no response within {timeout:g}s")
    except (OSError, http.client.HTTPException) as exc:
        view = ResponseView(status=None, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    elapsed = time.monotonic_ns() - start
    if (reason := _unreachable_app(view)) is not None:
        raise ReplayError(f"the app behind the sidecar is unreachable: {reason}", fatal=True)
    return view, elapsed


def _unreachable_app(view: ResponseView) -> str | None:
    """The proxy's own answer when it could not connect to the app (the app never
    answers with mitmproxy's Server header), as opposed to the app's own 502."""
    if view.status not in (502, 504):
        return None
    server = " ".join(view.header_values("server")).lower()
    text = view.body.decode("utf-8", "replace")
    if server.startswith("mitmproxy") or text.startswith("flux: cannot connect"):
        inner = text.split("<p>", 1)[1].split("</p>", 1)[0] if "<p>" in text else text
        return inner.strip() or f"{view.status}"
    return None


# -- the session -----------------------------------------------------------------------


class ReplaySession:
    """Replay runs through one sidecar; the mode it found comes back at the end."""

    def __init__(self, admin: Admin, *, stay: bool = False, timeout: float = DEFAULT_TIMEOUT):
        self.admin = admin
        self.stay = stay
        self.timeout = timeout
        self.previous: str | None = None
        self.address: tuple[str, int] | None = None

    def __enter__(self) -> ReplaySession:
        info = self.admin.info()
        self.previous = str(info.get("mode"))
        self.address = self.admin.inbound(info)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        if self.stay or self.previous in (None, "replay"):
            return
        previous, self.previous = self.previous, None
        assert previous is not None
        self.admin.set_mode(previous)

    def replay(
        self, store: Store, trace_id: str, ignore: Iterable[IgnorePath | str] = ()
    ) -> ReplayResult:
        request = load_recorded(store, trace_id)
        run = self.admin.call("POST", "/replay", {"trace": request.trace_id}, token=True)
        generation = run.get("generation")
        span = new_traceparent(trace_id=request.trace_id).format()
        assert self.address is not None
        new, elapsed = send(self.address, request, [("traceparent", span)], self.timeout)
        report = self.admin.call("GET", "/replay", token=True)
        try:
            comparison = compare(request.response, new, ignore)
        except ValueError as exc:  # an --ignore path the caller did not check
            raise ReplayError(f"--ignore: {exc}", fatal=True) from None
        judged = verdict(
            recorded_failed=request.failed, new_failed=new.failed, comparison=comparison
        )
        same_run = report.get("generation") == generation
        notes = []
        if not same_run:
            notes.append(
                "another replay run started on the sidecar during this one: "
                "its misses and volatile values are not shown"
            )
        return ReplayResult(
            trace_id=request.trace_id,
            method=request.method,
            path=request.path,
            verdict=judged,
            differences=list(comparison.differences),
            ignored=comparison.ignored,
            left_out=comparison.left_out,
            recorded_status=request.response.status,
            new_status=new.status,
            new_error=new.error,
            recorded_failures=request.failures,
            recorded_ms=request.duration_ns / 1e6,
            new_ms=elapsed / 1e6,
            hits=int(report.get("hits", 0)) if same_run else 0,
            misses=list(report.get("misses", [])) if same_run else [],
            volatile=list(report.get("volatile", [])) if same_run else [],
            generation=generation,
            new_excerpt=decoded_body(new)[:400].decode("utf-8", "replace"),
            notes=notes,
        )


def replay_trace(
    store: Store,
    trace_id: str,
    admin: Admin,
    *,
    ignore: Iterable[IgnorePath | str] = (),
    stay: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> ReplayResult:
    """One trace replayed, the sidecar's mode restored afterwards unless ``stay``."""
    with ReplaySession(admin, stay=stay, timeout=timeout) as session:
        return session.replay(store, trace_id, ignore)
