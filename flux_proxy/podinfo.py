"""The pod's annotations, read from a downward-API file, and the mode they ask for.

Kubernetes writes ``metadata.annotations`` into the file as sorted lines of
``key="value"``, the value quoted the way Go's ``%q`` does, and replaces the
file atomically (a symlink swap) when an annotation changes. The kubelet
refreshes it within its sync period, so ``kubectl annotate pod … flux.dev/mode=replay``
reaches us without a restart.

We poll rather than use inotify: the swap replaces the directory the watch
would be on, polling a small file twice a second costs nothing, and it works
the same on every filesystem the volume may be backed by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from .state import MODES, SidecarState

log = logging.getLogger("flux.podinfo")

MODE_ANNOTATION = "flux.dev/mode"
POLL_INTERVAL = 0.5

_SIMPLE_ESCAPES = {
    "a": 0x07, "b": 0x08, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B,
    "\\": 0x5C, '"': 0x22, "'": 0x27,
}  # fmt: skip


def unquote_go(quoted: str) -> str:
    """Reverses Go's ``strconv.Quote``: ``\\x`` escapes are raw bytes, others are runes."""
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise ValueError(f"not a quoted string: {quoted!r}")
    out = bytearray()
    body = quoted[1:-1]
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode()
            i += 1
            continue
        kind = body[i + 1 : i + 2]
        if kind in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[kind])
            i += 2
        elif kind == "x":
            out.append(int(_hex(body, i + 2, 2), 16))
            i += 4
        elif kind in ("u", "U"):
            width = 4 if kind == "u" else 8
            out += chr(int(_hex(body, i + 2, width), 16)).encode("utf-8", "surrogatepass")
            i += 2 + width
        elif kind.isdigit():
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        else:
            raise ValueError(f"bad escape \\{kind} in {quoted!r}")
    return out.decode("utf-8", "replace")


def _hex(body: str, start: int, width: int) -> str:
    digits = body[start : start + width]
    if len(digits) != width or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"bad hex escape in {body!r}")
    return digits


def parse_annotations(text: str) -> dict[str, str]:
    """Parses the downward-API file; a line that does not parse is skipped, not fatal."""
    annotations: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key:
            continue
        try:
            annotations[key] = unquote_go(value)
        except ValueError:
            log.warning("skipping an annotation line that does not parse: %r", line[:200])
    return annotations


class AnnotationWatcher:
    """Applies ``flux.dev/mode`` from the annotations file whenever its value changes.

    Only a *change* of that annotation switches the mode, so a switch made through
    the admin API is not undone by the next poll, nor by someone editing another
    annotation of the pod.
    """

    def __init__(
        self, path: str | Path, state: SidecarState, *, interval: float = POLL_INTERVAL
    ) -> None:
        self.path = Path(path)
        self.state = state
        self.interval = interval
        self._last_text: str | None = None
        self._last_mode: str | None = None
        self._missing_logged = False
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            if not self._missing_logged:
                log.warning("cannot read the pod annotations at %s: %s", self.path, exc)
                self._missing_logged = True
            return
        self._missing_logged = False
        if text == self._last_text:
            return
        self._last_text = text
        mode = parse_annotations(text).get(MODE_ANNOTATION)
        if mode is None or mode.strip() == self._last_mode:
            return
        mode = self._last_mode = mode.strip()
        if mode not in MODES:
            self.state.counters["annotations.invalid_mode"] += 1
            log.warning(
                "ignoring %s=%r: expected one of %s", MODE_ANNOTATION, mode, ", ".join(MODES)
            )
            return
        if self.state.set_mode(mode, source=f"annotation {MODE_ANNOTATION}"):
            self.state.counters["annotations.mode_changes"] += 1

    def start(self) -> None:
        self.check()  # the mode at start follows the annotation, before any listener opens
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # a bad file must not end the watch
                log.exception("reading the pod annotations failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
