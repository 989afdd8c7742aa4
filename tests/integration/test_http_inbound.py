"""The inbound reverse proxy in front of a small real app that queries PostgreSQL (through
the sidecar) and calls an HTTPS origin (through the sidecar's forward proxy)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests

from protocols.traceparent import parse_traceparent
from tests.fix_app import AppHandler, AppServer, send, serve, start_recording
from tests.fix_http import Origin, Pki, recorded, traceparent
from tests.fix_pg import PgServer
from tests.fix_sidecar import SidecarProcess

pytestmark = pytest.mark.pg


class Handler(AppHandler):
    """``/orders/<n>``: a query and an HTTPS call, both carrying the traceparent the app got
    (as an instrumented app does); ``/plain``: an HTTPS call carrying nothing."""

    def do_GET(self) -> None:
        app, tp = self.server, self.traceparent
        session = app.session()
        body: dict[str, Any] = {"traceparent": tp}
        if self.path.startswith("/orders/"):
            order = int(self.path.rsplit("/", 1)[1])
            with psycopg.connect(app.dsn, autocommit=True) as conn:
                row = conn.execute(
                    f"SELECT %s::int * 2 /*traceparent='{tp}'*/", (order,)
                ).fetchone()
            assert row is not None
            body["doubled"] = row[0]
            body["remote"] = session.get(f"{app.origin}/hello", headers={"traceparent": tp}).json()
        elif self.path == "/plain":
            body["remote"] = session.get(f"{app.origin}/hello").json()
        session.close()
        self.reply(200, body)


@pytest.fixture(scope="module")
def app() -> Iterator[AppServer]:
    with serve(AppServer(Handler)) as server:
        yield server


@pytest.fixture(scope="module")
def sidecar(
    tmp_path_factory: pytest.TempPathFactory,
    pg15: PgServer,
    test_pki: Pki,
    app: AppServer,
    origin: Origin,
) -> Iterator[SidecarProcess]:
    data_dir = tmp_path_factory.mktemp("http-inbound") / "flux"
    process = start_recording(app, data_dir, pg15, test_pki, origin)
    yield process
    process.stop()


def call(sidecar: SidecarProcess, path: str, **headers: str) -> requests.Response:
    response = send(sidecar, "GET", path, headers=headers)
    assert response.status_code == 200, response.text
    return response


def by_kind(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [e["kind"] for e in events]
    assert len(kinds) == len(set(kinds)), kinds
    return {e["kind"]: e for e in events}


def test_request_its_query_and_its_call_are_one_trace(sidecar: SidecarProcess) -> None:
    response = call(sidecar, "/orders/21")
    trace = response.headers["x-flux-trace-id"]
    seen = response.json()
    assert seen["doubled"] == 42
    injected = parse_traceparent(seen["traceparent"])
    assert injected is not None and injected.trace_id == trace  # a new trace, given to the app
    assert seen["remote"]["traceparent"] == seen["traceparent"]

    events = by_kind(recorded(sidecar, trace, 3))
    assert set(events) == {"http.inbound", "pg.query", "http.outbound"}
    inbound = events["http.inbound"]
    assert inbound["span_id"] == injected.parent_id and inbound["parent_span_id"] is None
    attrs = inbound["attrs"]
    assert (attrs["method"], attrs["path"], attrs["status"]) == ("GET", "/orders/21", 200)
    assert json.loads(bytes.fromhex(inbound["payload"]["response_body"]["hex"])) == seen
    assert events["pg.query"]["parent_span_id"] == inbound["span_id"]
    assert events["http.outbound"]["parent_span_id"] == inbound["span_id"]
    assert events["http.outbound"]["attrs"]["path"] == "/hello"
    # The children happened inside the request, in this order.
    start, end = inbound["start_ns"], inbound["start_ns"] + inbound["duration_ms"] * 1e6
    assert start <= events["pg.query"]["start_ns"] < events["http.outbound"]["start_ns"] < end

    (listed,) = [t for t in sidecar.flux_json("traces") if t["trace_id"] == trace]
    assert (listed["method"], listed["path"], listed["status"]) == ("GET", "/orders/21", 200)
    assert (listed["queries"], listed["calls"], listed["errors"]) == (1, 1, 0)

    text = sidecar.flux("trace", trace).stdout
    lines = [line for line in text.splitlines() if "http." in line or "pg." in line]
    assert "http.inbound" in lines[0] and "GET /orders/21 → 200" in lines[0]
    assert "└ pg.query" in lines[1]
    assert "└ http.outbound" in lines[2] and "/hello → 200" in lines[2]
    assert "total" in text.splitlines()[0]


def test_a_callers_traceparent_is_continued(sidecar: SidecarProcess) -> None:
    trace, span, tp = traceparent()
    response = call(sidecar, "/orders/1", traceparent=tp)
    assert response.headers["x-flux-trace-id"] == trace
    given = parse_traceparent(response.json()["traceparent"])
    assert given is not None and given.trace_id == trace
    assert given.parent_id != span  # the sidecar's request span sits between caller and app
    events = by_kind(recorded(sidecar, trace, 3))
    assert events["http.inbound"]["parent_span_id"] == span
    assert events["http.inbound"]["span_id"] == given.parent_id


def test_an_uninstrumented_call_belongs_to_the_request_in_flight(sidecar: SidecarProcess) -> None:
    response = call(sidecar, "/plain")
    trace = response.headers["x-flux-trace-id"]
    assert response.json()["remote"]["traceparent"] is None  # the app propagated nothing
    events = by_kind(recorded(sidecar, trace, 2))
    outbound = events["http.outbound"]
    assert outbound["attrs"]["trace_source"] == "inflight"
    assert outbound["parent_span_id"] == events["http.inbound"]["span_id"]
