"""HTTP replay: calls recorded through the forward proxy are answered from the store, with
the origin stopped and a sentinel listening on its ports that counts every connection.

One recording serves the module: a recording sidecar in front of a real HTTPS (and plain
HTTP) origin and a small app behind the inbound proxy; then the origin is stopped, sentinels
take its two ports, and a sidecar in replay mode opens the same data directory. Each test
replays calls of its own (its own trace or query), so consumption in one does not decide
another's answers.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from protocols.traceparent import parse_traceparent
from tests.fix_admin import metrics
from tests.fix_app import AppHandler, AppServer, closed_port, serve, start_recording
from tests.fix_http import Origin, Pki, export_ca, no_proxy_env, recorded, traceparent
from tests.fix_sentinel import Sentinel
from tests.fix_sidecar import SidecarProcess, start_sidecar

TOKEN = "replay-test-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
SINCE = "2024-05-01T10:00:00Z"
ORDER_ID = "0b9e6c1c-3f7e-4a57-9d3c-2a1f6f3e9b10"
THAT_MATTER = ("content-type", "content-length", "set-cookie")
REFUSED_CONNECTS = "flux_http_replay_connects_refused_total"


class Handler(AppHandler):
    """``/call``: one HTTPS call to the origin's ``/next?via=app`` with no traceparent, as an
    uninstrumented app makes it; answers what it received and what the call returned."""

    def do_GET(self) -> None:
        with self.server.session() as session:
            remote = session.get(f"{self.server.origin}/next?via=app", timeout=30)
        got = self.headers.get("traceparent")
        self.reply(200, {"traceparent": got, "status": remote.status_code, "remote": remote.text})


@dataclass
class Recording:
    origin: Origin
    app: AppServer
    ca: Path
    replay: SidecarProcess
    sentinels: list[Sentinel]
    traces: dict[str, str] = field(default_factory=dict)  # name -> trace id
    answers: dict[str, Any] = field(default_factory=dict)  # what the clients got at record time


def requests_session(proxy: str, ca: Path) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # the machine's own proxy and CA settings are not under test
    s.proxies = {"http": proxy, "https": proxy}
    s.verify = str(ca)
    return s


def httpx_calls(proxy: str, ca: Path, origin: Origin, tp: str) -> list[httpx.Response]:
    context = ssl.create_default_context(cafile=str(ca))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            proxy=proxy, verify=context, http2=True, trust_env=False, timeout=30
        ) as client:
            hello = await client.get(origin.url("/hello?client=httpx"), headers={"traceparent": tp})
            echo = await client.post(
                origin.url("/echo"), content=b"httpx body", headers={"traceparent": tp}
            )
            return [hello, echo]

    return asyncio.run(run())


def curl(proxy: str, ca: Path, url: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--include", "--proxy", proxy, "--cacert", str(ca), *extra, url],
        capture_output=True, timeout=60, env=no_proxy_env(),
    )  # fmt: skip


def record(rec: Recording, proxy: str, inbound: str) -> int:
    """Every call the tests replay; returns how many events they make."""
    origin, ca = rec.origin, rec.ca
    for name in ("requests", "httpx", "exhaust", "changed", "volatile", "failed"):
        rec.traces[name] = traceparent()[0]
    with requests_session(proxy, ca) as s:
        tp = {"traceparent": f"00-{rec.traces['requests']}-{'1' * 16}-01"}
        rec.answers["next"] = [s.get(origin.url("/next"), headers=tp) for _ in range(3)]
        rec.answers["post"] = s.post(origin.url("/echo"), json={"amount": 10}, headers=tp)
        rec.answers["chunked"] = s.get(origin.url("/bytes?n=200000"), headers=tp)
        tp = {"traceparent": f"00-{rec.traces['exhaust']}-{'1' * 16}-01"}
        rec.answers["exhaust"] = s.get(origin.url("/status/201"), headers=tp)
        tp = {"traceparent": f"00-{rec.traces['changed']}-{'1' * 16}-01"}
        s.post(origin.url("/echo"), json={"amount": 10, "currency": "eur"}, headers=tp)
        tp = {"traceparent": f"00-{rec.traces['volatile']}-{'1' * 16}-01"}
        rec.answers["since"] = s.get(origin.url(f"/hello?since={SINCE}&page=1"), headers=tp)
        rec.answers["order"] = s.post(
            origin.url("/echo"), json={"order": ORDER_ID, "amount": 5}, headers=tp
        )
        tp = {"traceparent": f"00-{rec.traces['failed']}-{'1' * 16}-01"}
        rec.answers["failed"] = s.get(f"http://127.0.0.1:{closed_port()}/down", headers=tp)
    tp_httpx = f"00-{rec.traces['httpx']}-{'1' * 16}-01"
    rec.answers["httpx"] = httpx_calls(proxy, ca, origin, tp_httpx)
    rec.answers["curl"] = curl(proxy, ca, origin.url("/hello?client=curl")).stdout
    rec.answers["curl-plain"] = curl(proxy, ca, origin.url("/hello?client=plain", tls=False)).stdout
    for name in ("app-1", "app-2"):
        rec.traces[name] = trace = traceparent()[0]
        tp = {"traceparent": f"00-{trace}-{'2' * 16}-01"}
        rec.answers[name] = requests.get(f"{inbound}/call", headers=tp, timeout=60).json()
    assert [r.status_code for r in rec.answers["next"]] == [200] * 3
    assert rec.answers["chunked"].headers["transfer-encoding"] == "chunked"
    assert rec.answers["failed"].status_code == 502
    assert rec.answers["app-1"]["status"] == rec.answers["app-2"]["status"] == 200
    return 10 + 2 + 2 + 2 * 2


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, test_pki: Pki) -> Iterator[Recording]:
    data_dir = tmp_path_factory.mktemp("http-replay") / "flux"
    origin = Origin(test_pki)
    origin.start()
    started: list[SidecarProcess] = []
    sentinels: list[Sentinel] = []
    try:
        with serve(AppServer(Handler)) as app:
            recorder = start_recording(app, data_dir, None, test_pki, origin)
            started.append(recorder)
            ca = Path(app.ca)
            rec = Recording(origin=origin, app=app, ca=ca, replay=recorder, sentinels=sentinels)
            events = record(rec, recorder.url("http"), recorder.url("inbound"))
            recorder.wait_for_events(events, timeout=60)
            recorder.stop()
            origin.stop()
            sentinels += [Sentinel(origin.https_port), Sentinel(origin.http_port)]
            rec.replay = start_sidecar(
                data_dir, None, "--no-intercept", "localhost",
                mode="replay", env={"FLUX_ADMIN_TOKEN": TOKEN},
                expect=("http", "inbound"), app_url=app.url,
            )  # fmt: skip
            started.append(rec.replay)
            app.proxy = rec.replay.url("http")
            yield rec
    finally:
        for sidecar in started:
            sidecar.stop()
        origin.stop()
        for sentinel in sentinels:
            sentinel.close()


@pytest.fixture(autouse=True)
def nothing_reaches_the_origin(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test of the shared recording (the switch tests check their own)."""
    if "recording" not in request.fixturenames:
        yield
        return
    recording: Recording = request.getfixturevalue("recording")
    yield
    assert [s.connections for s in recording.sentinels] == [0, 0]
    # Nor was a connection attempted anywhere (the proxy's last-resort refusal counts them).
    assert metrics(recording.replay.admin_url).get(REFUSED_CONNECTS, 0) == 0


