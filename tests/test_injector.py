"""The injector's JSON patch on real pod specs, applied with a JSON-patch library.

Every patched pod is also validated against the Kubernetes API schema of the
oldest version with native sidecars on by default (1.29) and of the newest one
the schema package ships, so a typo in a field name fails here and not in a cluster.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from flux_proxy.injector import InjectorConfig, plan
from tests.fix_admin import flux_cli
from tests.fix_sidecar import run_flux

PODS = Path(__file__).parent / "k8s" / "pods"
KEY = "fluxpub_v1_test-key"
CONFIG = InjectorConfig(image="registry.example.com/flux-proxy:0.1.0", public_key=KEY)
SCHEMA_VERSIONS = ("1.29", kubernetes_validate.latest_version())


def load(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = yaml.safe_load((PODS / name).read_text())
    return pod


def validate(obj: dict[str, Any]) -> None:
    for version in SCHEMA_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def inject(pod: dict[str, Any], config: InjectorConfig = CONFIG) -> tuple[dict[str, Any], Any]:
    original = copy.deepcopy(pod)
    injection = plan(pod, config)
    assert pod == original, "plan() must not modify its input"
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, list(injection.patch))
    return patched, injection


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    (sidecar,) = [c for c in pod["spec"].get("initContainers", []) if c["name"] == "flux-proxy"]
    return sidecar


CA_ENV = {
    "SSL_CERT_FILE": "/etc/flux/ca/ca.crt",
    "REQUESTS_CA_BUNDLE": "/etc/flux/ca/ca.crt",
    "NODE_EXTRA_CA_CERTS": "/etc/flux/ca/ca.crt",
}


@pytest.mark.parametrize("name", sorted(p.name for p in PODS.glob("*.yaml")))
def test_every_fixture_pod_is_valid_before_and_after(name: str) -> None:
    pod = load(name)
    validate(pod)
    patched, _ = inject(pod)
    validate(patched)
    # Idempotent: the webhook may be invoked again on its own output.
    again = plan(patched, CONFIG)
    assert again.patch == () and again.reason in (
        "already injected",
        "opted out (flux.dev/inject: false)",
    )


def test_one_container() -> None:
    pod = load("one_container.yaml")
    patched, injection = inject(pod)
    assert injection.reason == "injected" and injection.warnings == ()
    assert patched["metadata"]["annotations"] == {
        "flux.dev/inject": "true",
        "flux.dev/injected": "true",
    }
    assert {
        "op": "add",
        "path": "/metadata/annotations/flux.dev~1injected",
        "value": "true",
    } in injection.patch

    (app,) = patched["spec"]["containers"]
    env = env_of(app)
    # User, password (still percent-encoded), database and the non-TLS parameters are kept;
    # the host is the sidecar; TLS settings move to the sidecar's upstream.
    assert (
        env["DATABASE_URL"]
        == "postgresql://orders:s3cr%40t@127.0.0.1:4432/orders?application_name=orders"
    )
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "http://127.0.0.1:4080"
    assert env["https_proxy"] == env["http_proxy"] == "http://127.0.0.1:4080"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    assert {k: env[k] for k in CA_ENV} == CA_ENV
    assert app["volumeMounts"] == [
        {"name": "flux-ca-cert", "mountPath": "/etc/flux/ca", "readOnly": True}
    ]
    # Everything the app had is still there.
    assert app["resources"] == pod["spec"]["containers"][0]["resources"]
    assert app["ports"] == pod["spec"]["containers"][0]["ports"]

    sidecar = sidecar_of(patched)
    assert patched["spec"]["initContainers"] == [sidecar]
    assert sidecar["image"] == "registry.example.com/flux-proxy:0.1.0"
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: up before the app starts
    senv = env_of(sidecar)
    assert senv["FLUX_UPSTREAM_DB"] == "postgresql://pg.shop.svc.cluster.local:5433?sslmode=require"
    assert senv["FLUX_MODE"] == "record"
    assert senv["FLUX_LISTEN_DB"] == "127.0.0.1:4432"
    assert senv["FLUX_LISTEN_ADMIN"] == "0.0.0.0:4001"
    assert senv["FLUX_DATA_DIR"] == "/var/lib/flux" and "FLUX_STORE" not in senv
    assert senv["FLUX_POD_ANNOTATIONS"] == "/etc/flux/pod/annotations"
    assert senv["FLUX_PUBLIC_KEY"] == KEY and senv["FLUX_REQUIRE_KEY"] == "1"
    assert "orders" not in json.dumps(sidecar), "the sidecar must not get the app's credentials"
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 4001}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 4001}
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts == {
        "flux-data": "/var/lib/flux",
        "flux-podinfo": "/etc/flux/pod",
        "flux-ca": "/etc/flux/ca-key",
    }

    volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    assert volumes["flux-data"] == {"name": "flux-data", "emptyDir": {}}
    assert volumes["flux-podinfo"]["downwardAPI"]["items"] == [
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
    ]
    assert volumes["flux-ca"]["secret"]["secretName"] == "flux-proxy-ca"
    # App containers see the certificate, never the CA's key.
    assert volumes["flux-ca-cert"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


def test_several_containers() -> None:
    pod = load("several_containers.yaml")
    patched, injection = inject(pod)
    assert injection.reason == "injected" and injection.warnings == ()
    init = patched["spec"]["initContainers"]
    # The sidecar goes first, so the migration init container after it can reach it.
    assert [c["name"] for c in init] == ["flux-proxy", "migrate"]
    assert init[1] == pod["spec"]["initContainers"][0]  # init containers are not rewritten
    api, worker, exporter = patched["spec"]["containers"]
    assert env_of(api)["DATABASE_URL"] == "postgres://billing:pw@127.0.0.1:6432/billing"
    assert env_of(api)["LOG_LEVEL"] == "info"
    assert [e["name"] for e in api["env"]][:2] == ["DATABASE_URL", "LOG_LEVEL"]
    # Another user on the same server (default port): the same upstream, its own credentials.
    assert (
        env_of(worker)["DATABASE_URL"]
        == "postgres://billing_worker:pw2@127.0.0.1:6432/billing?connect_timeout=5"
    )
    assert "DATABASE_URL" not in env_of(exporter)
    assert env_of(exporter)["HTTPS_PROXY"] == "http://127.0.0.1:4080"
    assert exporter["volumeMounts"][0]["mountPath"] == "/etc/flux/ca"
    senv = env_of(sidecar_of(patched))
    assert senv["FLUX_MODE"] == "replay"
    assert senv["FLUX_UPSTREAM_DB"] == "postgresql://pg-billing:5432"
    assert senv["FLUX_LISTEN_DB"] == "127.0.0.1:6432"
    assert senv["FLUX_STORE"] == "postgresql://flux@flux-store.billing.svc:5432/flux"
    assert "FLUX_DATA_DIR" not in senv
    assert senv["FLUX_APP_URL"] == "http://127.0.0.1:8080"
    assert patched["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_existing_env_and_volumes() -> None:
    pod = load("existing_env_and_volumes.yaml")
    patched, injection = inject(pod)
    assert injection.reason == "injected"
    assert injection.warnings == (
        "container 'catalog': NODE_EXTRA_CA_CERTS='/etc/corp/ca.pem' replaced by the flux CA",
    )
    (app,) = patched["spec"]["containers"]
    names = [e["name"] for e in app["env"]]
    # Replaced in place: PG_DSN_RO, defined after PG_DSN, still expands $(PG_DSN).
    assert names[:5] == ["NO_PROXY", "PG_DSN", "PG_DSN_RO", "NODE_EXTRA_CA_CERTS", "API_KEY"]
    env = env_of(app)
    assert env["PG_DSN"] == "postgresql://catalog:pw@127.0.0.1:4432/catalog"
    assert env["PG_DSN_RO"] == "$(PG_DSN)?target_session_attrs=any"
    assert "DATABASE_URL" not in env
    assert env["NO_PROXY"] == ".svc.cluster.local,10.0.0.0/8,localhost,127.0.0.1,::1"
    assert env["no_proxy"] == "localhost,127.0.0.1,::1"
    assert env["API_KEY"] == {"secretKeyRef": {"name": "catalog", "key": "api-key"}}
    assert app["envFrom"] == pod["spec"]["containers"][0]["envFrom"]
    assert [m["name"] for m in app["volumeMounts"]] == ["config", "corp-ca", "flux-ca-cert"]
    assert [v["name"] for v in patched["spec"]["volumes"]] == [
        "config",
        "corp-ca",
        "flux-data",
        "flux-podinfo",
        "flux-ca",
        "flux-ca-cert",
    ]
    # flux.dev/upstream-db wins over the host in the URL (here: a pooler in between).
    assert env_of(sidecar_of(patched))["FLUX_UPSTREAM_DB"] == "postgresql://pgbouncer.shop.svc:6432"


def test_already_injected_and_opted_out_are_left_alone() -> None:
    assert plan(load("already_injected.yaml"), CONFIG).reason == "already injected"
    assert plan(load("opted_out.yaml"), CONFIG).patch == ()
    unannotated = load("opted_out.yaml")
    del unannotated["metadata"]["annotations"]
    assert plan(unannotated, CONFIG).reason == "not annotated flux.dev/inject: true"
    # Our container alone (the annotation removed by hand) is enough to recognise it.
    marked = load("already_injected.yaml")
    del marked["metadata"]["annotations"]["flux.dev/injected"]
    assert plan(marked, CONFIG).patch == ()


@pytest.mark.parametrize(
    ("change", "config", "message"),
    [
        ({"flux.dev/mode": "rewind"}, CONFIG, "flux.dev/mode='rewind' is not one of"),
        ({"flux.dev/port-db": "70000"}, CONFIG, "flux.dev/port-db='70000' is not a port"),
        ({"flux.dev/port-http": "4432"}, CONFIG, "ports must differ"),
        ({"flux.dev/upstream-db": "mysql://db"}, CONFIG, "is not a postgresql://"),
        ({"flux.dev/database-url-env": "NOT A NAME"}, CONFIG, "is not an environment variable"),
        ({}, InjectorConfig(), "no public key is configured"),
        (
            {},
            InjectorConfig(public_key=KEY, namespaces=("billing",)),
            "namespace 'shop' has no flux CA",
        ),
    ],
)
def test_a_pod_that_cannot_be_injected_is_admitted_unchanged(
    change: dict[str, str], config: InjectorConfig, message: str
) -> None:
    pod = load("one_container.yaml")
    pod["metadata"]["annotations"].update(change)
    injection = plan(pod, config)
    assert injection.patch == ()
    assert len(injection.warnings) == 1 and message in injection.warnings[0]
    assert injection.warnings[0].startswith("flux-proxy: not injected: ")


def test_host_network_and_volume_clashes_are_not_injected() -> None:
    pod = load("one_container.yaml")
    pod["spec"]["hostNetwork"] = True
    assert "hostNetwork" in plan(pod, CONFIG).warnings[0]
    pod = load("one_container.yaml")
    pod["spec"]["volumes"] = [{"name": "flux-data", "emptyDir": {}}]
    assert "already has volumes named flux-data" in plan(pod, CONFIG).warnings[0]


def test_unreadable_or_foreign_urls_leave_that_container_alone() -> None:
    pod = load("several_containers.yaml")
    api, worker, _ = pod["spec"]["containers"]
    api["env"][0] = {
        "name": "DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}},
    }
    worker["env"][0]["value"] = "postgresql://u:p@elsewhere:5432/x"
    patched, injection = inject(pod)
    assert injection.injected
    assert injection.warnings == (
        "container 'api': DATABASE_URL comes from valueFrom, which the injector cannot read at admission; left unchanged",
    )
    api, worker, _ = patched["spec"]["containers"]
    assert "valueFrom" in api["env"][0]
    # The worker's URL gave the upstream, since the api's could not be read.
    assert env_of(worker)["DATABASE_URL"] == "postgresql://u:p@127.0.0.1:6432/x"
    assert env_of(sidecar_of(patched))["FLUX_UPSTREAM_DB"] == "postgresql://elsewhere:5432"
    validate(patched)

    pod = load("several_containers.yaml")
    pod["spec"]["containers"][1]["env"][0]["value"] = "postgres://u:p@other-db/x"
    patched, injection = inject(pod)
    assert (
        "points at postgresql://other-db:5432, not postgresql://pg-billing:5432"
        in injection.warnings[0]
    )
    assert env_of(patched["spec"]["containers"][1])["DATABASE_URL"] == "postgres://u:p@other-db/x"


def test_regular_container_when_native_sidecars_are_off() -> None:
    config = InjectorConfig(
        public_key=KEY, native_sidecar=False, resources={"limits": {"memory": "256Mi"}}
    )
    patched, _ = inject(load("one_container.yaml"), config)
    names = [c["name"] for c in patched["spec"]["containers"]]
    assert names == ["orders", "flux-proxy"] and "initContainers" not in patched["spec"]
    sidecar = patched["spec"]["containers"][1]
    assert "restartPolicy" not in sidecar
    assert sidecar["resources"] == {"limits": {"memory": "256Mi"}}
    validate(patched)


def test_flux_inject_prints_the_same_patch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = load("several_containers.yaml")
    expected = list(plan(pod, CONFIG).patch)
    env = {"FLUX_PUBLIC_KEY": KEY, "FLUX_SIDECAR_IMAGE": CONFIG.image}
    # Once as the installed command, the rest in-process (the same parser and handler).
    from_yaml = run_flux("inject", "--pod", str(PODS / "several_containers.yaml"), env=env)
    assert json.loads(from_yaml.stdout) == expected
    assert "flux: injected" in from_yaml.stderr
    as_json = tmp_path / "pod.json"
    as_json.write_text(json.dumps(pod))
    code, out, _ = flux_cli(capsys, monkeypatch, "inject", "--pod", str(as_json), **env)
    assert code == 0 and json.loads(out) == expected

    # A Deployment: the patch is for the pods its template makes.
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "billing", "namespace": "billing"},
        "spec": {
            "selector": {"matchLabels": {"app": "billing"}},
            "template": {k: pod[k] for k in ("metadata", "spec")},
        },
    }
    manifest = tmp_path / "deploy.yaml"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}
    manifest.write_text("---\n" + yaml.safe_dump(service) + "---\n" + yaml.safe_dump(deployment))
    code, out, err = flux_cli(capsys, monkeypatch, "inject", "--pod", str(manifest), **env)
    assert json.loads(out) == expected
    assert "pod template of Deployment/billing" in err

    one = str(PODS / "one_container.yaml")
    code, out, err = flux_cli(capsys, monkeypatch, "inject", "--pod", one, FLUX_PUBLIC_KEY="")
    assert code == 0 and json.loads(out) == []
    assert "warning: flux-proxy: not injected: no public key" in err
    code, out, err = flux_cli(
        capsys, monkeypatch, "inject", "--pod", one, "--require-key", "false", FLUX_PUBLIC_KEY=""
    )
    assert json.loads(out) and "FLUX_REQUIRE_KEY" not in out
    code, _, err = flux_cli(capsys, monkeypatch, "inject", "--pod", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read a pod" in err
