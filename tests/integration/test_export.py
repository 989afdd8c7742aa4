"""``flux export`` and ``flux import`` on recordings made through the real sidecar: a
bundle replayed in a fresh store, HAR checked against the HAR 1.2 schema, OTLP/JSON
parsed with the OpenTelemetry protobuf definitions, and spans streamed live to a
collector on loopback (``flux serve --otlp-endpoint``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from recorder.model import StoredEvent
from recorder.store import open_store
from tests.fix_app import AppHandler, AppServer, send, serve, start_recording
from tests.fix_http import Origin, Pki, recorded
from tests.fix_pg import PgServer
from tests.fix_sentinel import Sentinel
from tests.fix_sidecar import REPO, SidecarProcess, run_flux, seed_dev_keys, start_sidecar
from tests.otlpcollector import Collector, attributes, parse_otlp_json

pytestmark = pytest.mark.pg

HAR_SCHEMA = json.loads((REPO / "tests" / "schemas" / "har-1.2.schema.json").read_text())
TOKEN = "tok-Qv81-secret-query"  # travels in a query string: sealed at rest
BEARER = "Bearer bq-77-secret-credential"  # an authorization header value: sealed
LITERAL = "lit-Wm3-secret-literal"  # a literal in SQL: only the fingerprint is plaintext


# -- an app behind the sidecar: a query and HTTPS calls per request ---------------------


class Handler(AppHandler):
    def do_GET(self) -> None:
        app, tp = self.server, self.traceparent
        session = app.session()
        body: dict[str, Any] = {}
        status = 200
        if self.path.startswith("/orders/"):
            order = int(self.path.rsplit("/", 1)[1])
            with psycopg.connect(app.dsn, autocommit=True) as conn:
                row = conn.execute(
                    f"SELECT %s::int * 2, '{LITERAL}' /*traceparent='{tp}'*/", (order,)
                ).fetchone()
            assert row is not None
            body["doubled"] = row[0]
            headers = {"traceparent": tp, "authorization": BEARER}
            hello = session.get(f"{app.origin}/hello?token={TOKEN}", headers=headers)
            body["remote"] = hello.json()
            echo = session.post(f"{app.origin}/echo", json={"order": order}, headers=headers)
            body["echo"] = echo.json()
        else:  # an upstream that fails
            failed = session.get(f"{app.origin}/status/503", headers={"traceparent": tp})
            body["upstream"] = failed.status_code
            status = 502
        session.close()
        self.reply(status, body)


@dataclass
class Recording:
    sidecar: SidecarProcess  # stopped: its store is complete
    collector: Collector
    orders: list[str] = field(default_factory=list)  # trace ids of /orders/<n>
    failed: str = ""  # trace id of the request whose upstream answered 503

    @property
    def traces(self) -> list[str]:
        return [*self.orders, self.failed]

    def events(self, trace: str) -> list[StoredEvent]:
        store = open_store(self.sidecar.data_dir, readonly=True)
        try:
            return store.get_trace(trace)
        finally:
            store.close()


@pytest.fixture(scope="module")
def recording(
    tmp_path_factory: pytest.TempPathFactory, pg15: PgServer, test_pki: Pki, origin: Origin
) -> Iterator[Recording]:
    with serve(Collector()) as collector, serve(AppServer(Handler)) as app:
        sidecar = start_recording(
            app, tmp_path_factory.mktemp("export") / "flux", pg15, test_pki, origin,
            "--otlp-endpoint", collector.url,
        )  # fmt: skip
        try:
            result = Recording(sidecar, collector)
            for order in (21, 22):
                response = send(sidecar, "GET", f"/orders/{order}")
                assert response.status_code == 200 and response.json()["doubled"] == 2 * order
                result.orders.append(response.headers["x-flux-trace-id"])
                recorded(sidecar, result.orders[-1], 4)
            response = send(sidecar, "GET", "/down")
            assert response.status_code == 502 and response.json() == {"upstream": 503}
            result.failed = response.headers["x-flux-trace-id"]
            recorded(sidecar, result.failed, 2)
        finally:
            sidecar.stop()
        yield result


def flux(*args: str, check: bool = True, **env: str) -> Any:
    return run_flux(*args, check=check, env=env)


# -- bundle: export, import elsewhere, replay there --------------------------------------

TRACE = "b0d1e0000000000000000000000000a1"
COMMENT = f"/*traceparent='00-{TRACE}-00f067aa0ba902b7-01'*/"
OWNER = "ada-Lx9-secret-owner"


def workload(dsn: str) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT id, owner, balance FROM accounts ORDER BY id {COMMENT}")
        out: list[Any] = [rows.fetchall()]
        one = conn.execute(f"SELECT owner FROM accounts WHERE id = %s {COMMENT}", (2,))
        out.append(one.fetchone())
        found = conn.execute(f"SELECT id FROM accounts WHERE owner = '{OWNER}' {COMMENT}")
        out.append(found.fetchall())
        moved = conn.execute(f"UPDATE accounts SET balance = balance - 5 WHERE id = 1 {COMMENT}")
        out.append(moved.rowcount)
        conn.commit()
    return out


def test_bundle_replays_in_a_fresh_store_without_the_upstream(
    pg_db: PgServer, tmp_path: Path
) -> None:
    with psycopg.connect(pg_db.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)")
        conn.execute(f"INSERT INTO accounts VALUES (1, '{OWNER}', 100.50), (2, 'grace', 7)")
    # The collector is down (a listener that hangs up): spans fail, recording does not.
    down = Sentinel()
    recorder = start_sidecar(
        tmp_path / "prod", pg_db, "--otlp-endpoint", f"http://127.0.0.1:{down.port}"
    )
    try:
        first = workload(recorder.dsn())
        recorder.wait_for(lambda s: s.get("executions", 0) >= 1 and s.get("events", 0) >= 4)
    finally:
        recorder.stop()
        down.close()
    assert first[0][0][1] == OWNER and first[2] == [(1,)] and first[3] == 1
    stats = recorder.stats()
    assert stats.get("otlp.posts.failed", 0) >= 1 and stats.get("otlp.spans.exported", 0) == 0

    bundle = tmp_path / "incident.flux"
    summary = json.loads(
        flux("export", TRACE[:8], "--data-dir", str(recorder.data_dir), "-o", str(bundle),
             "--output", "json").stdout
    )  # fmt: skip
    assert summary["traces"] == [TRACE] and summary["format"] == "bundle"
    assert bundle.stat().st_mode & 0o777 == 0o600
    data = bundle.read_bytes()
    assert OWNER.encode() not in data  # rows and SQL literals stay sealed in the bundle
    assert summary["bytes"] == len(data)

    laptop = tmp_path / "laptop"  # another store; the same key pair (the tests' dev pair)
    seed_dev_keys(laptop)
    imported = json.loads(
        flux("import", str(bundle), "--data-dir", str(laptop), "--output", "json").stdout
    )
    assert imported["added"] == imported["events"] == summary["events"]
    again = json.loads(
        flux("import", str(bundle), "--data-dir", str(laptop), "--output", "json").stdout
    )
    assert (again["added"], again["skipped"]) == (0, summary["events"])
    events = json.loads(flux("trace", TRACE, "--data-dir", str(laptop), "-o", "json").stdout)
    opened = json.dumps(events["events"])
    assert f"owner = '{OWNER}'" in opened  # the sealed payloads open there with the key
    stats = json.loads(flux("stats", "--data-dir", str(laptop), "-o", "json").stdout)
    assert stats["events.imported"] == summary["events"] == stats["events"]

    sentinel = Sentinel()
    replayer = start_sidecar(laptop, replace(pg_db, port=sentinel.port), mode="replay")
    try:
        second = workload(replayer.dsn())
    finally:
        replayer.stop()
        sentinel.close()
    assert second == first
    assert sentinel.connections == 0


def test_damaged_or_foreign_bundles_are_refused_and_nothing_is_written(
    recording: Recording, tmp_path: Path
) -> None:
    bundle = tmp_path / "good.flux"
    flux(
        "export",
        *recording.orders,
        "--data-dir",
        str(recording.sidecar.data_dir),
        "-o",
        str(bundle),
    )
    data = bundle.read_bytes()
    existing = tmp_path / "existing"
    flux("import", str(bundle), "--data-dir", str(existing))
    before = json.loads(flux("stats", "--data-dir", str(existing), "-o", "json").stdout)
    middle = bytearray(data)
    middle[len(data) // 2] ^= 0x40
    har = tmp_path / "some.har"
    har.write_text('{"log": {"version": "1.2", "entries": []}}')
    cases = {
        "truncated": (data[: len(data) * 2 // 3], "truncated"),
        "cut short by one byte": (data[:-1], "truncated|damaged"),
        "one byte altered": (bytes(middle), "damaged"),
        "a HAR file": (har.read_bytes(), "not a flux bundle"),
        "empty": (b"", "truncated bundle: empty file"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / "bad.flux"
        path.write_bytes(content)
        fresh = tmp_path / f"fresh-{len(content)}"
        for target in (fresh, existing):
            result = flux("import", str(path), "--data-dir", str(target), check=False)
            assert result.returncode == 2, (name, result.stdout, result.stderr)
            assert any(word in result.stderr for word in expected.split("|")), (name, result.stderr)
        assert not fresh.exists(), name  # refused before a store was even created
        after = json.loads(flux("stats", "--data-dir", str(existing), "-o", "json").stdout)
        assert after == before, name


# -- HAR ---------------------------------------------------------------------------------


def _har(recording: Recording, tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "export.har"
    flux("export", *recording.traces, "--format", "har", "-o", str(out), *args)
    document: dict[str, Any] = json.loads(out.read_text())
    jsonschema.validate(document, HAR_SCHEMA)
    for entry in document["log"]["entries"]:
        timings = entry["timings"]
        spent = sum(v for k, v in timings.items() if k != "ssl" and v > 0)
        assert entry["time"] == pytest.approx(spent, abs=0.01)  # the spec's definition
    return document


def test_har_is_valid_and_shows_values_with_the_private_key(
    recording: Recording, tmp_path: Path
) -> None:
    document = _har(recording, tmp_path, "--data-dir", str(recording.sidecar.data_dir))
    entries = document["log"]["entries"]
    # Per /orders request: the inbound request and its two calls; then the failing one.
    assert len(entries) == 3 * len(recording.orders) + 2
    assert "comment" not in document["log"]  # everything opened
    trace = recording.orders[0]
    mine = [e for e in entries if e["_traceId"] == trace]
    inbound, hello, echo = sorted(mine, key=lambda e: e["startedDateTime"])
    assert inbound["_kind"] == "http.inbound" and inbound["request"]["method"] == "GET"
    assert inbound["request"]["url"].endswith("/orders/21")
    assert inbound["response"]["status"] == 200
    assert json.loads(inbound["response"]["content"]["text"])["doubled"] == 42
    assert hello["_kind"] == "http.outbound" and hello["_parentSpanId"] == inbound["_spanId"]
    assert hello["request"]["url"].endswith(f"/hello?token={TOKEN}")
    assert {"name": "token", "value": TOKEN} in hello["request"]["queryString"]
    assert {"name": "authorization", "value": BEARER} in hello["request"]["headers"]
    assert hello["response"]["content"]["mimeType"] == "application/json"
    assert hello["timings"]["wait"] >= 0 and hello["serverIPAddress"] == "127.0.0.1"
    assert echo["request"]["method"] == "POST"
    assert json.loads(echo["request"]["postData"]["text"]) == {"order": 21}
    assert echo["request"]["postData"]["mimeType"] == "application/json"
    assert json.loads(echo["response"]["content"]["text"]) == {"order": 21}
    (failed,) = [
        e
        for e in entries
        if e["_traceId"] == recording.failed and "/status/" in e["request"]["url"]
    ]
    assert failed["response"]["status"] == 503


def test_har_without_the_private_key_shows_encrypted(recording: Recording, tmp_path: Path) -> None:
    keyless = tmp_path / "no-keys"  # the store read from a directory holding no key
    keyless.mkdir()
    store = str(recording.sidecar.data_dir / "flux.db")
    document = _har(recording, tmp_path, "--store", store, "--data-dir", str(keyless))
    text = json.dumps(document)
    for secret in (TOKEN, BEARER, '"order": 21'):
        assert secret not in text
    assert "sealed" in document["log"]["comment"]
    hello = next(e for e in document["log"]["entries"] if "/hello" in e["request"]["url"])
    assert {"name": "authorization", "value": "[encrypted]"} in hello["request"]["headers"]
    assert hello["response"]["content"]["text"] == "[encrypted]"
    assert hello["request"]["queryString"] == []


# -- OTLP --------------------------------------------------------------------------------


def _check_spans(recording: Recording, spans: list[Span], trace: str) -> None:
    """The spans of ``trace`` are the recording's events, one for one, with their ids, times,
    kinds and the semantic conventions' attributes."""
    events = {s.event.span_id: s.event for s in recording.events(trace)}
    mine = {span.span_id.hex(): span for span in spans if span.trace_id.hex() == trace}
    assert set(mine) == set(events)
    for span_id, span in mine.items():
        event = events[span_id]
        attrs = attributes(span)
        assert (span.start_time_unix_nano, span.end_time_unix_nano) == (
            event.start_ns, event.start_ns + event.duration_ns
        )  # fmt: skip
        assert span.parent_span_id.hex() == (event.parent_span_id or "")
        assert attrs["flux.event.kind"] == event.kind
        if event.kind == "pg.query":
            assert span.kind == Span.SPAN_KIND_CLIENT and span.name == "SELECT"
            assert attrs["db.system"] == "postgresql"
            assert attrs["db.query.text"] == event.attrs["statements"][0]["normalized"]
            assert LITERAL not in attrs["db.query.text"]  # the fingerprint, not the literals
            assert attrs["db.namespace"] == recording.sidecar.upstream.dbname  # type: ignore[union-attr]
        elif event.kind == "http.inbound":
            assert span.kind == Span.SPAN_KIND_SERVER
            assert attrs["http.request.method"] == "GET"
            assert attrs["url.full"].endswith(event.attrs["path"])
            assert attrs["http.response.status_code"] == event.attrs["status"]
        elif event.kind == "http.outbound":
            assert span.kind == Span.SPAN_KIND_CLIENT
            assert attrs["url.full"] == (
                f"https://127.0.0.1:{event.attrs['port']}{event.attrs['path']}"
            )  # no query string: it is sealed
            assert attrs["http.response.status_code"] == event.attrs["status"]
        status = event.attrs.get("status") or 0
        # The conventions: a 4xx fails a client span, only a 5xx fails a server span.
        failed = status >= (500 if event.kind == "http.inbound" else 400)
        expected = Status.STATUS_CODE_ERROR if failed else Status.STATUS_CODE_UNSET
        assert span.status.code == expected, (event.kind, event.attrs.get("status"))


