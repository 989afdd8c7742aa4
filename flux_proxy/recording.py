"""The sidecar's end of the recorder: a child process fed through a pipe.

``submit`` is on the data path. It packs the item (msgpack, one C call),
appends it to a list, and every few milliseconds the list is written to the
pipe in one system call. The pipe transport buffers what the
child has not read yet; past ``max_buffer`` bytes new items are dropped and
counted instead, so a slow disk never slows the traffic. Drop counts travel
to the store through the same pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from recorder.ingest import Counters, Item, pack_item

log = logging.getLogger("flux.recorder")

COUNTERS_EVERY = 1.0  # seconds
# Each write to the pipe wakes the recorder process; on a small machine that wake-up,
# once per query, cost more than the query. So items wait a few milliseconds and go
# together, or at once when this many bytes are waiting.
FLUSH_DELAY = 0.01
FLUSH_BYTES = 256 << 10
_SECRET_VARIABLES = frozenset({"FLUX_PRIVATE_KEY", "FLUX_ADMIN_TOKEN"})


class RecorderLink:
    """``public_keys``: what payloads are sealed to; None stores them in plaintext."""

    def __init__(
        self,
        store_location: str,
        *,
        public_keys: Sequence[str] | None,
        max_buffer: int = 64 << 20,
    ) -> None:
        self.store_location = store_location
        self.public_keys = list(public_keys) if public_keys else None
        self.max_buffer = max_buffer
        self.submitted = 0
        self.dropped = 0
        self._dropped_sent = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._scheduled = False
        self._process: asyncio.subprocess.Process | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._closed = False
        self.counters: Counter[str] = Counter()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        keys = [f"--public-key={key}" for key in self.public_keys or ()] or ["--no-encrypt"]
        # The recorder seals and never opens: it gets public keys and none of our secrets.
        child_env = {k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES}
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder.ingest", "--store", self.store_location, *keys,
            stdin=asyncio.subprocess.PIPE, env=child_env,
        )  # fmt: skip
        self._stdin = self._process.stdin
        self._ticker = self._loop.call_later(COUNTERS_EVERY, self._tick)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        """The recorder process runs and takes items: what is submitted now gets stored."""
        return self._process is not None and self._process.returncode is None and not self._closed

    def submit(self, item: Item) -> bool:
        if self._closed or self._stdin is None:
            self.dropped += 1
            return False
        try:
            transport = self._stdin.transport
            packed = pack_item(item)
            waiting = transport.get_write_buffer_size() + self._pending_bytes + len(packed)
            if waiting > self.max_buffer or transport.is_closing():
                self.dropped += 1
                return False
        except Exception:  # never into the proxy: a bad item is a dropped item
            log.exception("could not hand an item to the recorder")
            self.dropped += 1
            return False
        self._pending.append(packed)
        self._pending_bytes += len(packed)
        self.submitted += 1
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_later(FLUSH_DELAY, self._flush)
        return True

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending or self._stdin is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        transport = self._stdin.transport
        if transport.is_closing():
            self.dropped += 1
            return
        transport.write(data)

    def _tick(self) -> None:
        self._send_counters()
        if not self._closed and self._loop is not None:
            if self._process is not None and self._process.returncode is not None:
                log.error("the recorder process exited (%s); recording is off",
                          self._process.returncode)  # fmt: skip
                self._closed = True
                return
            self._ticker = self._loop.call_later(COUNTERS_EVERY, self._tick)

    def _send_counters(self) -> None:
        delta = self.dropped - self._dropped_sent
        if delta and self._stdin is not None and not self._stdin.transport.is_closing():
            self._dropped_sent = self.dropped
            self._pending.append(pack_item(Counters({"events.dropped": delta})))
            self._flush()

    def stats(self) -> dict[str, Any]:
        return {"submitted": self.submitted, "dropped": self.dropped}

    async def close(self, timeout: float = 30.0) -> None:
        """Hands over what is pending and waits for the child to store it and exit."""
        if self._process is None:
            return
        self._flush()
        self._send_counters()
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._stdin is not None:
            self._stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self._stdin.wait_closed()
        try:
            await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            log.error("the recorder did not finish within %.0fs; stopping it", timeout)
            self._process.kill()
            await self._process.wait()
