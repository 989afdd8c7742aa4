"""Events as OpenTelemetry spans: the OTLP/JSON encoding of ``ExportTraceServiceRequest``.

One span per event of an execution, with the ids the sidecar recorded, so spans land
under the application's own spans when it exports them to the same collector.
Attributes follow the OpenTelemetry semantic conventions (``db.*``, ``http.*``,
``url.*``, ``server.*``, ``error.type``), from plaintext fields only: a span never
carries a sealed value, so ``db.query.text`` is the statement with its literals
stripped. Unattributed events (no trace id) have no place in a trace and are skipped.

OTLP/JSON differs from the protobuf JSON mapping in two ways that matter here: trace
and span ids are hex, not base64, and enum values are integers.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final

from recorder.model import (
    HTTP_INBOUND,
    HTTP_OUTBOUND,
    MUTATION,
    PG_QUERY,
    PG_SESSION,
    UDP,
    Event,
)

SPAN_KIND_INTERNAL: Final = 1
SPAN_KIND_SERVER: Final = 2
SPAN_KIND_CLIENT: Final = 3
STATUS_CODE_ERROR: Final = 2
SCOPE_NAME: Final = "flux-proxy"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_SESSIONS_KEPT: Final = 4096  # connections whose database name is remembered


def value(v: Any) -> dict[str, Any]:
    """An OTLP ``AnyValue``; 64-bit integers travel as strings, as in the JSON mapping."""
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list | tuple):
        return {"arrayValue": {"values": [value(item) for item in v]}}
    if isinstance(v, bytes):
        return {"stringValue": v.decode("utf-8", "replace")}
    return {"stringValue": str(v)}


def _attributes(pairs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": value(v)} for k, v in pairs.items() if v not in (None, "", [])]


def _host_port(address: Any) -> tuple[str | None, int | None]:
    """``host:port`` or ``[v6]:port`` as recorded, split."""
    if not isinstance(address, str) or ":" not in address:
        return None, None
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class SpanConverter:
    """Turns events into span dicts. It remembers each connection's database from its
    ``pg.session`` event (unattributed, so not a span itself) for the query spans that
    follow on that connection: ``db.namespace`` and the server's address."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.skipped = 0  # events that make no span: unattributed, or ids that are not hex

    def spans(self, events: Iterable[Event]) -> list[dict[str, Any]]:
        out = []
        for event in events:
            span = self.span(event)
            if span is not None:
                out.append(span)
        return out

    def span(self, event: Event) -> dict[str, Any] | None:
        if event.kind == PG_SESSION and event.conn_id is not None:
            self._sessions[event.conn_id] = event.attrs
            if len(self._sessions) > _SESSIONS_KEPT:
                self._sessions.popitem(last=False)
        trace, span_id = event.trace_id, event.span_id
        if trace is None or not _TRACE_ID.fullmatch(trace) or not _SPAN_ID.fullmatch(span_id):
            self.skipped += 1
            return None
        if event.kind == PG_QUERY:
            name, kind, attrs, error = self._pg_query(event)
        elif event.kind in (HTTP_INBOUND, HTTP_OUTBOUND):
            name, kind, attrs, error = _http(event)
        elif event.kind == MUTATION:
            name, kind, attrs, error = _mutation(event)
        else:
            name, kind, attrs, error = _other(event)
        attrs["flux.event.kind"] = event.kind
        span: dict[str, Any] = {
            "traceId": trace,
            "spanId": span_id,
            "name": name,
            "kind": kind,
            "startTimeUnixNano": str(event.start_ns),
            "endTimeUnixNano": str(event.start_ns + max(event.duration_ns, 0)),
            "attributes": _attributes(attrs),
        }
        parent = event.parent_span_id
        if parent and _SPAN_ID.fullmatch(parent) and parent != span_id:
            span["parentSpanId"] = parent
        if error is not None:
            span["status"] = {"code": STATUS_CODE_ERROR, "message": error}
        return span

    def _pg_query(self, event: Event) -> tuple[str, int, dict[str, Any], str | None]:
        a = event.attrs
        statements = [s for s in a.get("statements") or () if isinstance(s, dict)]
        ops = [str(s.get("kind") or "").upper() for s in statements]
        operation: str | None = None
        if len(set(ops)) == 1 and ops[0]:
            operation = ops[0] if len(ops) == 1 else f"BATCH {ops[0]}"  # conventions' batch name
        elif ops:
            operation = "BATCH"
        session = self._sessions.get(event.conn_id or "", {})
        host, port = _host_port(session.get("upstream"))
        sqlstate = a.get("sqlstate")
        attrs: dict[str, Any] = {
            "db.system": "postgresql",  # the name before semantic conventions 1.26
            "db.system.name": "postgresql",
            "db.namespace": session.get("database"),
            "db.query.text": "; ".join(str(s.get("normalized", "")) for s in statements),
            "db.operation.name": operation,
            "db.response.status_code": sqlstate,
            "db.response.returned_rows": _int(a.get("rows")),
            "server.address": host,
            "server.port": port,
            "error.type": sqlstate if event.error else None,
        }
        name = operation or "postgresql"
        if not event.error:
            return name, SPAN_KIND_CLIENT, attrs, None
        if not sqlstate and not a.get("complete", True):
            attrs["error.type"] = "connection_closed"
            return name, SPAN_KIND_CLIENT, attrs, "the connection ended mid-cycle"
        return name, SPAN_KIND_CLIENT, attrs, f"SQLSTATE {sqlstate}" if sqlstate else "error"