@pytest.fixture
def session(recording: Recording) -> Iterator[requests.Session]:
    with requests_session(recording.replay.url("http"), recording.ca) as s:
        yield s


def headers_that_matter(response: requests.Response | httpx.Response) -> dict[str, str]:
    return {k: response.headers[k] for k in THAT_MATTER if k in response.headers}


def tp(recording: Recording, name: str) -> dict[str, str]:
    return {"traceparent": f"00-{recording.traces[name]}-{'3' * 16}-01"}


def report(recording: Recording) -> dict[str, Any]:
    response = httpx.get(recording.replay.admin_url + "/replay", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def switch(sidecar: SidecarProcess, mode: str) -> None:
    """The running sidecar to ``mode``, through the admin API."""
    switched = httpx.post(
        sidecar.admin_url + "/mode", json={"mode": mode}, headers=ADMIN, timeout=30
    )
    assert switched.status_code == 200 and switched.json()["mode"] == mode


def test_requests_calls_are_answered_as_recorded_and_repeats_in_order(
    recording: Recording, session: requests.Session
) -> None:
    headers = tp(recording, "requests")
    replayed = [session.get(recording.origin.url("/next"), headers=headers) for _ in range(3)]
    recorded = recording.answers["next"]
    assert [r.json()["n"] for r in replayed] == [r.json()["n"] for r in recorded]
    assert len({r.json()["n"] for r in replayed}) == 3  # three different answers, in order
    for new, old in zip(replayed, recorded, strict=True):
        assert (new.status_code, new.reason, new.content) == (
            old.status_code,
            old.reason,
            old.content,
        )
        # set-cookie was sealed at rest: the sidecar's private key opened it.
        assert headers_that_matter(new) == headers_that_matter(old)
        assert "set-cookie" in headers_that_matter(new)
        assert "x-flux-replay" not in new.headers
    post = session.post(recording.origin.url("/echo"), json={"amount": 10}, headers=headers)
    old = recording.answers["post"]
    assert (post.status_code, post.content) == (old.status_code, old.content)
    assert headers_that_matter(post) == headers_that_matter(old)


def test_a_chunked_recording_is_answered_whole_with_its_length(
    recording: Recording, session: requests.Session
) -> None:
    headers = tp(recording, "requests")
    replayed = session.get(recording.origin.url("/bytes?n=200000"), headers=headers)
    assert replayed.status_code == 200 and replayed.content == recording.answers["chunked"].content
    assert "transfer-encoding" not in replayed.headers
    assert replayed.headers["content-length"] == "200000"


def test_a_recorded_failure_is_answered_as_that_failure(
    recording: Recording, session: requests.Session
) -> None:
    url = recording.answers["failed"].url
    replayed = session.get(url, headers=tp(recording, "failed"))
    assert replayed.status_code == 502 and replayed.headers["x-flux-replay"] == "error"
    assert "the recorded call failed" in replayed.text and "refused" in replayed.text


def test_httpx_over_http2_is_answered_as_recorded(recording: Recording) -> None:
    value = tp(recording, "httpx")["traceparent"]
    replayed = httpx_calls(recording.replay.url("http"), recording.ca, recording.origin, value)
    for new, old in zip(replayed, recording.answers["httpx"], strict=True):
        assert new.http_version == "HTTP/2"
        assert (new.status_code, new.content) == (old.status_code, old.content)
        assert headers_that_matter(new) == headers_that_matter(old)
    assert replayed[1].content == b"httpx body"


def _status_and_body(raw: bytes) -> tuple[bytes, bytes]:
    """The status line and body of ``curl --include`` output (after any CONNECT's reply)."""
    head, _, body = raw.rpartition(b"\r\n\r\n")
    return head.rsplit(b"\r\n\r\n", 1)[-1].split(b"\r\n", 1)[0], body


def test_curl_https_and_plain_http_are_answered_as_recorded(recording: Recording) -> None:
    proxy, ca, origin = recording.replay.url("http"), recording.ca, recording.origin
    for url, name in (
        (origin.url("/hello?client=curl"), "curl"),
        (origin.url("/hello?client=plain", tls=False), "curl-plain"),
    ):
        result = curl(proxy, ca, url)
        assert result.returncode == 0, result.stderr
        status, body = _status_and_body(result.stdout)
        assert (status, body) == _status_and_body(recording.answers[name])
        assert status.split()[1] == b"200" and json.loads(body)["path"] == "/hello"


def test_a_repeat_beyond_the_recorded_ones_is_a_miss(
    recording: Recording, session: requests.Session
) -> None:
    headers = tp(recording, "exhaust")
    first = session.get(recording.origin.url("/status/201"), headers=headers)
    assert first.status_code == recording.answers["exhaust"].status_code == 201
    again = session.get(recording.origin.url("/status/201"), headers=headers)
    assert again.status_code == 502 and again.headers["x-flux-replay"] == "miss"
    assert "was recorded once and every recording was already used" in again.text


def test_a_changed_call_is_a_502_naming_the_closest_recording(
    recording: Recording, session: requests.Session
) -> None:
    origin, headers = recording.origin, tp(recording, "changed")
    https = f"https://127.0.0.1:{origin.https_port}"
    body = session.post(
        origin.url("/echo"), json={"amount": 12, "currency": "eur"}, headers=headers
    )
    assert body.status_code == 502 and body.headers["x-flux-replay"] == "miss"
    assert body.headers["content-type"].startswith("text/plain")
    assert f"no recorded answer for POST {https}/echo in trace {recording.traces['changed']}" in (
        body.text
    )
    assert "another request body (body $.amount: recorded 10, now 12)" in body.text
    path = session.get(origin.url("/hellp"), headers=headers)
    assert path.status_code == 502 and path.headers["x-flux-replay"] == "miss"
    assert path.text.strip().endswith(f"the closest recorded call is GET {https}/hello")
    misses = [m for m in report(recording)["misses"] if m["trace"] == recording.traces["changed"]]
    assert [(m["request"], m["closest"]) for m in misses] == [
        (f"POST {https}/echo", f"POST {https}/echo"),
        (f"GET {https}/hellp", f"GET {https}/hello"),
    ]
    # The sealed recording is matched without being changed: the right body still answers.
    right = session.post(
        origin.url("/echo"), json={"amount": 10, "currency": "eur"}, headers=headers
    )
    assert right.status_code == 200 and right.json() == {"amount": 10, "currency": "eur"}


def test_volatile_values_match_and_the_report_says_what_differed(
    recording: Recording, session: requests.Session
) -> None:
    origin, headers = recording.origin, tp(recording, "volatile")
    now = "2026-11-21T08:30:12Z"
    hello = session.get(origin.url(f"/hello?since={now}&page=1"), headers=headers)
    assert hello.status_code == 200
    assert hello.content == recording.answers["since"].content  # the recorded answer
    assert hello.json()["query"] == f"since={SINCE}&page=1"
    new_id = str(uuid.uuid4())
    order = session.post(origin.url("/echo"), json={"order": new_id, "amount": 5}, headers=headers)
    assert order.status_code == 200 and order.json()["order"] == ORDER_ID
    volatile = [
        v for v in report(recording)["volatile"] if v["trace"] == recording.traces["volatile"]
    ]
    https = f"https://127.0.0.1:{origin.https_port}"
    assert [(v["kind"], v["request"], v["differences"]) for v in volatile] == [
        ("http.outbound", f"GET {https}/hello", [["query since", SINCE, now]]),
        ("http.outbound", f"POST {https}/echo", [["body $.order", ORDER_ID, new_id]]),
    ]


def test_the_inbound_request_carries_its_trace_to_the_apps_uninstrumented_call(
    recording: Recording,
) -> None:
    """In replay the inbound proxy still forwards to the app (the code under test), keeps
    the caller's trace id and registers the request in flight: the app's call without a
    traceparent is answered from that trace's recordings, whichever order they come in."""
    inbound = recording.replay.url("inbound")
    for name in ("app-2", "app-1"):  # the reverse of the recorded order
        trace = recording.traces[name]
        response = requests.get(
            f"{inbound}/call", headers={"traceparent": f"00-{trace}-{'4' * 16}-01"}, timeout=60
        )
        assert response.status_code == 200 and response.headers["x-flux-trace-id"] == trace
        seen = response.json()
        injected = parse_traceparent(seen["traceparent"])
        assert injected is not None and injected.trace_id == trace
        assert injected.parent_id != "4" * 16  # the inbound span, as in record mode
        assert seen["status"] == 200 and seen["remote"] == recording.answers[name]["remote"]
    assert recording.answers["app-1"]["remote"] != recording.answers["app-2"]["remote"]
    # Replay records nothing: no event was handed to the recorder.
    assert metrics(recording.replay.admin_url)["flux_events_submitted_total"] == 0


def test_no_intercept_tunnels_and_websockets_are_refused(recording: Recording) -> None:
    proxy, origin = recording.replay.url("http"), recording.origin
    tunnel = curl(proxy, recording.ca, f"https://localhost:{origin.https_port}/hello")
    assert tunnel.returncode != 0
    assert b"502" in tunnel.stdout + tunnel.stderr
    context = ssl.create_default_context(cafile=str(recording.ca))
    url = origin.url("/ws").replace("https://", "wss://")
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(url, proxy=proxy, ssl=context, open_timeout=30)
    assert refused.value.response.status_code == 502
    assert refused.value.response.headers["x-flux-replay"] == "refused"


def test_switching_a_running_sidecar_to_replay_answers_the_next_call_from_recordings(
    tmp_path: Path, test_pki: Pki
) -> None:
    origin = Origin(test_pki)
    origin.start()
    sentinel: Sentinel | None = None
    sidecar = start_sidecar(
        tmp_path / "flux", None, "--upstream-ca", str(test_pki.ca_path),
        env={"FLUX_ADMIN_TOKEN": TOKEN}, expect=("http",),
    )  # fmt: skip
    try:
        headers = {"traceparent": traceparent()[2]}
        with requests_session(sidecar.url("http"), export_ca(sidecar)) as s:
            recorded = s.get(origin.url("/next"), headers=headers)
            assert recorded.status_code == 200
            sidecar.wait_for_events(1)
            origin.stop()
            sentinel = Sentinel(origin.https_port)
            switch(sidecar, "replay")
            # The same client, on the connection it opened in record mode.
            replayed = s.get(origin.url("/next"), headers=headers)
            assert (replayed.status_code, replayed.content) == (200, recorded.content)
            assert replayed.headers["set-cookie"] == recorded.headers["set-cookie"]
            missed = s.get(origin.url("/next"), headers=headers)
            assert missed.status_code == 502 and missed.headers["x-flux-replay"] == "miss"
        assert sentinel.connections == 0
        assert metrics(sidecar.admin_url).get(REFUSED_CONNECTS, 0) == 0
    finally:
        sidecar.stop()
        origin.stop()
        if sentinel is not None:
            sentinel.close()


def test_switching_back_to_record_reaches_the_origin_on_the_same_connection(
    tmp_path: Path, test_pki: Pki, origin: Origin
) -> None:
    """A client connection opened in replay mode has no upstream behind it; after a switch
    to record its next call is forwarded (connected then) and recorded."""
    sidecar = start_sidecar(
        tmp_path / "flux", None, "--upstream-ca", str(test_pki.ca_path),
        mode="replay", env={"FLUX_ADMIN_TOKEN": TOKEN}, expect=("http",),
    )  # fmt: skip
    try:
        trace, _, value = traceparent()
        with requests_session(sidecar.url("http"), export_ca(sidecar)) as s:
            missed = s.get(origin.url("/hello"), headers={"traceparent": value})
            assert missed.status_code == 502 and missed.headers["x-flux-replay"] == "miss"
            switch(sidecar, "record")
            live = s.get(origin.url("/hello"), headers={"traceparent": value})
            assert live.status_code == 200 and live.json()["traceparent"] == value
        (event,) = recorded(sidecar, trace, 1)
        assert (event["kind"], event["attrs"]["status"]) == ("http.outbound", 200)
    finally:
        sidecar.stop()
