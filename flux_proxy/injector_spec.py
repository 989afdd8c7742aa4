"""The pieces the injector adds to a pod: the sidecar container, volumes, app env.

Pure data builders for ``injector.py``; split out so the decision logic there
stays readable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from .injector import InjectorConfig

SIDECAR_NAME = "flux-proxy"
DATA_VOLUME = "flux-data"
PODINFO_VOLUME = "flux-podinfo"
CA_VOLUME = "flux-ca"  # the whole Secret, key included: the sidecar's only
CA_CERT_VOLUME = "flux-ca-cert"  # only ca.crt: what app containers may see
VOLUME_NAMES = (DATA_VOLUME, PODINFO_VOLUME, CA_VOLUME, CA_CERT_VOLUME)

DATA_DIR = "/var/lib/flux"
PODINFO_DIR = "/etc/flux/pod"
CA_KEY_DIR = "/etc/flux/ca-key"
CA_DIR = "/etc/flux/ca"
CA_FILE = f"{CA_DIR}/ca.crt"

PORT_DEFAULTS = {"db": 4432, "http": 4080, "admin": 4001, "inbound": 4000}
CA_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
# Both spellings: curl and Go read the lower-case ones, most Python and Node the upper.
PROXY_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
MERGED_ENV = ("NO_PROXY", "no_proxy")  # added to, never replaced
NO_PROXY = "localhost,127.0.0.1,::1"
# Connection parameters that concern TLS to the real server: they stay with the sidecar
# (which dials the upstream), and leave the app's URL, since the app talks to 127.0.0.1.
TLS_PARAMS = frozenset(
    {"sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslnegotiation"}
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class InjectError(Exception):
    """The pod asks for something the injector cannot do; it is admitted unchanged."""


@dataclass(frozen=True, slots=True)
class Ports:
    db: int
    http: int
    admin: int
    inbound: int


@dataclass(frozen=True, slots=True)
class Unreadable:
    why: str


def valid_env_name(name: str) -> bool:
    return bool(_ENV_NAME.fullmatch(name))


def database_url(container: Mapping[str, Any], name: str) -> str | Unreadable | None:
    for var in container.get("env") or []:
        if var.get("name") != name:
            continue
        if "valueFrom" in var:
            return Unreadable(
                f"{name} comes from valueFrom, which the injector cannot read at admission"
            )
        value = str(var.get("value") or "")
        if not value.startswith(("postgres://", "postgresql://")):
            return Unreadable(f"{name} is not a postgresql:// URL")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises on a bad or multi-host port list)
        except ValueError:
            return Unreadable(f"{name} has a host list or port the sidecar cannot front")
        if not parts.hostname or "," in parts.netloc:
            return Unreadable(f"{name} names no single host")
        return value
    return None


def check_upstream(url: str, where: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise InjectError(f"{where}={url!r}: {exc}") from exc
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
        raise InjectError(f"{where}={url!r} is not a postgresql://HOST[:PORT] URL")
    return url


def split_database_url(url: str, sidecar_port: int) -> tuple[str, str]:
    """``(upstream for the sidecar, URL for the app)``.

    The app keeps its user, password, database and other parameters and talks
    to the sidecar on loopback; the sidecar gets only where and how to reach the
    server (credentials pass through in the protocol and are never given to it).
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tls = [(k, v) for k, v in query if k in TLS_PARAMS]
    rest = [(k, v) for k, v in query if k not in TLS_PARAMS]
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    upstream = urlunsplit(("postgresql", f"{shown}:{parts.port or 5432}", "", urlencode(tls), ""))
    userinfo = ""
    if parts.username is not None:
        userinfo = quote(unquote(parts.username), safe="")
        if parts.password is not None:
            userinfo += ":" + quote(unquote(parts.password), safe="")
        userinfo += "@"
    app = urlunsplit(
        (parts.scheme, f"{userinfo}127.0.0.1:{sidecar_port}", parts.path, urlencode(rest), "")
    )
    return upstream, app


def merge_no_proxy(existing: str, ours: str) -> str:
    items = [i.strip() for i in existing.split(",") if i.strip()]
    items += [i for i in ours.split(",") if i not in items]
    return ",".join(items)


