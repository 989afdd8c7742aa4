"""``flux webhook serve`` over real TLS, answering AdmissionReview v1 from an HTTPS client.

The certificate is made here (:mod:`tests.fix_tls`) for the name the API server
dials (``<service>.<namespace>.svc``) and for 127.0.0.1, as the chart's would be.
"""

from __future__ import annotations

import base64
import copy
import re
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import kubernetes_validate
import pytest
import yaml

from tests.fix_sidecar import REPO
from tests.fix_tls import make_ca, make_leaf

PODS = Path(__file__).resolve().parent.parent / "k8s" / "pods"
SERVICE_DNS = "flux-proxy-injector.flux-system.svc"
KEY = "fluxpub_v1_webhook-test"


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("flux-proxy webhook test CA")
    pki = Pki(ca=directory / "ca.crt", cert=directory / "tls.crt", key=directory / "tls.key")
    ca.write(pki.ca)
    make_leaf(ca, [SERVICE_DNS], ["127.0.0.1"]).write(pki.cert, pki.key)
    return pki


@dataclass
class WebhookProcess:
    proc: subprocess.Popen[str]
    url: str
    pki: Pki
    output: list[str]


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[WebhookProcess]:
    pki = make_pki(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_proxy", "webhook", "serve", "--listen", "127.0.0.1:0",
         "--cert", str(pki.cert), "--key", str(pki.key), "--public-key", KEY,
         "--namespaces", "shop,billing", "--sidecar-image", "registry.example.com/flux-proxy:0.1.0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    output: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            match = re.match(r"flux: listening webhook 127\.0\.0\.1:(\d+)", line)
            if match:
                port.append(int(match[1]))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(20) or not port:
        proc.kill()
        pytest.fail("the webhook did not start:\n" + "".join(output))
    yield WebhookProcess(proc=proc, url=f"https://127.0.0.1:{port[0]}", pki=pki, output=output)
    proc.terminate()
    assert proc.wait(10) == 0


def review(
    pod: dict[str, Any], namespace: str, *, kind: str = "Pod", operation: str = "CREATE"
) -> dict[str, Any]:
    """An AdmissionReview as the kube-apiserver sends it for ``kubectl apply`` of a pod."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"].get("name", ""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def load(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = yaml.safe_load((PODS / name).read_text())
    return pod


def test_admission_review_over_tls(webhook: WebhookProcess) -> None:
    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(webhook.pki.ca)), timeout=10
    ) as client:
        # The apiserver verifies against the caBundle, by the service's DNS name; here the
        # same certificate also names 127.0.0.1, where the test reaches it.
        pod = load("one_container.yaml")
        sent = review(pod, "shop")
        answer = client.post(f"{webhook.url}/mutate", json=sent)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        body = answer.json()
        assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
        response = body["response"]
        assert response["uid"] == sent["request"]["uid"]
        assert response["allowed"] is True
        assert response["patchType"] == "JSONPatch"
        assert "warnings" not in response
        patch = jsonpatch.JsonPatch.from_string(base64.b64decode(response["patch"]).decode())
        patched = patch.apply(copy.deepcopy(pod))
        kubernetes_validate.validate(patched, "1.29", strict=True)
        sidecar = patched["spec"]["initContainers"][0]
        assert (
            sidecar["name"] == "flux-proxy"
            and sidecar["image"] == "registry.example.com/flux-proxy:0.1.0"
        )
        env = {e["name"]: e["value"] for e in patched["spec"]["containers"][0]["env"]}
        assert env["DATABASE_URL"].startswith("postgresql://orders:s3cr%40t@127.0.0.1:4432/orders")
        assert patched["metadata"]["annotations"]["flux.dev/injected"] == "true"

        # The same connection again (the apiserver keeps them alive): the injected pod is left alone.
        again = client.post(f"{webhook.url}/mutate", json=review(patched, "shop")).json()[
            "response"
        ]
        assert again["allowed"] is True and "patch" not in again

        opted_out = client.post(
            f"{webhook.url}/mutate", json=review(load("opted_out.yaml"), "shop")
        ).json()["response"]
        assert opted_out == {"uid": opted_out["uid"], "allowed": True}

        # A namespace without the CA Secret: admitted unchanged, and the user is told why.
        elsewhere = client.post(f"{webhook.url}/mutate", json=review(pod, "default")).json()[
            "response"
        ]
        assert elsewhere["allowed"] is True and "patch" not in elsewhere
        assert elsewhere["warnings"] == [
            "flux-proxy: not injected: namespace 'default' has no flux CA Secret (the injector "
            "serves shop, billing; add it to injectNamespaces in the chart)"
        ]
        broken = copy.deepcopy(pod)
        broken["metadata"]["annotations"]["flux.dev/mode"] = "sometimes"
        warned = client.post(f"{webhook.url}/mutate", json=review(broken, "shop")).json()[
            "response"
        ]
        assert warned["allowed"] is True and "patch" not in warned
        assert "flux.dev/mode='sometimes'" in warned["warnings"][0]

        update = client.post(
            f"{webhook.url}/mutate", json=review(pod, "shop", operation="UPDATE")
        ).json()
        assert "patch" not in update["response"] and update["response"]["allowed"] is True

        assert (
            client.post(
                f"{webhook.url}/mutate", content=b"{}", headers={"content-type": "application/json"}
            ).status_code
            == 400
        )
        assert (
            client.post(
                f"{webhook.url}/mutate", content=b"[", headers={"content-type": "application/json"}
            ).status_code
            == 400
        )
        assert (
            client.post(
                f"{webhook.url}/mutate", content=b"{}", headers={"content-type": "text/plain"}
            ).status_code
            == 415
        )
        assert client.get(f"{webhook.url}/healthz").status_code == 200
        assert client.get(f"{webhook.url}/nothing").status_code == 404

    # TLS only, and only with the right CA.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{webhook.url}/healthz", timeout=10)  # the system trust store does not know it
    plain = webhook.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/healthz", timeout=5)
    assert webhook.proc.poll() is None
    log = "".join(webhook.output)
    assert "shop/orders-7d9c8b5f4-*: injected" in log


async def test_renewed_certificate_is_served_without_restart(tmp_path: Path) -> None:
    """cert-manager renews the Secret in place; new handshakes get the new pair."""
    from flux_proxy.injector import InjectorConfig
    from flux_proxy.webhook import Webhook

    first = make_pki(tmp_path / "first")
    webhook = Webhook(InjectorConfig(public_key=KEY), cert=str(first.cert), key=str(first.key))
    host, port = await webhook.start("127.0.0.1", 0)
    url = f"https://{host}:{port}/healthz"
    try:
        trusting_first = ssl.create_default_context(cafile=str(first.ca))
        async with httpx.AsyncClient(verify=trusting_first) as client:
            assert (await client.get(url)).status_code == 200
        assert webhook.reload_if_changed() is False  # nothing changed yet

        second = make_pki(tmp_path / "second")  # a new CA too, so the two cannot be confused
        # A certificate whose key has not arrived yet is refused, and the old pair kept.
        first.cert.write_bytes(second.cert.read_bytes())
        assert webhook.reload_if_changed() is False
        async with httpx.AsyncClient(verify=trusting_first) as client:
            assert (await client.get(url)).status_code == 200
        first.key.write_bytes(second.key.read_bytes())
        assert webhook.reload_if_changed() is True
        async with httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=str(second.ca))
        ) as client:
            assert (await client.get(url)).status_code == 200
        async with httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=str(first.ca))
        ) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url)
    finally:
        await webhook.close()
