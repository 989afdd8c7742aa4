"""Real clients through the forward proxy, trusting the exported CA, against a real HTTPS origin.

One sidecar serves the module; each test tags its requests with a trace of its own
(a ``traceparent`` header) and reads back what was recorded with ``flux trace``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from cryptography import x509
from websockets.sync.client import connect as ws_connect

from tests.fix_http import Origin, Pki, export_ca, no_proxy_env, recorded, traceparent
from tests.fix_sidecar import SidecarProcess, start_sidecar

BODY_CAP = 64 << 10


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory, test_pki: Pki) -> Iterator[SidecarProcess]:
    process = start_sidecar(
        tmp_path_factory.mktemp("http-clients") / "flux",
        None,
        "--upstream-ca", str(test_pki.ca_path),
        "--body-cap", str(BODY_CAP),
        expect=("http",),
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture(scope="module")
def flux_ca(sidecar: SidecarProcess) -> Path:
    return export_ca(sidecar)


@pytest.fixture
def session(sidecar: SidecarProcess, flux_ca: Path) -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False  # the machine's own proxy and CA settings are not under test
    s.proxies = {"http": sidecar.url("http"), "https": sidecar.url("http")}
    s.verify = str(flux_ca)
    yield s
    s.close()


def only(events: list[dict[str, Any]], kind: str = "http.outbound") -> dict[str, Any]:
    matching = [e for e in events if e["kind"] == kind]
    assert len(matching) == 1, events
    return matching[0]


def header(event: dict[str, Any], side: str, name: str) -> list[Any]:
    return [v for k, v in event["attrs"][f"{side}_headers"] if k.lower() == name]


def test_exported_ca_is_a_ca_and_its_key_is_private(sidecar: SidecarProcess, flux_ca: Path) -> None:
    cert = x509.load_pem_x509_certificate(flux_ca.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "flux-proxy" in cert.subject.rfc4514_string()
    key = sidecar.data_dir / "ca" / "mitmproxy-ca.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert sidecar.flux("ca", "export").stdout == flux_ca.read_text()  # stable across calls


def test_requests_https_call_is_recorded_with_secrets_in_the_payload(
    sidecar: SidecarProcess, session: requests.Session, origin: Origin
) -> None:
    trace, span, tp = traceparent()
    response = session.get(
        origin.url("/hello?token=s3cret"),
        headers={"traceparent": tp, "Authorization": "Bearer abc", "X-Plain": "visible"},
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen["traceparent"] == tp and seen["query"] == "token=s3cret"

    event = only(recorded(sidecar, trace, 1))
    attrs = event["attrs"]
    assert event["parent_span_id"] == span and attrs["trace_source"] == "header"
    assert (attrs["method"], attrs["scheme"], attrs["host"]) == ("GET", "https", "127.0.0.1")
    assert (attrs["port"], attrs["path"], attrs["status"]) == (origin.https_port, "/hello", 200)
    assert event["fingerprint"] == f"GET https://127.0.0.1:{origin.https_port}/hello"
    # Credentials and the query string are payload; ordinary headers stay plaintext.
    assert header(event, "request", "authorization") == [None]
    assert header(event, "request", "x-plain") == ["visible"]
    assert "s3cret" not in json.dumps(attrs)
    assert event["payload"]["query"] == "token=s3cret"
    assert event["payload"]["request_secrets"] == ["Bearer abc"]
    assert json.loads(bytes.fromhex(event["payload"]["response_body"]["hex"])) == seen
    assert attrs["response_body_size"] == len(response.content)
    for timing in ("connect_ns", "tls_ns", "first_byte_ns"):
        assert isinstance(attrs[timing], int), timing
    assert event["duration_ms"] > 0 and event["error"] is False


def test_httpx_sync_and_async_over_http2(
    sidecar: SidecarProcess, flux_ca: Path, origin: Origin
) -> None:
    trace, _, tp = traceparent()
    context = ssl.create_default_context(cafile=str(flux_ca))
    with httpx.Client(
        proxy=sidecar.url("http"), verify=context, http2=True, trust_env=False
    ) as client:
        response = client.get(origin.url("/hello"), headers={"traceparent": tp})
        assert response.http_version == "HTTP/2" and response.json()["http_version"] == "2"

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            proxy=sidecar.url("http"), verify=context, http2=True, trust_env=False
        ) as client:
            calls = [
                client.post(
                    origin.url("/echo"), content=f"body {i}".encode(), headers={"traceparent": tp}
                )
                for i in range(3)
            ]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(run())
    assert sorted(r.content for r in responses) == [b"body 0", b"body 1", b"body 2"]
    assert {r.http_version for r in responses} == {"HTTP/2"}

    events = recorded(sidecar, trace, 4)
    assert {e["attrs"]["http_version"] for e in events} == {"HTTP/2.0"}
    posts = [e for e in events if e["attrs"]["method"] == "POST"]
    bodies = sorted(bytes.fromhex(e["payload"]["request_body"]["hex"]) for e in posts)
    assert bodies == [b"body 0", b"body 1", b"body 2"]


def test_urllib_configured_by_environment_variables(
    sidecar: SidecarProcess, flux_ca: Path, origin: Origin
) -> None:
    trace, _, tp = traceparent()
    script = (
        "import sys, urllib.request\n"
        "request = urllib.request.Request(sys.argv[1], headers={'traceparent': sys.argv[2]})\n"
        "print(urllib.request.urlopen(request, timeout=30).read().decode())\n"
    )
    env = no_proxy_env(HTTPS_PROXY=sidecar.url("http"), SSL_CERT_FILE=str(flux_ca))
    env.pop("SSL_CERT_DIR", None)  # only the flux CA: proves the certificate came from it
    result = subprocess.run(
        [sys.executable, "-c", script, origin.url("/hello"), tp],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["traceparent"] == tp
    assert only(recorded(sidecar, trace, 1))["attrs"]["status"] == 200


def test_curl_chunked_upload_and_plain_http(
    sidecar: SidecarProcess, flux_ca: Path, origin: Origin, tmp_path: Path
) -> None:
    trace, _, tp = traceparent()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"0123456789" * 20_000)  # 200 kB: more than the body cap
    result = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--fail", "--http1.1",
            "--proxy", sidecar.url("http"), "--cacert", str(flux_ca),
            "-H", f"traceparent: {tp}", "-H", "Transfer-Encoding: chunked",
            "--data-binary", f"@{upload}", origin.url("/echo"),
        ],
        capture_output=True, timeout=60, env=no_proxy_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == upload.read_bytes()
    plain = subprocess.run(
        ["curl", "-sS", "--fail", "--proxy", sidecar.url("http"), "-H", f"traceparent: {tp}",
         origin.url("/hello", tls=False)],
        capture_output=True, timeout=60, env=no_proxy_env(),
    )  # fmt: skip
    assert plain.returncode == 0 and json.loads(plain.stdout)["path"] == "/hello"

    events = recorded(sidecar, trace, 2)
    upload_event = next(e for e in events if e["attrs"]["method"] == "POST")
    attrs = upload_event["attrs"]
    assert attrs["request_body_size"] == 200_000 and attrs["request_body_truncated"] is True
    kept = bytes.fromhex(upload_event["payload"]["request_body"]["hex"])
    assert kept == upload.read_bytes()[:BODY_CAP]
    assert header(upload_event, "request", "transfer-encoding") == ["chunked"]
    plain_event = next(e for e in events if e["attrs"]["method"] == "GET")
    assert plain_event["attrs"]["scheme"] == "http"
    assert plain_event["attrs"]["port"] == origin.http_port


def test_streamed_response_is_forwarded_before_it_ends(
    sidecar: SidecarProcess, session: requests.Session, origin: Origin
) -> None:
    # The origin holds its last chunk until the client has read the first: a proxy that
    # buffered the response whole would never deliver that first chunk, and the origin
    # would give up after 20 s and answer "timed out" instead.
    trace, _, tp = traceparent()
    origin.gate.clear()
    with session.get(origin.url("/gated"), headers={"traceparent": tp}, stream=True) as response:
        lines = response.iter_lines()
        assert next(lines) == b"first"
        origin.gate.set()
        assert list(lines) == [b"released"]
    attrs = only(recorded(sidecar, trace, 1))["attrs"]
    assert attrs["streamed"] is True and attrs["response_body_size"] == len(b"first\nreleased\n")


def test_websocket_passes_through_and_frames_are_recorded(
    sidecar: SidecarProcess, flux_ca: Path, origin: Origin
) -> None:
    trace, _, tp = traceparent()
    context = ssl.create_default_context(cafile=str(flux_ca))
    url = origin.url("/ws").replace("https://", "wss://")
    with ws_connect(
        url, proxy=sidecar.url("http"), ssl=context, additional_headers={"traceparent": tp}
    ) as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
        ws.send(b"\x00\x01\x02")
        assert ws.recv() == b"\x00\x01\x02"
    event = only(recorded(sidecar, trace, 1))
    attrs = event["attrs"]
    assert attrs["status"] == 101 and attrs["websocket_frames"] == 4
    assert attrs["websocket_close"] == 1000
    frames = event["payload"]["websocket"]
    assert [(f[0], f[2]) for f in frames] == [
        (True, True),
        (False, True),
        (True, False),
        (False, False),
    ]
    assert frames[0][3] == {"hex": b"hello".hex()}
