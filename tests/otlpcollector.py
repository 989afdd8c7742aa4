"""An OTLP/HTTP collector on loopback for the tests: it parses each request it is sent
with the OpenTelemetry protobuf definitions (``opentelemetry-proto``), strictly."""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def parse_otlp_json(data: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON into the protobuf message, strictly (unknown fields fail). OTLP/JSON's
    ids are hex where the protobuf JSON mapping has base64: convert, checking lengths."""
    document = json.loads(data)
    for resource in document.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for name, size in (("traceId", 16), ("spanId", 8), ("parentSpanId", 8)):
                    if name in span:
                        raw = bytes.fromhex(span[name])
                        assert len(raw) == size, (name, span[name])
                        span[name] = base64.b64encode(raw).decode()
    return json_format.Parse(json.dumps(document), ExportTraceServiceRequest())


class Collector(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CollectorHandler)
        self.received: list[ExportTraceServiceRequest] = []
        self.errors: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[Span]:
        return [
            span
            for request in list(self.received)
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]


class CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            assert self.path == "/v1/traces", self.path
            assert self.headers.get("content-type") == "application/json"
            self.server.received.append(parse_otlp_json(body))
        except Exception as exc:
            self.server.errors.append(repr(exc))
            self.send_response(400)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out
