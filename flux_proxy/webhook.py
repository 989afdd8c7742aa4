"""The mutating admission webhook: AdmissionReview v1 over HTTPS.

    POST /mutate    AdmissionReview in, AdmissionReview with a JSONPatch out
    GET  /healthz   liveness of the injector Deployment
    GET  /readyz    readiness: the certificate is loaded

The patch comes from ``injector.plan``. Whatever happens, a review we can read
is answered ``allowed: true``: a pod we cannot inject is admitted unchanged
with a warning, so the webhook can never be the reason an application does not
start (the chart also sets ``failurePolicy: Ignore`` for when it is down).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Mapping
from typing import Any

from .httpserve import HttpServer, Request, Response
from .injector import Injection, InjectorConfig, plan

log = logging.getLogger("flux.webhook")

API_VERSION = "admission.k8s.io/v1"
CERT_CHECK_EVERY = 30.0  # seconds; cert-manager renews in place, and we pick it up


def review_response(review: Mapping[str, Any], config: InjectorConfig) -> dict[str, Any]:
    """The AdmissionReview to send back for ``review``; raises ValueError if it is not one."""
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        raise ValueError(f"expected an {API_VERSION} AdmissionReview")
    request = review.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise ValueError("the AdmissionReview has no request.uid")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    injection = _plan_for(request, config)
    if injection.injected:
        patch = json.dumps(list(injection.patch), separators=(",", ":")).encode()
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(patch).decode()
    if injection.warnings:
        response["warnings"] = list(injection.warnings)
    name = _pod_name(request)
    log.info("%s: %s", name, injection.reason)
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def _plan_for(request: Mapping[str, Any], config: InjectorConfig) -> Injection:
    kind = (request.get("kind") or {}).get("kind")
    if kind != "Pod" or request.get("operation", "CREATE") != "CREATE":
        return Injection(reason=f"not a pod creation ({kind} {request.get('operation')})")
    pod = request.get("object")
    if not isinstance(pod, Mapping):
        return Injection(reason="no pod in the request")
    try:
        return plan(pod, config, namespace=request.get("namespace"))
    except Exception as exc:  # a bug here must still admit the pod
        log.exception("injection failed")
        warning = f"flux-proxy: not injected: internal error: {exc}"
        return Injection(reason=warning, warnings=(warning,))


def _pod_name(request: Mapping[str, Any]) -> str:
    pod = request.get("object")
    metadata = (pod.get("metadata") or {}) if isinstance(pod, Mapping) else {}
    name = request.get("name") or metadata.get("name") or metadata.get("generateName", "?") + "*"
    return f"{request.get('namespace') or metadata.get('namespace') or '-'}/{name}"


class Webhook:
    def __init__(self, config: InjectorConfig, *, cert: str, key: str) -> None:
        self.config = config
        self.cert = cert
        self.key = key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._cert_stamp()
        self.context.load_cert_chain(cert, key)
        self.server = HttpServer(self.handle, name="webhook", ssl_context=self.context)
        self._reloader: asyncio.Task[None] | None = None

    def _cert_stamp(self) -> tuple[int, ...]:
        # The inode too: a Secret volume swaps a symlink, which may keep size and mtime.
        cert, key = os.stat(self.cert), os.stat(self.key)
        return cert.st_mtime_ns, cert.st_ino, cert.st_size, key.st_mtime_ns, key.st_ino

    async def start(self, host: str, port: int) -> tuple[str, int]:
        address = await self.server.start(host, port)
        self._reloader = asyncio.get_running_loop().create_task(self._reload_certs())
        return address

    async def _reload_certs(self) -> None:
        while True:
            await asyncio.sleep(CERT_CHECK_EVERY)
            self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Loads the pair again if its files changed (a renewal); True if it did."""
        try:
            stamp = self._cert_stamp()
            if stamp == self._stamp:
                return False
            # Checked on a scratch context first: a certificate renewed before its key would
            # otherwise leave the live context with a mismatched pair.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.cert, self.key)
            # New handshakes use the new pair; open connections keep theirs.
            self.context.load_cert_chain(self.cert, self.key)
            self._stamp = stamp
        except (OSError, ssl.SSLError) as exc:
            log.warning("could not reload the certificate (keeping the old one): %s", exc)
            return False
        log.info("reloaded the serving certificate from %s", self.cert)
        return True

    async def close(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        await self.server.close()

    async def handle(self, request: Request) -> Response:
        match (request.method, request.path):
            case ("GET", "/healthz" | "/readyz"):
                return Response.text(200, "ok\n")
            case ("POST", "/mutate" | "/"):
                return self.mutate(request)
            case _:
                return Response.json(404, {"error": f"no such endpoint: {request.path}"})

    def mutate(self, request: Request) -> Response:
        content_type = (request.header("content-type") or "").split(";")[0].strip()
        if content_type != "application/json":
            return Response.json(415, {"error": "expected application/json"})
        try:
            review = json.loads(request.body)
            if not isinstance(review, dict):
                raise ValueError("expected a JSON object")
            return Response.json(200, review_response(review, self.config))
        except ValueError as exc:  # includes JSONDecodeError
            return Response.json(400, {"error": str(exc)})


async def _serve(config: InjectorConfig, listen: tuple[str, int], cert: str, key: str) -> int:
    try:
        webhook = Webhook(config, cert=cert, key=key)
        address = await webhook.start(*listen)
    except (OSError, ssl.SSLError) as exc:
        print(f"flux: cannot serve the webhook: {exc}", file=sys.stderr)
        return 2
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(f"flux: listening webhook {shown}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await webhook.close()
    return 0


def serve(config: InjectorConfig, listen: tuple[str, int], cert: str, key: str) -> int:
    return asyncio.run(_serve(config, listen, cert, key))
