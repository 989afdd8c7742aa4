"""Pieces of one HTTP flow the recording addon needs: framing, attribution, bodies.

Kept apart from the addon's hooks so each hook stays a few look-ups long.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import url

from protocols.traceparent import parse_traceparent
from recorder.httpcapture import Attribution, BodyCapture, HttpExchange
from recorder.model import new_span_id

from .. import inflight


def framing(fields: tuple[tuple[bytes, bytes], ...]) -> tuple[bytes | None, bool, bytes | None]:
    """Content-Length, whether Transfer-Encoding is present, and traceparent, in one pass
    over the raw fields: each ``Headers.get`` would lowercase and scan them all again."""
    length = traceparent = None
    encoded = False
    for name, value in fields:
        lowered = name.lower()
        if lowered == b"content-length":
            length = value
        elif lowered == b"transfer-encoding":
            encoded = True
        elif lowered == b"traceparent":
            traceparent = value
    return length, encoded, traceparent


def streams(length: bytes | None, encoded: bool, cap: int, http2: bool) -> bool:
    """True when a body must be streamed: it may be larger than the cap, or its length
    is not declared. An HTTP/1 request with neither length nor chunking has no body."""
    if length is not None:
        return not length.isdigit() or int(length) > cap
    return http2 or encoded


def weak_attribution() -> Attribution:
    """For what carries no headers of its own (tunnels, failed CONNECTs)."""
    if (single := inflight.single_trace()) is not None:
        return Attribution(
            trace_id=single.trace_id,
            span_id=new_span_id(),
            parent_span_id=single.parent_id,
            source="inflight",
        )
    return Attribution(trace_id=None, span_id=new_span_id(), parent_span_id=None, source="")


def outbound_attribution(value: bytes | None) -> Attribution:
    if value is not None and (tp := parse_traceparent(value.decode("latin-1"))) is not None:
        return Attribution(
            trace_id=tp.trace_id,
            span_id=new_span_id(),
            parent_span_id=tp.parent_id,
            source="header",
        )
    return weak_attribution()


def as_client_sent(exchange: HttpExchange, flow: http.HTTPFlow) -> None:
    """An inbound request names the sidecar's listener, as its client addressed it, not the
    app it was forwarded to (that one is in ``server``)."""
    client = flow.client_conn
    exchange.scheme = "https" if client.tls else "http"
    listener_port = int(client.sockname[1]) if client.sockname else exchange.port
    try:
        host, port = url.parse_authority(flow.request.host_header or "", check=False)
    except ValueError:
        host, port = "", None
    exchange.host = host or (str(client.sockname[0]) if client.sockname else "")
    exchange.port = port or listener_port


def bodies(
    exchange: HttpExchange,
    streamed: tuple[BodyCapture | None, BodyCapture | None],
    request: http.Request,
    response: http.Response | None,
    cap: int,
) -> None:
    """The bodies as far as the cap: from the capture of a streamed one (request,
    response), else from what mitmproxy read whole."""
    request_body, response_body = streamed
    if request_body is not None:
        exchange.request_body = request_body.body
        exchange.request_body_size = request_body.size
    else:
        raw = request.raw_content or b""
        exchange.request_body, exchange.request_body_size = raw[:cap], len(raw)
    if response_body is not None:
        exchange.response_body = response_body.body
        exchange.response_body_size = response_body.size
        exchange.streamed = True
    elif response is not None:
        raw = response.raw_content or b""
        exchange.response_body, exchange.response_body_size = raw[:cap], len(raw)
