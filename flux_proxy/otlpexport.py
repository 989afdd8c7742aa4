"""Live span export: ``flux serve --otlp-endpoint URL`` (``FLUX_OTLP_ENDPOINT``) POSTs
what the sidecar records to ``URL/v1/traces`` as OTLP/HTTP JSON.

Where this runs, and why: a child process that follows the store.

- The spans worth sending are the decoded events, and they exist only in the store: a
  ``pg.query`` is made from raw wire bytes by the recorder process, mutations when
  their transaction ends. The proxy's data path holds neither.
- The recorder process (``recorder/``) opens no sockets, by design; a slow collector
  must not slow storage either.
- A thread in the sidecar would share the GIL with the event loop, which is what
  ``recorder.ingest`` explains the sidecar avoids. A child process shares nothing with
  it: the data path never waits for a collector, whatever the collector does.

So the sidecar starts ``python -m flux_proxy.otlpexport``, which reads the events
stored since the sidecar started, by id, every ``--interval`` seconds (read-only; WAL
lets it read beside the writer), turns them into spans (``recorder.export.otlp``) and
POSTs them in batches. At most ``--max-queue`` spans wait for the collector: while
the queue is full the follower stops reading (the store keeps the rest); a batch the
collector refuses twice is dropped. Failures are counted, never fatal, in the store's
counters (``flux stats``): ``otlp.spans.exported``, ``otlp.spans.dropped``,
``otlp.posts.failed``. It exits when its standard input closes (the sidecar stopping),
after one last read and send.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

from recorder.export.otlp import SpanConverter, export_request
from recorder.store import StoreError, open_store

from .config import Settings

log = logging.getLogger("flux.otlp")

SPANS_EXPORTED: Final = "otlp.spans.exported"
SPANS_DROPPED: Final = "otlp.spans.dropped"
POSTS_FAILED: Final = "otlp.posts.failed"
TRACES_PATH: Final = "/v1/traces"
_SECRET_VARIABLES: Final = frozenset({"FLUX_PRIVATE_KEY", "FLUX_ADMIN_TOKEN"})


def package_version() -> str:
    try:
        return importlib.metadata.version("flux-proxy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def traces_url(endpoint: str) -> str:
    """``endpoint`` + ``/v1/traces`` (as OTEL_EXPORTER_OTLP_ENDPOINT is read), unless it
    names that path already. Raises ValueError for what is not an http(s) URL."""
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"--otlp-endpoint expects an http:// or https:// URL, got {endpoint!r}")
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


class SpanFollower:
    """Follows one store from ``since_ns`` and ships its events' spans to ``url``."""

    def __init__(
        self,
        store_location: str,
        url: str,
        *,
        since_ns: int,
        service_name: str = "flux-proxy",
        scope_version: str = "",
        batch: int = 512,
        max_queue: int = 8192,
        timeout: float = 10.0,
    ) -> None:
        self.location = store_location
        self.url = url
        self.since_ns = since_ns
        self.service_name = service_name
        self.scope_version = scope_version
        self.batch = batch
        self.max_queue = max_queue
        self.timeout = timeout
        self.after_id: int | None = None
        self.queue: deque[dict[str, Any]] = deque()
        self.converter = SpanConverter()
        self.counts = {SPANS_EXPORTED: 0, SPANS_DROPPED: 0, POSTS_FAILED: 0}
        self._saved = dict(self.counts)
        self._failed_once = False  # the head batch was refused once already

    def read(self) -> int:
        """Queues the spans of events stored since the last read, up to the queue's room."""
        room = self.max_queue - len(self.queue)
        if room <= 0:
            return 0
        try:
            store = open_store(self.location, readonly=True)
        except (StoreError, OSError) as exc:
            log.debug("store not readable yet: %s", exc)
            return 0
        try:
            stored = list(store.events(since_ns=self.since_ns, after_id=self.after_id, limit=room))
        finally:
            store.close()
        if stored:
            self.after_id = stored[-1].id
        spans = self.converter.spans(s.event for s in stored)
        self.queue.extend(spans)
        return len(spans)

    def send(self) -> bool:
        """POSTs the head batch; False when the collector did not take it."""
        if not self.queue:
            return True
        spans = [self.queue[i] for i in range(min(self.batch, len(self.queue)))]
        body = json.dumps(
            export_request(spans, service_name=self.service_name, scope_version=self.scope_version)
        ).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.counts[POSTS_FAILED] += 1
            log.warning("OTLP export to %s failed: %s", self.url, exc)
            if self._failed_once:  # twice: drop it, so one bad batch cannot stop the rest
                self._pop(len(spans))
                self.counts[SPANS_DROPPED] += len(spans)
                self._failed_once = False
            else:
                self._failed_once = True
            return False
        self._failed_once = False
        self._pop(len(spans))
        rejected = _rejected(reply)
        self.counts[SPANS_EXPORTED] += len(spans) - rejected
        self.counts[SPANS_DROPPED] += rejected
        return True

    def _pop(self, count: int) -> None:
        for _ in range(count):
            self.queue.popleft()

    def pending_counters(self) -> dict[str, int]:
        """The counter increments not yet saved to the store (and marks them saved)."""
        delta = {k: v - self._saved[k] for k, v in self.counts.items() if v != self._saved[k]}
        self._saved = dict(self.counts)
        return delta

    def save_counters(self) -> None:
        delta = self.pending_counters()
        if not delta:
            return
        try:
            store = open_store(self.location)
            try:
                store.write_batch([], delta)
            finally:
                store.close()
        except (StoreError, OSError) as exc:
            log.warning("could not save the OTLP counters: %s", exc)


