"""Sidecar injection as a pure function: a pod in, a JSON patch (RFC 6902) out.

Used by the admission webhook (``webhook.py``) and by ``flux inject --pod``, so
what the cluster would do can be seen offline. No I/O here: the pod is a dict
as the API server sends it, the result is data.

Decisions, in order: a pod not annotated ``flux.dev/inject: "true"`` (or
annotated ``"false"``) is left alone, as is one already injected (our
annotation or our container is there), so re-invocation is harmless. A pod
whose annotations ask for something we cannot do (an unknown mode, a bad port,
no public key while one is required) is also left alone, with a warning the
API server shows to whoever applied it: a broken injection must never stop an
application from starting.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import injector_spec as spec
from .injector_spec import PORT_DEFAULTS, InjectError, Ports

PREFIX = "flux.dev/"
INJECT = PREFIX + "inject"
INJECTED = PREFIX + "injected"
MODE = PREFIX + "mode"
UPSTREAM_DB = PREFIX + "upstream-db"
STORE = PREFIX + "store"
DATABASE_URL_ENV = PREFIX + "database-url-env"
APP_PORT = PREFIX + "app-port"
PORT_ANNOTATIONS = {name: f"{PREFIX}port-{name}" for name in PORT_DEFAULTS}

MODES = ("record", "replay", "passthrough")
DEFAULT_IMAGE = "flux-proxy:0.1.0"
DEFAULT_CA_SECRET = "flux-proxy-ca"

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class InjectorConfig:
    """What the webhook is told at start (flags / the chart's values), the same for all pods."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    ca_secret: str = DEFAULT_CA_SECRET
    public_key: str | None = None
    require_key: bool = True
    default_mode: str = "record"
    native_sidecar: bool = True
    resources: Mapping[str, Any] = field(default_factory=dict)
    # Where the CA Secret exists (the chart creates it there); empty means everywhere.
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Injection:
    reason: str  # "injected", or why the pod was left alone
    patch: tuple[JsonObject, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def injected(self) -> bool:
        return bool(self.patch)


def pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901): ``/`` and ``~`` in a key are escaped."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def plan(pod: Mapping[str, Any], config: InjectorConfig, namespace: str | None = None) -> Injection:
    """The patch that injects the sidecar into ``pod``; an empty one when it must not.

    ``namespace`` is the one the pod is created in (the AdmissionReview says; a pod
    from a template often has none of its own).
    """
    metadata = pod.get("metadata") or {}
    namespace = namespace or metadata.get("namespace") or "default"
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    wanted = str(annotations.get(INJECT, "")).strip().lower()
    if wanted == "false":
        return Injection(reason="opted out (flux.dev/inject: false)")
    if wanted != "true":
        return Injection(reason="not annotated flux.dev/inject: true")
    pod_spec = pod.get("spec") or {}
    if annotations.get(INJECTED) or _has_sidecar(pod_spec):
        return Injection(reason="already injected")
    if config.namespaces and namespace not in config.namespaces:
        why = (
            f"namespace {namespace!r} has no flux CA Secret (the injector serves "
            f"{', '.join(config.namespaces)}; add it to injectNamespaces in the chart)"
        )
        return Injection(
            reason=f"not injected: {why}", warnings=(f"flux-proxy: not injected: {why}",)
        )
    try:
        return _inject(pod_spec, annotations, config)
    except InjectError as exc:
        return Injection(
            reason=f"not injected: {exc}", warnings=(f"flux-proxy: not injected: {exc}",)
        )


def _has_sidecar(pod_spec: Mapping[str, Any]) -> bool:
    containers = [*(pod_spec.get("containers") or []), *(pod_spec.get("initContainers") or [])]
    return any(c.get("name") == spec.SIDECAR_NAME for c in containers)


def _settings(annotations: Mapping[str, str], config: InjectorConfig) -> tuple[str, Ports]:
    mode = str(annotations.get(MODE, config.default_mode)).strip()
    if mode not in MODES:
        raise InjectError(f"{MODE}={mode!r} is not one of {', '.join(MODES)}")
    ports = {}
    for name, default in PORT_DEFAULTS.items():
        text = str(annotations.get(PORT_ANNOTATIONS[name], default)).strip()
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise InjectError(f"{PORT_ANNOTATIONS[name]}={text!r} is not a port number")
        ports[name] = int(text)
    if len(set(ports.values())) != len(ports):
        raise InjectError(f"the sidecar's ports must differ, got {ports}")
    if config.require_key and not config.public_key:
        raise InjectError(
            "no public key is configured for the injector (FLUX_PUBLIC_KEY) and keys are "
            "required, so nothing could be recorded; set key.publicKey in the chart"
        )
    return mode, Ports(**ports)


def _inject(
    pod_spec: Mapping[str, Any], annotations: Mapping[str, str], config: InjectorConfig
) -> Injection:
    if pod_spec.get("hostNetwork"):
        raise InjectError("the pod uses hostNetwork, where the sidecar's ports would be the node's")
    mode, ports = _settings(annotations, config)
    containers: Sequence[JsonObject] = pod_spec.get("containers") or []
    if not containers:
        raise InjectError("the pod has no containers")
    taken = {v.get("name") for v in pod_spec.get("volumes") or []}
    clash = taken & set(spec.VOLUME_NAMES)
    if clash:
        raise InjectError(f"the pod already has volumes named {', '.join(sorted(clash))}")

    warnings: list[str] = []
    url_env = str(annotations.get(DATABASE_URL_ENV, "DATABASE_URL")).strip()
    if not spec.valid_env_name(url_env):
        raise InjectError(f"{DATABASE_URL_ENV}={url_env!r} is not an environment variable name")
    upstream = None
    if UPSTREAM_DB in annotations:
        upstream = spec.check_upstream(str(annotations[UPSTREAM_DB]).strip(), UPSTREAM_DB)

    # First pass: which containers have a database URL we can point at the sidecar.
    rewrites: dict[int, str] = {}
    for index, container in enumerate(containers):
        found = spec.database_url(container, url_env)
        if found is None:
            continue
        if isinstance(found, spec.Unreadable):
            warnings.append(f"container {container.get('name')!r}: {found.why}; left unchanged")
            continue
        upstream_here, via_sidecar = spec.split_database_url(found, ports.db)
        if upstream is None:
            upstream = upstream_here
        elif upstream_here != upstream and UPSTREAM_DB not in annotations:
            warnings.append(
                f"container {container.get('name')!r}: {url_env} points at {upstream_here}, not "
                f"{upstream}; one sidecar has one upstream, so it is left unchanged"
            )
            continue
        rewrites[index] = via_sidecar

    patch: list[JsonObject] = []
    for index, container in enumerate(containers):
        env = spec.app_env(ports, rewrites.get(index), url_env)
        patch += _env_ops(index, container, env, warnings)
        patch += _mount_ops(index, container)

    store = str(annotations.get(STORE, "")).strip() or None
    app_port = str(annotations.get(APP_PORT, "")).strip() or None
    if app_port is not None and not (app_port.isdigit() and 0 < int(app_port) < 65536):
        raise InjectError(f"{APP_PORT}={app_port!r} is not a port number")
    sidecar = spec.sidecar_container(
        config, mode=mode, ports=ports, upstream=upstream, store=store, app_port=app_port
    )
    if config.native_sidecar:
        # A native sidecar (an init container that keeps running) starts before the app and
        # is ready before the app's first query; first, so init containers after it use it too.
        if "initContainers" in pod_spec:
            patch.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
        else:
            patch.append({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})
    else:
        patch.append({"op": "add", "path": "/spec/containers/-", "value": sidecar})
    volumes = spec.volumes(config)
    if "volumes" in pod_spec:
        patch += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes]
    else:
        patch.append({"op": "add", "path": "/spec/volumes", "value": volumes})
    # The marker last: annotations always exist here, since the pod was annotated to opt in.
    patch.append(
        {"op": "add", "path": pointer("metadata", "annotations", INJECTED), "value": "true"}
    )
    return Injection(reason="injected", patch=tuple(patch), warnings=tuple(warnings))