def test_otlp_export_parses_with_the_protobuf_definitions(
    recording: Recording, tmp_path: Path
) -> None:
    out = tmp_path / "spans.json"
    flux("export", *recording.traces, "--format", "otlp", "-o", str(out),
         "--data-dir", str(recording.sidecar.data_dir), OTEL_SERVICE_NAME="shop")  # fmt: skip
    request = parse_otlp_json(out.read_bytes())
    (resource,) = request.resource_spans
    assert {kv.key: kv.value.string_value for kv in resource.resource.attributes} == {
        "service.name": "shop"
    }
    spans = [span for scope in resource.scope_spans for span in scope.spans]
    for trace in recording.traces:
        _check_spans(recording, spans, trace)
    assert len(spans) == sum(len(recording.events(t)) for t in recording.traces)
    text = out.read_text()
    assert TOKEN not in text and BEARER not in text and LITERAL not in text


def test_spans_stream_live_to_a_collector(recording: Recording) -> None:
    collector = recording.collector
    assert collector.errors == []
    spans = collector.spans()
    for trace in recording.traces:
        _check_spans(recording, spans, trace)
    stats = recording.sidecar.stats()
    assert stats["otlp.spans.exported"] == len(spans)
    assert stats.get("otlp.posts.failed", 0) == 0


def test_a_time_window_export_shows_progress(recording: Recording, tmp_path: Path) -> None:
    out = tmp_path / "window.flux"
    # A terminal for rich (the bar is drawn only there); the bar is transient.
    result = flux("export", "--since", "1h", "--data-dir", str(recording.sidecar.data_dir),
                  "-o", str(out), TTY_COMPATIBLE="1", TTY_INTERACTIVE="1", COLUMNS="120")  # fmt: skip
    assert "exporting bundle" in result.stderr
    assert f"exported {len(recording.traces)} execution(s)" in result.stderr
    listed = json.loads(
        flux("import", str(out), "--data-dir", str(tmp_path / "copy"), "--output", "json").stdout
    )
    assert sorted(listed["traces"]) == sorted(recording.traces)
    empty = flux("export", "--since", "1h", "--until", "59m", "--data-dir",
                 str(recording.sidecar.data_dir), "-o", str(out), check=False)  # fmt: skip
    assert empty.returncode == 1 and "no executions" in empty.stderr
