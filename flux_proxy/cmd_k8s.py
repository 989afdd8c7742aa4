"""Kubernetes commands: ``flux inject --pod FILE`` and ``flux webhook serve``.

Both build the same :class:`InjectorConfig` from the same flags, so the patch
``flux inject`` prints offline is the one the webhook returns in the cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .config import env, parse_hostport
from .injector import DEFAULT_CA_SECRET, DEFAULT_IMAGE, MODES, InjectorConfig, plan

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


def register(commands: Any) -> None:
    inject = commands.add_parser(
        "inject",
        help="print the JSON patch the webhook would return for a pod",
        description="Reads a Pod (or a workload's pod template) as JSON or YAML and prints "
        "the JSON patch (RFC 6902) the admission webhook would apply; why, and any warning, "
        "go to stderr. '-' reads standard input.",
    )
    inject.add_argument("--pod", required=True, metavar="FILE", help="POD.json or POD.yaml")
    inject.add_argument("--namespace", "-n", help="namespace the pod is created in")
    add_injector_flags(inject)
    inject.set_defaults(handler=run_inject)

    webhook = commands.add_parser("webhook", help="the mutating admission webhook")
    actions = webhook.add_subparsers(dest="webhook_command", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="serve AdmissionReview v1 over HTTPS")
    serve.add_argument(
        "--listen",
        default=env("FLUX_WEBHOOK_LISTEN", "127.0.0.1:8443"),
        help="HOST:PORT (FLUX_WEBHOOK_LISTEN, default 127.0.0.1:8443; in a cluster 0.0.0.0:8443)",
    )
    serve.add_argument("--cert", default=env("FLUX_WEBHOOK_CERT"), help="PEM certificate chain")
    serve.add_argument("--key", default=env("FLUX_WEBHOOK_KEY"), help="PEM private key")
    add_injector_flags(serve)
    serve.set_defaults(handler=run_webhook)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_injector_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what is injected")
    group.add_argument(
        "--sidecar-image",
        default=env("FLUX_SIDECAR_IMAGE", DEFAULT_IMAGE),
        help=f"sidecar image (FLUX_SIDECAR_IMAGE, default {DEFAULT_IMAGE})",
    )
    group.add_argument(
        "--image-pull-policy",
        default=env("FLUX_SIDECAR_PULL_POLICY", "IfNotPresent"),
        choices=["Always", "IfNotPresent", "Never"],
    )
    group.add_argument(
        "--ca-secret",
        default=env("FLUX_CA_SECRET", DEFAULT_CA_SECRET),
        help="Secret with ca.crt and ca.key in the pod's namespace (FLUX_CA_SECRET)",
    )
    group.add_argument(
        "--public-key",
        default=env("FLUX_PUBLIC_KEY"),
        help="recipient public key given to every sidecar (FLUX_PUBLIC_KEY)",
    )
    group.add_argument(
        "--require-key",
        type=_bool,
        default=_bool(env("FLUX_REQUIRE_KEY", "true") or "true"),
        metavar="BOOL",
        help="inject only when a public key is configured (FLUX_REQUIRE_KEY, default true)",
    )
    group.add_argument(
        "--default-mode",
        default=env("FLUX_DEFAULT_MODE", "record"),
        choices=MODES,
        help="mode when the pod has no flux.dev/mode (FLUX_DEFAULT_MODE, default record)",
    )
    group.add_argument(
        "--native-sidecar",
        type=_bool,
        default=_bool(env("FLUX_NATIVE_SIDECAR", "true") or "true"),
        metavar="BOOL",
        help="inject as an init container with restartPolicy Always, Kubernetes >= 1.29 "
        "(FLUX_NATIVE_SIDECAR, default true); false adds a regular container",
    )
    group.add_argument(
        "--sidecar-resources",
        default=env("FLUX_SIDECAR_RESOURCES", "{}"),
        metavar="JSON",
        help='resources of the sidecar, e.g. {"requests":{"cpu":"50m"}} (FLUX_SIDECAR_RESOURCES)',
    )
    group.add_argument(
        "--namespaces",
        default=env("FLUX_INJECT_NAMESPACES", ""),
        help="comma-separated namespaces that have the CA Secret; empty: any "
        "(FLUX_INJECT_NAMESPACES)",
    )


def config_from_args(args: argparse.Namespace) -> InjectorConfig:
    try:
        resources = json.loads(args.sidecar_resources or "{}")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sidecar-resources is not JSON: {exc}") from exc
    if not isinstance(resources, dict):
        raise argparse.ArgumentTypeError("--sidecar-resources must be a JSON object")
    return InjectorConfig(
        image=args.sidecar_image,
        image_pull_policy=args.image_pull_policy,
        ca_secret=args.ca_secret,
        public_key=args.public_key or None,
        require_key=args.require_key,
        default_mode=args.default_mode,
        native_sidecar=args.native_sidecar,
        resources=resources,
        namespaces=tuple(n.strip() for n in args.namespaces.split(",") if n.strip()),
    )


def load_documents(text: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return [json.loads(text)]
    from ruamel.yaml import YAML  # mitmproxy's dependency; loaded only for YAML input

    return [doc for doc in YAML(typ="safe", pure=True).load_all(text) if doc is not None]


def pod_from(documents: list[Any]) -> tuple[dict[str, Any], str | None]:
    """The first Pod, or the pod template of the first workload; and a note on which."""
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        kind = doc.get("kind", "Pod")
        if kind == "Pod":
            return doc, None
        if kind in WORKLOAD_KINDS:
            template = (doc.get("spec") or {}).get("template") or {}
            name = (doc.get("metadata") or {}).get("name", "?")
            pod = {"apiVersion": "v1", "kind": "Pod", **template}
            pod.setdefault("metadata", {}).setdefault(
                "namespace", (doc.get("metadata") or {}).get("namespace")
            )
            return pod, f"the patch for the pod template of {kind}/{name}"
    raise ValueError("no Pod (or Deployment, StatefulSet, DaemonSet, ReplicaSet, Job) found")


def run_inject(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        text = sys.stdin.read() if args.pod == "-" else Path(args.pod).read_text()
        pod, note = pod_from(load_documents(text))
    except (OSError, ValueError) as exc:
        print(f"flux: cannot read a pod from {args.pod}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # ruamel's parse errors share no base class with ValueError
        print(f"flux: cannot parse {args.pod}: {exc}", file=sys.stderr)
        return 2
    injection = plan(pod, config, namespace=args.namespace)
    if note:
        print(f"flux: {note}", file=sys.stderr)
    print(f"flux: {injection.reason}", file=sys.stderr)
    for warning in injection.warnings:
        print(f"flux: warning: {warning}", file=sys.stderr)
    print(json.dumps(list(injection.patch), indent=2))
    return 0


def run_webhook(args: argparse.Namespace) -> int:
    if not args.cert or not args.key:
        print("flux: the webhook serves TLS only: give --cert and --key", file=sys.stderr)
        return 2
    from .webhook import serve  # the event loop loads only for this command

    listen = parse_hostport(args.listen, flag="--listen")
    return serve(config_from_args(args), listen, args.cert, args.key)