def _http(event: Event) -> tuple[str, int, dict[str, Any], str | None]:
    a = event.attrs
    method = str(a.get("method") or "HTTP")
    scheme, host, port = a.get("scheme"), a.get("host"), _int(a.get("port"))
    status = _int(a.get("status"))
    version = str(a.get("http_version") or "").removeprefix("HTTP/")
    shown = f"[{host}]" if isinstance(host, str) and ":" in host else host
    inbound = event.kind == HTTP_INBOUND
    client, _ = _host_port(a.get("client"))
    attrs: dict[str, Any] = {
        "http.request.method": method,
        "url.full": f"{scheme}://{shown}:{port}{a.get('path', '')}" if scheme else None,
        "url.scheme": scheme,
        "url.path": a.get("path"),
        "server.address": host,
        "server.port": port,
        "http.response.status_code": status,
        "network.protocol.name": "http" if version else None,
        "network.protocol.version": {"2.0": "2", "3.0": "3"}.get(version, version) or None,
        "http.request.body.size": _int(a.get("request_body_size")),
        "http.response.body.size": _int(a.get("response_body_size")),
        "client.address": client if inbound else None,
    }
    error: str | None = None
    failed_status = status is not None and (status >= 500 or (not inbound and status >= 400))
    if a.get("error"):
        attrs["error.type"] = a.get("error_kind") or "other"
        error = str(a["error"])
    elif failed_status:  # a 4xx is the client's error: not the server span's (conventions)
        attrs["error.type"] = str(status)
        error = f"HTTP {status}"
    return method, SPAN_KIND_SERVER if inbound else SPAN_KIND_CLIENT, attrs, error


def _mutation(event: Event) -> tuple[str, int, dict[str, Any], str | None]:
    a = event.attrs
    op, table = str(a.get("op") or "change"), a.get("table")
    attrs: dict[str, Any] = {
        "db.system": "postgresql",
        "db.system.name": "postgresql",
        "db.operation.name": op.upper(),
        "db.collection.name": table,
        "flux.mutation.status": a.get("status"),
        "flux.mutation.changed": [str(c) for c in a.get("changed") or ()],
    }
    return f"{op.upper()} {table}", SPAN_KIND_INTERNAL, attrs, None


def _other(event: Event) -> tuple[str, int, dict[str, Any], str | None]:
    a = event.attrs
    if event.kind == UDP:
        host, port = _host_port(a.get("upstream"))
        attrs: dict[str, Any] = {
            "network.transport": "udp",
            "server.address": host,
            "server.port": port,
            "dns.question.name": a.get("qname"),
            "error.type": a.get("error") if event.error else None,
        }
        name = f"DNS {a.get('qtype')}" if a.get("dns") else "udp"
        return name, SPAN_KIND_CLIENT, attrs, str(a.get("error")) if event.error else None
    return event.kind, SPAN_KIND_INTERNAL, {}, "error" if event.error else None


def export_request(
    spans: list[dict[str, Any]], *, service_name: str, scope_version: str
) -> dict[str, Any]:
    """The ``ExportTraceServiceRequest`` holding ``spans`` (one resource, one scope)."""
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes({"service.name": service_name})},
                "scopeSpans": [
                    {"scope": {"name": SCOPE_NAME, "version": scope_version}, "spans": spans}
                ],
            }
        ]
    }
