"""charts/flux-proxy rendered by Helm's own engine, every manifest validated.

Rendering uses ``helm-python-sdk``: Helm's Go SDK (v4) behind a C ABI, shipped as a
wheel, so this is what ``helm template`` does, with no helm binary to download.
Kubernetes kinds are validated against the API's JSON schemas (kubernetes-validate,
strict: unknown fields fail); cert-manager's against schemas derived from its CRDs.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flux_proxy import cli
from flux_proxy.cmd_k8s import config_from_args
from flux_proxy.injector import plan

helm = pytest.importorskip("helm_python", reason="helm-python-sdk ships for linux x86_64 only")

CHART = Path(__file__).resolve().parent.parent / "charts" / "flux-proxy"
PODS = Path(__file__).parent / "k8s" / "pods"
VERSIONS = ("1.29", kubernetes_validate.latest_version())
KEY = "fluxpub_v1_chart-test-key"
# See tests/k8s/schemas/README.md: generated from cert-manager's CRDs.
CERT_MANAGER = json.loads(
    (Path(__file__).parent / "k8s" / "schemas" / "cert-manager-v1.json").read_text()
)

NON_DEFAULT = {
    "fullnameOverride": "flux",
    "image": {
        "repository": "registry.example.com/flux-proxy",
        "tag": "0.1.0-rc1",
        "pullPolicy": "Always",
    },
    "imagePullSecrets": [{"name": "registry"}],
    "injectNamespaces": ["shop", "billing"],
    "namespaceSelector": {"matchLabels": {"flux.dev/injection": "enabled"}},
    "defaultMode": "passthrough",
    "injector": {"replicas": 1, "logLevel": "DEBUG", "nodeSelector": {"kubernetes.io/os": "linux"}},
    "sidecar": {
        "nativeSidecar": False,
        "image": {"repository": "registry.example.com/flux-sidecar"},
    },
    "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10, "port": 9443},
    "certManager": {"enabled": True},
    "key": {"publicKey": KEY},
    "rbac": {"create": False},
    "serviceAccount": {"create": False, "name": "injector"},
}


def render(
    values: dict[str, Any], namespace: str = "flux-system"
) -> tuple[list[dict[str, Any]], str]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name="flux", namespace=namespace, is_install=True)
    notes = files.pop("flux-proxy/templates/NOTES.txt", "")
    docs = [doc for text in files.values() for doc in yaml.safe_load_all(text) if doc]
    return docs, notes


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = by_kind(docs, kind)
    return doc


def _strict(schema: Any) -> Any:
    """Unknown fields fail, as the API server's strict field validation makes them fail."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and schema.get("type", "object") == "object":
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"] == "cert-manager.io/v1":
        schema = _strict(CERT_MANAGER[doc["kind"]])
        jsonschema.Draft202012Validator(schema).validate(doc)
        return
    for version in VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def secret_pem(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def injector_config(deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The InjectorConfig the injector builds from the chart's args and env, via our own CLI."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for var in container["env"]:
        if "value" in var:
            monkeypatch.setenv(var["name"], var["value"])
    return cli.build_parser().parse_args(container["args"])


def test_default_values(monkeypatch: pytest.MonkeyPatch) -> None:
    docs, notes = render({})
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole", "Deployment", "MutatingWebhookConfiguration", "PodDisruptionBudget",
        "Secret", "Secret", "Service", "ServiceAccount",
    ]  # fmt: skip
    for doc in docs:
        validate(doc)

    webhook = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]
    service = one(docs, "Service")
    assert webhook["failurePolicy"] == "Ignore" and webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["clientConfig"]["service"] == {
        "name": service["metadata"]["name"], "namespace": "flux-system", "path": "/mutate", "port": 443,
    }  # fmt: skip
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["default"]}
    ]
    # The serving certificate is signed by the CA in caBundle, for the name the API server dials.
    (tls,) = [s for s in by_kind(docs, "Secret") if s["type"] == "kubernetes.io/tls"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(webhook["clientConfig"]["caBundle"]))
    cert = x509.load_pem_x509_certificate(secret_pem(tls, "tls.crt"))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{service['metadata']['name']}.flux-system.svc" in names.get_values_for_type(
        x509.DNSName
    )
    key = serialization.load_pem_private_key(secret_pem(tls, "tls.key"), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]

    (ca_secret,) = [s for s in by_kind(docs, "Secret") if s["type"] == "Opaque"]
    assert ca_secret["metadata"] == {
        **ca_secret["metadata"],
        "name": "flux-proxy-ca",
        "namespace": "default",
    }
    interception = x509.load_pem_x509_certificate(secret_pem(ca_secret, "ca.crt"))
    assert interception.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["flux.dev/injector"] == "true"  # excluded by objectSelector
    assert webhook["objectSelector"]["matchExpressions"][0] == {
        "key": "flux.dev/injector",
        "operator": "DoesNotExist",
    }
    assert pod["spec"]["volumes"][0]["secret"]["secretName"] == tls["metadata"]["name"]
    args = injector_config(deployment, monkeypatch)
    assert args.handler.__name__ == "run_webhook"
    assert (args.listen, args.cert, args.key) == (
        "0.0.0.0:8443",
        "/etc/flux/tls/tls.crt",
        "/etc/flux/tls/tls.key",
    )
    config = config_from_args(args)
    assert config.image == "flux-proxy:0.1.0" and config.ca_secret == "flux-proxy-ca"
    assert config.namespaces == ("default",) and config.require_key and config.native_sidecar
    assert config.resources == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    key_ref = next(e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "FLUX_PUBLIC_KEY")
    assert key_ref["valueFrom"]["secretKeyRef"]["optional"] is True

    assert "NOT injected yet" in notes and 'flux.dev/inject: "true"' in notes
    assert "kubectl -n <namespace> annotate pod <pod> flux.dev/mode=replay --overwrite" in notes