def _env_ops(
    index: int, container: Mapping[str, Any], env: Sequence[JsonObject], warnings: list[str]
) -> list[JsonObject]:
    existing: list[JsonObject] = list(container.get("env") or [])
    if "env" not in container:
        return [
            {"op": "add", "path": pointer("spec", "containers", index, "env"), "value": list(env)}
        ]
    at = {item.get("name"): position for position, item in enumerate(existing)}
    ops: list[JsonObject] = []
    for var in env:
        name = var["name"]
        position = at.get(name)
        if position is None:
            ops.append(
                {
                    "op": "add",
                    "path": pointer("spec", "containers", index, "env", "-"),
                    "value": var,
                }
            )
            continue
        old = existing[position]
        value = copy.deepcopy(var)
        if name in spec.MERGED_ENV:
            if "valueFrom" in old:
                warnings.append(
                    f"container {container.get('name')!r}: {name} comes from valueFrom; kept"
                )
                continue
            value["value"] = spec.merge_no_proxy(str(old.get("value", "")), var["value"])
        elif name in spec.CA_ENV and old.get("value") not in (None, var["value"]):
            warnings.append(
                f"container {container.get('name')!r}: {name}={old.get('value')!r} "
                "replaced by the flux CA"
            )
        # In place, so variables defined after it that refer to it with $(NAME) still see it.
        ops.append(
            {
                "op": "replace",
                "path": pointer("spec", "containers", index, "env", position),
                "value": value,
            }
        )
    return ops


def _mount_ops(index: int, container: Mapping[str, Any]) -> list[JsonObject]:
    mount = spec.app_ca_mount()
    mounts = container.get("volumeMounts")
    if mounts is None:
        return [
            {
                "op": "add",
                "path": pointer("spec", "containers", index, "volumeMounts"),
                "value": [mount],
            }
        ]
    if any(m.get("mountPath") == mount["mountPath"] for m in mounts):
        raise InjectError(
            f"container {container.get('name')!r} already mounts {mount['mountPath']}"
        )
    return [
        {
            "op": "add",
            "path": pointer("spec", "containers", index, "volumeMounts", "-"),
            "value": mount,
        }
    ]
