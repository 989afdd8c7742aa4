"""HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/) for the HTTP events of
executions: what browser devtools and other HAR viewers open.

One entry per ``http.inbound`` and ``http.outbound`` event (CONNECT tunnels forwarded
without interception have no request to show and are left out). Values come from the
payload when it opens: the query string, bodies, the values of credential headers. A
payload sealed to a key not given shows those values as ``[encrypted]`` (a damaged one
as ``[unreadable]``); the URL then has no query, since whether there was one is sealed.

flux's own fields follow the spec's rule for custom fields (a leading underscore):
``_traceId``, ``_spanId``, ``_parentSpanId``, ``_kind``, ``_error``.
"""

from __future__ import annotations

import base64
import http
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl

from recorder.model import HTTP_INBOUND, HTTP_OUTBOUND, StoredEvent
from recorder.store import SEALED_MARKER, UNREADABLE_MARKER, payload_problem

ENCRYPTED: Final = "[encrypted]"
UNREADABLE: Final = "[unreadable]"  # a payload that failed authentication or is damaged
HAR_VERSION: Final = "1.2"
_HTTP_KINDS: Final = frozenset({HTTP_INBOUND, HTTP_OUTBOUND})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def har_log(events: Iterable[StoredEvent], *, creator_version: str) -> dict[str, Any]:
    """The HAR document (``{"log": ...}``) for the HTTP events among ``events``."""
    chosen = [s for s in events if s.event.kind in _HTTP_KINDS and not s.event.attrs.get("tunnel")]
    chosen.sort(key=lambda s: (s.event.start_ns, s.seq))
    entries = [entry(s) for s in chosen]
    log: dict[str, Any] = {
        "version": HAR_VERSION,
        "creator": {"name": "flux-proxy", "version": creator_version},
        "entries": entries,
    }
    sealed = sum(1 for s in chosen if SEALED_MARKER in s.event.payload)
    damaged = sum(1 for s in chosen if UNREADABLE_MARKER in s.event.payload)
    notes = []
    if sealed:
        notes.append(
            f"{sealed} of {len(entries)} entries have values sealed to a key that was not "
            f"given: they show as {ENCRYPTED}"
        )
    if damaged:
        notes.append(f"{damaged} entries have damaged payloads: they show as {UNREADABLE}")
    if notes:
        log["comment"] = "; ".join(notes)
    return {"log": log}


def _text(value: Any) -> str:
    # Header names and values that are not UTF-8 are kept as bytes by the recorder.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


def _ms(ns: Any) -> float:
    return round(ns / 1e6, 3) if isinstance(ns, int) and ns >= 0 else -1


def _headers(shown: Any, secrets: Sequence[Any] | None, hidden: str) -> list[dict[str, str]]:
    """``split_headers``' two halves joined; with no secrets (sealed), ``hidden``."""
    pending = iter(secrets or ())
    out = []
    for pair in shown if isinstance(shown, list) else ():
        name, value = pair[0], pair[1]
        if value is None:
            value = next(pending, "") if secrets is not None else hidden
        out.append({"name": _text(name), "value": _text(value)})
    return out


def _header(headers: list[dict[str, str]], name: str) -> str:
    wanted = name.lower()
    return next((h["value"] for h in headers if h["name"].lower() == wanted), "")


def _cookies(headers: list[dict[str, str]], name: str) -> list[dict[str, Any]]:
    cookies: list[dict[str, Any]] = []
    for header in headers:
        if header["name"].lower() != name or header["value"] in (ENCRYPTED, UNREADABLE):
            continue
        if name == "cookie":
            for part in header["value"].split(";"):
                key, sep, value = part.strip().partition("=")
                if sep and key:
                    cookies.append({"name": key, "value": value})
            continue
        first, *attributes = header["value"].split(";")  # set-cookie: one cookie each
        key, sep, value = first.strip().partition("=")
        if not (sep and key):
            continue
        cookie: dict[str, Any] = {"name": key, "value": value}
        for attribute in attributes:
            attr, _, attr_value = attribute.strip().partition("=")
            match attr.lower():
                case "path" | "domain":
                    cookie[attr.lower()] = attr_value
                case "httponly":
                    cookie["httpOnly"] = True
                case "secure":
                    cookie["secure"] = True
        cookies.append(cookie)
    return cookies


def _body(body: Any) -> tuple[str, str | None]:
    """The body as HAR text, and ``base64`` when it is not UTF-8."""
    data = body if isinstance(body, bytes) else _text(body).encode()
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _with_body(
    target: dict[str, Any],
    side: str,
    encoding_key: str,
    attrs: dict[str, Any],
    payload: dict[str, Any] | None,
    hidden: str,
) -> dict[str, Any]:
    """``target`` (a postData or content object) given the ``side`` body's text, its
    encoding under ``encoding_key`` when not UTF-8, and a comment when it was cut short;
    ``hidden`` as the text when the payload did not open (``payload`` None)."""
    if payload is None:
        target["text"] = hidden
        return target
    target["text"], encoding = _body(payload.get(f"{side}_body", b""))
    if encoding:
        target[encoding_key] = encoding
    if attrs.get(f"{side}_body_truncated"):
        target["comment"] = "truncated: only the first bytes were recorded"
    return target