def _rejected(reply: bytes) -> int:
    """``partialSuccess.rejectedSpans`` of an OTLP/HTTP JSON response, 0 if none."""
    try:
        document = json.loads(reply or b"{}")
        rejected = document.get("partialSuccess", {}).get("rejectedSpans", 0)
        return max(int(rejected), 0)
    except (ValueError, AttributeError, TypeError):
        return 0


def follow(follower: SpanFollower, stop: threading.Event, interval: float) -> None:
    """Reads and sends until ``stop``; then one last round, so the end is not lost."""
    backoff = interval
    last_save = time.monotonic()
    while True:
        stopping = stop.is_set()
        try:
            follower.read()  # moves past what it read even if converting it fails
            while follower.queue and follower.send():
                pass
        except Exception:  # never fatal: the next round goes on from the next events
            log.exception("OTLP export round failed")
        # Spans left over mean the collector is down or refusing: slow down.
        backoff = min(backoff * 2, 30.0) if follower.queue else interval
        if stopping or time.monotonic() - last_save >= 2.0:
            follower.save_counters()
            last_save = time.monotonic()
        if stopping:
            return
        stop.wait(backoff)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flux_proxy.otlpexport")
    parser.add_argument("--store", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--since-ns", type=int, required=True)
    parser.add_argument("--service-name", default="flux-proxy")
    parser.add_argument("--scope-version", default="")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="flux %(levelname)s %(name)s: %(message)s")
    follower = SpanFollower(
        args.store,
        traces_url(args.endpoint),
        since_ns=args.since_ns,
        service_name=args.service_name,
        scope_version=args.scope_version,
    )
    # The sidecar ends us by closing the pipe, after its recorder stored the last events;
    # a Ctrl-C meant for the sidecar must not make us stop before that last round.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()

    def wait_for_eof() -> None:
        with contextlib.suppress(OSError):
            while sys.stdin.buffer.read(4096):
                pass
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    follow(follower, stop, args.interval)
    return 0


class OtlpLink:
    """The sidecar's end: starts the follower process and stops it (stdin closed)."""

    def __init__(
        self, store_location: str, endpoint: str, *, service_name: str, scope_version: str
    ) -> None:
        self.url = traces_url(endpoint)  # ValueError now rather than in the child
        self.endpoint = endpoint
        self.store_location = store_location
        self.service_name = service_name
        self.scope_version = scope_version
        self._process: asyncio.subprocess.Process | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> OtlpLink:
        assert settings.otlp_endpoint is not None
        return cls(
            settings.store_location,
            settings.otlp_endpoint,
            # The standard OpenTelemetry variable: the spans describe the app's work.
            service_name=os.environ.get("OTEL_SERVICE_NAME") or "flux-proxy",
            scope_version=package_version(),
        )

    async def start(self, since_ns: int | None = None, interval: float = 1.0) -> None:
        """Follows what is stored from ``since_ns`` (default now: before any listener opens,
        so every event of this run is after it)."""
        since_ns = time.time_ns() if since_ns is None else since_ns
        env: Mapping[str, str] = {
            k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES
        }  # it reads plaintext fields only: no key, no token
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flux_proxy.otlpexport", "--store", self.store_location,
            "--endpoint", self.endpoint, "--since-ns", str(since_ns),
            "--service-name", self.service_name, "--scope-version", self.scope_version,
            "--interval", str(interval),
            stdin=asyncio.subprocess.PIPE, env=dict(env),
        )  # fmt: skip

    async def close(self, timeout: float = 30.0) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await process.stdin.wait_closed()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            log.error("the OTLP exporter did not finish within %.0fs; stopping it", timeout)
            process.kill()
            await process.wait()


if __name__ == "__main__":
    sys.exit(main())
