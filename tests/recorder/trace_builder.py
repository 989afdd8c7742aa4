"""Builds StoredEvent lists shaped like the recorder's (same attrs and payload keys as
recorder.pgdecode, recorder.httpcapture and recorder.mutation.events produce), for the
unit tests of recorder.analysis."""

from __future__ import annotations

from typing import Any

from protocols import pgwire
from recorder.model import (
    HTTP_INBOUND,
    HTTP_OUTBOUND,
    MUTATION,
    PG_QUERY,
    Event,
    StoredEvent,
    new_span_id,
    new_trace_id,
)
from recorder.store import SEALED_MARKER

T0 = 1_700_000_000 * 10**9
MS = 10**6


def rows_backend(*rows: tuple[str | None, ...]) -> bytes:
    """DataRows then a CommandComplete, as a backend sent them."""
    data = b"".join(
        pgwire.encode(pgwire.DataRow(values=tuple(None if v is None else v.encode() for v in row)))
        for row in rows
    )
    return data + pgwire.encode(pgwire.CommandComplete(tag=f"SELECT {len(rows)}"))


class TraceBuilder:
    def __init__(self, trace_id: str | None = None, *, sealed: bool = False) -> None:
        self.trace_id = trace_id or new_trace_id()
        self.sealed = sealed  # payloads read back without the private key
        self.events: list[StoredEvent] = []

    def add(
        self,
        kind: str,
        *,
        at: float,
        ms: float = 1.0,
        parent: StoredEvent | None = None,
        error: bool = False,
        fingerprint: str | None = None,
        attrs: dict[str, Any] | None = None,
        payload: dict[str, Any] | None = None,
        conn: str | None = "c1",
    ) -> StoredEvent:
        payload = payload or {}
        if self.sealed and payload:
            payload = {SEALED_MARKER: "k1"}
        stored = StoredEvent(
            id=len(self.events) + 1,
            seq=len(self.events) + 1,
            event=Event(
                kind=kind,
                trace_id=self.trace_id,
                span_id=new_span_id(),
                parent_span_id=parent.event.span_id if parent else None,
                conn_id=conn,
                start_ns=T0 + int(at * MS),
                duration_ns=int(ms * MS),
                error=error,
                fingerprint=fingerprint,
                attrs=attrs or {},
                payload=payload,
            ),
        )
        self.events.append(stored)
        return stored

    def inbound(
        self, method: str, path: str, status: int | None, *, at: float = 0, ms: float = 100,
        error: str | None = None, error_kind: str | None = None, body: bytes = b"",
    ) -> StoredEvent:  # fmt: skip
        attrs: dict[str, Any] = {"method": method, "path": path, "status": status}
        if error:
            attrs.update(error=error, error_kind=error_kind)
        failed = error is not None or (status is not None and status >= 500)
        payload = {"response_body": body} if body else {}
        return self.add(HTTP_INBOUND, at=at, ms=ms, error=failed, attrs=attrs, payload=payload,
                        fingerprint=f"{method} http://127.0.0.1:8000{path}", conn="in1")  # fmt: skip

    def call(
        self, method: str, host: str, path: str, status: int | None, *, at: float, ms: float = 5,
        parent: StoredEvent | None = None, error: str | None = None,
        error_kind: str | None = None, response_body: bytes = b"", request_body: bytes = b"",
        headers: list[list[str]] | None = None,
    ) -> StoredEvent:  # fmt: skip
        attrs: dict[str, Any] = {
            "method": method, "scheme": "https", "host": host, "port": 443, "path": path,
            "status": status, "response_headers": headers or [],
            "response_body_size": len(response_body),
        }  # fmt: skip
        if error:
            attrs.update(error=error, error_kind=error_kind)
        payload: dict[str, Any] = {}
        if response_body:
            payload["response_body"] = response_body
        if request_body:
            payload["request_body"] = request_body
        failed = error is not None or (status is not None and status >= 500)
        return self.add(
            HTTP_OUTBOUND, at=at, ms=ms, parent=parent, error=failed, attrs=attrs,
            payload=payload, fingerprint=f"{method} https://{host}:443{path}", conn="out1",
        )  # fmt: skip

    def query(
        self, normalized: str, *, at: float, ms: float = 1, parent: StoredEvent | None = None,
        sql: str | None = None, params: list[Any] | None = None, tags: tuple[str, ...] = (),
        rows: int = 0, sqlstate: str | None = None, message: str = "", detail: str = "",
        before: str = "I", after: str = "I", conn: str = "c1", backend: bytes = b"",
    ) -> StoredEvent:  # fmt: skip
        attrs: dict[str, Any] = {
            "statements": [{"fingerprint": f"fp:{normalized}", "normalized": normalized}],
            "tags": list(tags), "rows": rows, "sqlstate": sqlstate,
            "status_before": before, "status_after": after, "complete": True,
        }  # fmt: skip
        # One list of values per Bind, as recorder.pgdecode keeps them.
        payload: dict[str, Any] = {"sql": [sql or normalized], "params": [params or []]}
        if sqlstate:
            payload["error"] = {"S": "ERROR", "C": sqlstate, "M": message}
            if detail:
                payload["error"]["D"] = detail
        if backend:
            payload["backend"] = backend
        return self.add(
            PG_QUERY, at=at, ms=ms, parent=parent, error=sqlstate is not None, attrs=attrs,
            payload=payload, fingerprint=f"fp:{normalized}", conn=conn,
        )  # fmt: skip

    def mutation(
        self, query: StoredEvent, table: str, op: str, status: str | None, key: dict[str, str]
    ) -> StoredEvent:
        attrs: dict[str, Any] = {"table": table, "op": op, "changed": sorted(key)}
        if status is not None:
            attrs["status"] = status
        return self.add(
            MUTATION, at=(query.event.start_ns - T0) / MS, ms=0, parent=query,
            attrs=attrs, payload={"key": key, "before": None, "after": "{}"},
            conn=query.event.conn_id,
        )  # fmt: skip