def app_env(ports: Ports, database_url: str | None, url_env: str) -> list[dict[str, Any]]:
    proxy = f"http://127.0.0.1:{ports.http}"
    env: list[dict[str, Any]] = []
    if database_url is not None:
        env.append({"name": url_env, "value": database_url})
    env += [{"name": name, "value": proxy} for name in PROXY_ENV]
    env += [{"name": name, "value": NO_PROXY} for name in MERGED_ENV]
    env += [{"name": name, "value": CA_FILE} for name in CA_ENV]
    return env


def app_ca_mount() -> dict[str, Any]:
    return {"name": CA_CERT_VOLUME, "mountPath": CA_DIR, "readOnly": True}


def volumes(config: InjectorConfig) -> list[dict[str, Any]]:
    return [
        {"name": DATA_VOLUME, "emptyDir": {}},
        {
            "name": PODINFO_VOLUME,
            "downwardAPI": {
                "items": [
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
                ]
            },
        },
        {"name": CA_VOLUME, "secret": {"secretName": config.ca_secret, "defaultMode": 0o440}},
        {
            "name": CA_CERT_VOLUME,
            "secret": {
                "secretName": config.ca_secret,
                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                "defaultMode": 0o444,
            },
        },
    ]


def _probe(path: str, port: int, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "timeoutSeconds": 2, **timing}


def sidecar_container(
    config: InjectorConfig,
    *,
    mode: str,
    ports: Ports,
    upstream: str | None,
    store: str | None,
    app_port: str | None,
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "FLUX_MODE", "value": mode},
        {"name": "FLUX_LISTEN_DB", "value": f"127.0.0.1:{ports.db}"},
        {"name": "FLUX_LISTEN_HTTP", "value": f"127.0.0.1:{ports.http}"},
        # The admin API and the inbound proxy are reached from outside the pod (probes,
        # scrapers, the Service); changes through the admin API still need its token.
        {"name": "FLUX_LISTEN_ADMIN", "value": f"0.0.0.0:{ports.admin}"},
        {"name": "FLUX_LISTEN_INBOUND", "value": f"0.0.0.0:{ports.inbound}"},
        {"name": "FLUX_POD_ANNOTATIONS", "value": f"{PODINFO_DIR}/annotations"},
        {"name": "FLUX_CA_CERT", "value": f"{CA_KEY_DIR}/ca.crt"},
        {"name": "FLUX_CA_KEY", "value": f"{CA_KEY_DIR}/ca.key"},
        # A read-only root filesystem: everything the process writes goes to the data volume.
        {"name": "HOME", "value": DATA_DIR},
        {"name": "TMPDIR", "value": DATA_DIR},
    ]
    if upstream is not None:
        env.append({"name": "FLUX_UPSTREAM_DB", "value": upstream})
    if store is not None:
        env.append({"name": "FLUX_STORE", "value": store})
    else:
        env.append({"name": "FLUX_DATA_DIR", "value": DATA_DIR})
    if app_port is not None:
        env.append({"name": "FLUX_APP_URL", "value": f"http://127.0.0.1:{app_port}"})
    if config.public_key:
        env.append({"name": "FLUX_PUBLIC_KEY", "value": config.public_key})
    if config.require_key:
        env.append({"name": "FLUX_REQUIRE_KEY", "value": "1"})
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["serve"],
        "env": env,
        "ports": [{"name": "flux-admin", "containerPort": ports.admin, "protocol": "TCP"}],
        "readinessProbe": _probe("/readyz", ports.admin, periodSeconds=5, failureThreshold=2),
        "livenessProbe": _probe("/healthz", ports.admin, periodSeconds=10, failureThreshold=3),
        "startupProbe": _probe("/readyz", ports.admin, periodSeconds=1, failureThreshold=60),
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": DATA_VOLUME, "mountPath": DATA_DIR},
            {"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": True},
            {"name": CA_VOLUME, "mountPath": CA_KEY_DIR, "readOnly": True},
        ],
    }
    if config.resources:
        container["resources"] = dict(config.resources)
    if config.native_sidecar:
        container["restartPolicy"] = "Always"
    return container