def test_non_default_values_with_cert_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    docs, notes = render(NON_DEFAULT, namespace="platform")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "Certificate", "Certificate", "Deployment", "Issuer", "Issuer", "MutatingWebhookConfiguration",
        "Secret", "Secret", "Secret", "Service",
    ]  # fmt: skip
    for doc in docs:
        validate(doc)

    configuration = one(docs, "MutatingWebhookConfiguration")
    webhook = configuration["webhooks"][0]
    assert "caBundle" not in webhook["clientConfig"]  # cert-manager's cainjector fills it in
    serving = next(c for c in by_kind(docs, "Certificate") if not c["spec"].get("isCA"))
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"platform/{serving['metadata']['name']}"
    }
    assert "flux-injector.platform.svc" in serving["spec"]["dnsNames"]
    assert webhook["failurePolicy"] == "Fail" and webhook["timeoutSeconds"] == 10
    assert webhook["namespaceSelector"] == {"matchLabels": {"flux.dev/injection": "enabled"}}

    deployment = one(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["volumes"][0]["secret"]["secretName"] == serving["spec"]["secretName"]
    assert spec["serviceAccountName"] == "injector" and spec["imagePullSecrets"] == [
        {"name": "registry"}
    ]
    assert spec["containers"][0]["image"] == "registry.example.com/flux-proxy:0.1.0-rc1"
    assert spec["containers"][0]["ports"][0]["containerPort"] == 9443
    args = injector_config(deployment, monkeypatch)
    assert args.listen == "0.0.0.0:9443" and args.log_level == "DEBUG"
    config = config_from_args(args)
    assert config.image == "registry.example.com/flux-sidecar:0.1.0-rc1"
    assert config.default_mode == "passthrough" and not config.native_sidecar
    assert config.namespaces == ("shop", "billing")

    secrets = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): s for s in by_kind(docs, "Secret")
    }
    assert secrets[("platform", "flux-key")]["stringData"] == {"public-key": KEY}
    # The same CA in every namespace pods are injected in.
    assert (
        secrets[("shop", "flux-proxy-ca")]["data"] == secrets[("billing", "flux-proxy-ca")]["data"]
    )
    assert "NOT injected yet" not in notes

    # The chart and the injector agree: a pod injected with this configuration mounts the
    # Secret the chart created in its namespace.
    monkeypatch.setenv("FLUX_PUBLIC_KEY", KEY)
    pod = yaml.safe_load((PODS / "several_containers.yaml").read_text())
    injection = plan(pod, config_from_args(injector_config(deployment, monkeypatch)))
    assert injection.injected
    patched = jsonpatch.apply_patch(pod, list(injection.patch))
    (ca_volume,) = [v for v in patched["spec"]["volumes"] if v["name"] == "flux-ca"]
    assert ("billing", ca_volume["secret"]["secretName"]) in secrets


def test_existing_issuer_and_own_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    ca_pem = base64.b64decode(
        next(s for s in render({})[0] if s["kind"] == "Secret" and s["type"] == "Opaque")["data"][
            "ca.crt"
        ]
    ).decode()
    values = {
        "certManager": {
            "enabled": True,
            "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
        },
        "ca": {
            "cert": ca_pem,
            "key": "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",
        },
        "key": {"existingSecret": "my-key", "require": False},
    }
    docs, _ = render(values)
    for doc in docs:
        validate(doc)
    (certificate,) = by_kind(docs, "Certificate")
    assert certificate["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert by_kind(docs, "Issuer") == []
    (ca_secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "flux-proxy-ca"]
    assert secret_pem(ca_secret, "ca.crt").decode() == ca_pem
    assert not [s for s in by_kind(docs, "Secret") if "key" in s["metadata"]["name"]]
    env = {
        e["name"]: e
        for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FLUX_PUBLIC_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "my-key"
    assert env["FLUX_REQUIRE_KEY"]["value"] == "false"


@pytest.mark.parametrize(
    "values",
    [
        {"defaultMode": "rewind"},
        {"injectNamespaces": []},
        {"webhook": {"failurePolicy": "Sometimes"}},
        {"key": {"publicKey": "not-a-key"}},
    ],
)
def test_values_schema_rejects_mistakes(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError, match=r"values don.t meet the specifications of the schema"):
        render(values)


def test_helm_lint_is_clean() -> None:
    for values in ({}, NON_DEFAULT):
        result = helm.lint(str(CHART), values, strict=True, namespace="flux-system")
        assert result["errors"] == [], result
        # Only informational findings (severity 1: "icon is recommended") may remain.
        assert all(m["severity"] <= 1 for m in result["messages"]), json.dumps(result, indent=2)
