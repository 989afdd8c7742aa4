"""What clients see, and what is recorded, when things go wrong; tunnels; bounded memory."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from flux_proxy.http.hosts import HostMatcher
from recorder.model import HTTP_INBOUND, HTTP_OUTBOUND, Event
from tests.fix_http import Origin, Pki, export_ca, no_proxy_env, recorded, stored, traceparent
from tests.fix_sidecar import SidecarProcess, run_flux, start_sidecar


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


DEAD_APP_PORT = closed_port()


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory, test_pki: Pki) -> Iterator[SidecarProcess]:
    process = start_sidecar(
        tmp_path_factory.mktemp("http-failures") / "flux",
        None,
        "--upstream-ca", str(test_pki.ca_path),
        "--no-intercept", "localhost,.example.invalid",
        expect=("http", "inbound"),
        app_url=f"http://127.0.0.1:{DEAD_APP_PORT}",
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture(scope="module")
def flux_ca(sidecar: SidecarProcess) -> Path:
    return export_ca(sidecar)


@pytest.fixture
def session(sidecar: SidecarProcess, flux_ca: Path) -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"http": sidecar.url("http"), "https": sidecar.url("http")}
    s.verify = str(flux_ca)
    yield s
    s.close()


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_large_download_is_streamed_in_bounded_memory(
    sidecar: SidecarProcess, session: requests.Session, origin: Origin
) -> None:
    trace, _, tp = traceparent()
    size = 50 << 20

    def download(n: int) -> int:
        url = origin.url(f"/bytes?n={n}")
        with session.get(url, headers={"traceparent": tp}, stream=True) as response:
            assert response.status_code == 200
            return sum(len(chunk) for chunk in response.iter_content(1 << 16))

    assert download(4 << 20) == 4 << 20  # warm up: code paths, the host certificate, buffers
    peak_before = memory_kib(sidecar.proc.pid, "VmHWM")
    assert download(size) == size
    growth = memory_kib(sidecar.proc.pid, "VmHWM") - peak_before
    assert growth < 8 << 10, f"the sidecar's peak memory grew by {growth} KiB"
    big = [e for e in recorded(sidecar, trace, 2) if e["attrs"]["response_body_size"] == size]
    assert len(big) == 1 and big[0]["attrs"]["response_body_truncated"] is True
    assert big[0]["attrs"]["streamed"] is True


def test_unreachable_host_is_a_502_with_the_reason_and_a_recorded_failure(
    sidecar: SidecarProcess, session: requests.Session
) -> None:
    port = closed_port()
    trace, _, tp = traceparent()
    plain = session.get(f"http://127.0.0.1:{port}/x", headers={"traceparent": tp})
    assert plain.status_code == 502 and "Connection refused" in plain.text
    event = recorded(sidecar, trace, 1)[0]
    assert event["error"] is True and event["attrs"]["error_kind"] == "connection_refused"
    assert event["attrs"]["status"] == 502

    # HTTPS: the CONNECT itself is refused, with the reason in the body.
    result = subprocess.run(
        ["curl", "-sS", "-v", "--proxy", sidecar.url("http"), f"https://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=60, env=no_proxy_env(),
    )  # fmt: skip
    assert result.returncode != 0
    assert "502" in result.stderr
    failed = stored(
        sidecar,
        lambda e: (
            e.kind == HTTP_OUTBOUND
            and e.attrs.get("method") == "CONNECT"
            and e.attrs.get("port") == port
        ),
    )
    assert failed.error and failed.attrs["error_kind"] == "connection_refused"


def test_upstream_tls_failure_is_a_502_naming_the_certificate_problem(
    sidecar: SidecarProcess, session: requests.Session, untrusted_origin: Origin
) -> None:
    trace, _, tp = traceparent()
    response = session.get(untrusted_origin.url("/hello"), headers={"traceparent": tp})
    assert response.status_code == 502
    assert "certificate verify failed" in response.text.lower()
    event = recorded(sidecar, trace, 1)[0]
    assert event["error"] is True and event["attrs"]["error_kind"] == "tls"


def test_client_that_does_not_trust_the_ca_gets_a_tls_error(
    sidecar: SidecarProcess, origin: Origin
) -> None:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": sidecar.url("http")}
    with pytest.raises(requests.exceptions.SSLError):
        s.get(origin.url("/hello"), verify=True, timeout=30)  # the system store only
    curl = subprocess.run(
        ["curl", "-sS", "--proxy", sidecar.url("http"), origin.url("/hello")],
        capture_output=True, text=True, timeout=60, env=no_proxy_env(),
    )  # fmt: skip
    assert curl.returncode == 60, curl.stderr  # "peer certificate cannot be authenticated"
    failure = stored(
        sidecar,
        lambda e: (
            e.kind == HTTP_OUTBOUND and "client TLS handshake failed" in e.attrs.get("error", "")
        ),
    )
    assert failure.attrs["port"] == origin.https_port


def test_no_intercept_host_is_tunnelled_and_recorded_as_a_tunnel(
    sidecar: SidecarProcess, origin: Origin, test_pki: Pki
) -> None:
    # Verified against the origin's own CA: only an untouched tunnel gets that certificate.
    # curl, because its exit closes the tunnel, and a tunnel is recorded when it closes.
    url = f"https://localhost:{origin.https_port}/hello"
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--proxy", sidecar.url("http"),
         "--cacert", str(test_pki.ca_path), url],
        capture_output=True, text=True, timeout=60, env=no_proxy_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["path"] == "/hello"

    def is_tunnel(e: Event) -> bool:
        return e.kind == HTTP_OUTBOUND and e.attrs.get("tunnel") is True

    tunnel = stored(sidecar, is_tunnel)
    assert (tunnel.attrs["host"], tunnel.attrs["port"]) == ("localhost", origin.https_port)
    assert tunnel.attrs["bytes_up"] > 0 and tunnel.attrs["bytes_down"] > len(result.stdout)
    assert tunnel.duration_ns > 0 and not tunnel.error


def test_app_down_inbound_request_is_a_502_and_a_failed_execution(
    sidecar: SidecarProcess,
) -> None:
    trace, span, tp = traceparent()
    response = requests.get(sidecar.url("inbound") + "/orders/1", headers={"traceparent": tp})
    assert response.status_code == 502
    (event,) = recorded(sidecar, trace, 1)
    assert event["kind"] == HTTP_INBOUND and event["error"] is True
    assert event["parent_span_id"] == span
    assert event["attrs"]["error_kind"] == "connection_refused"
    listed = [t for t in sidecar.flux_json("traces") if t["trace_id"] == trace]
    assert listed and listed[0]["errors"] == 1 and listed[0]["path"] == "/orders/1"


@pytest.mark.parametrize(
    ("entries", "host", "port", "expected"),
    [
        (["example.com"], "example.com", 443, True),
        (["example.com"], "api.example.com", 443, True),
        (["example.com"], "notexample.com", 443, False),
        ([".example.com"], "example.com", 443, True),
        (["*.example.com"], "a.b.example.com", 443, True),
        (["EXAMPLE.com."], "Example.COM", 443, True),
        (["example.com:8443"], "example.com", 443, False),
        (["example.com:8443"], "example.com", 8443, True),
        (["10.0.0.0/8"], "10.1.2.3", 443, True),
        (["10.0.0.0/8"], "11.1.2.3", 443, False),
        (["10.0.0.1"], "10.0.0.1", 443, True),
        (["::1"], "::1", 443, True),
        (["[::1]:443"], "[::1]", 443, True),
        (["fd00::/8"], "fd12::1", 443, True),
        (["localhost"], "127.0.0.1", 443, False),
        (["*"], "anything.at.all", 1, True),
        (["a.com, b.com c.com"], "c.com", 443, True),
        ([""], "example.com", 443, False),
    ],
)
def test_no_intercept_entries_follow_no_proxy_conventions(
    entries: list[str], host: str, port: int, expected: bool
) -> None:
    assert HostMatcher(entries).matches(host, port) is expected


def test_replay_mode_never_reaches_an_upstream(
    tmp_path: Path, test_pki: Pki, origin: Origin
) -> None:
    sidecar = start_sidecar(
        tmp_path / "flux", None, "--upstream-ca", str(test_pki.ca_path),
        mode="replay", expect=("http",),
    )  # fmt: skip
    try:
        before = len(origin.seen)
        s = requests.Session()
        s.trust_env = False
        s.proxies = {"http": sidecar.url("http")}
        response = s.get(origin.url("/hello", tls=False), timeout=30)
        assert response.status_code == 502 and "replay mode" in response.text
        assert len(origin.seen) == before  # nothing was forwarded
    finally:
        sidecar.stop()


def test_an_unreadable_upstream_ca_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-bundle.pem"
    bogus.write_text("hello\n")
    result = run_flux(
        "serve", "--data-dir", str(tmp_path / "flux"), "--listen-db", "127.0.0.1:0",
        "--listen-admin", "127.0.0.1:0", "--listen-http", "127.0.0.1:0",
        "--listen-inbound", "127.0.0.1:0", "--upstream-ca", str(bogus),
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot start the HTTP proxy" in result.stderr and str(bogus) in result.stderr