def _url(attrs: dict[str, Any], query: str) -> str:
    scheme, host = _text(attrs.get("scheme")) or "http", _text(attrs.get("host"))
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = attrs.get("port")
    authority = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{authority}{_text(attrs.get('path'))}" + (f"?{query}" if query else "")


def _timings(attrs: dict[str, Any], duration_ns: int) -> tuple[float, dict[str, float]]:
    """HAR timings in ms and their sum (the entry's ``time``); -1 where not applicable.

    ``connect`` includes ``ssl``, as the spec says; ``wait`` is the time to the first
    response byte after connecting, ``receive`` the rest of the exchange."""
    connect_ns, tls_ns = attrs.get("connect_ns"), attrs.get("tls_ns")
    setup = (connect_ns or 0) + (tls_ns or 0) if isinstance(connect_ns, int) else None
    first_byte = attrs.get("first_byte_ns")
    total = max(duration_ns, 0)
    waited = first_byte if isinstance(first_byte, int) else total
    wait = max(waited - (setup or 0), 0)
    receive = max(total - max(waited, setup or 0), 0)
    timings = {
        "blocked": -1.0,
        "dns": -1.0,
        "connect": _ms(setup) if setup is not None else -1.0,
        "send": 0.0,
        "wait": _ms(wait),
        "receive": _ms(receive),
        "ssl": _ms(tls_ns) if isinstance(tls_ns, int) and setup is not None else -1.0,
    }
    spent = sum(v for k, v in timings.items() if k != "ssl" and v > 0)
    return round(spent, 3), timings


def entry(stored: StoredEvent) -> dict[str, Any]:
    """One HAR entry for one HTTP event."""
    e = stored.event
    attrs, payload = e.attrs, e.payload
    opened = payload_problem(payload) is None
    hidden = UNREADABLE if UNREADABLE_MARKER in payload else ENCRYPTED
    query = _text(payload.get("query")) if opened else ""
    bodies = payload if opened else None
    request_headers = _headers(
        attrs.get("request_headers"),
        payload.get("request_secrets", []) if opened else None,
        hidden,
    )
    response_headers = _headers(
        attrs.get("response_headers"),
        payload.get("response_secrets", []) if opened else None,
        hidden,
    )
    version = _text(attrs.get("http_version")) or "HTTP/1.1"
    request: dict[str, Any] = {
        "method": _text(attrs.get("method")),
        "url": _url(attrs, query),
        "httpVersion": version,
        "cookies": _cookies(request_headers, "cookie"),
        "headers": request_headers,
        "queryString": [{"name": k, "value": v} for k, v in parse_qsl(query, True)],
        "headersSize": -1,
        "bodySize": _size(attrs.get("request_body_size")),
    }
    if request["bodySize"] > 0:
        post: dict[str, Any] = {"mimeType": _header(request_headers, "content-type")}
        # HAR's postData has no encoding field: flux's own, underscored, says base64.
        request["postData"] = _with_body(post, "request", "_encoding", attrs, bodies, hidden)
    status = attrs.get("status")
    status = status if isinstance(status, int) and not isinstance(status, bool) else 0
    content: dict[str, Any] = {
        "size": max(_size(attrs.get("response_body_size")), 0),
        "mimeType": _header(response_headers, "content-type") or "x-unknown",
    }
    if content["size"] > 0:
        _with_body(content, "response", "encoding", attrs, bodies, hidden)
    response: dict[str, Any] = {
        "status": status,
        "statusText": _text(attrs.get("reason")) or _phrase(status),
        "httpVersion": version,
        "cookies": _cookies(response_headers, "set-cookie"),
        "headers": response_headers,
        "content": content,
        "redirectURL": _header(response_headers, "location"),
        "headersSize": -1,
        "bodySize": _size(attrs.get("response_body_size")),
    }
    time, timings = _timings(attrs, e.duration_ns)
    out: dict[str, Any] = {
        "startedDateTime": _iso(e.start_ns),
        "time": time,
        "request": request,
        "response": response,
        "cache": {},
        "timings": timings,
        "_traceId": e.trace_id,
        "_spanId": e.span_id,
        "_parentSpanId": e.parent_span_id,
        "_kind": e.kind,
    }
    server = _text(attrs.get("server"))
    if server:  # host:port or [v6]:port
        out["serverIPAddress"] = server.rpartition(":")[0].strip("[]")
    if e.conn_id:
        out["connection"] = e.conn_id
    if attrs.get("error"):
        out["_error"] = _text(attrs["error"])
    if opened and payload.get("websocket"):
        out["_webSocketMessages"] = _websocket(payload["websocket"])
    return out


def _size(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _websocket(frames: Any) -> list[dict[str, Any]]:
    """Chrome's ``_webSocketMessages``: type, time (epoch seconds), opcode, data."""
    out = []
    for frame in frames if isinstance(frames, list) else ():
        from_client, at, is_text, data = frame
        text, encoding = _body(data)
        out.append(
            {
                "type": "send" if from_client else "receive",
                "time": at,
                "opcode": 1 if is_text and encoding is None else 2,
                "data": text,
            }
        )
    return out
