"""Compare a recorded inbound response with the one a replay produced, and judge the run.

Pure: no sockets, no store. ``flux replay`` hands it two :class:`ResponseView` and
gets back the differences, each at a path users can copy into ``--ignore``.

Paths (``status``, ``header:NAME``, ``$.items[*].id``...) are those of
:mod:`recorder.replaypaths`, which ``--ignore`` takes too. Volatile-looking values (UUIDs,
timestamps, epoch times, random hex ids) are still differences unless ignored:
a new run that returns another order id may be the bug being chased. Each such
difference says what it looks like so the ``--ignore`` to add is obvious.

Headers compared: those a client acts on (:data:`COMPARED_HEADERS`); ``set-cookie``
by cookie names only, since values are sessions and tokens minted per response.
The rest (date, server, content-length, etag, trace headers, ``x-*``) describe the
transfer or the run, not the answer, and would make every replay differ.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .replaypaths import IgnorePath, Segment, format_path

VERDICTS: Final = ("same", "fixed", "regressed", "differs")
EXIT_CODES: Final = {"same": 0, "fixed": 0, "regressed": 1, "differs": 1}
EXIT_NOT_REPLAYED: Final = 2
MAX_DIFFERENCES: Final = 100
_EXCERPT: Final = 200

# What a client acts on: how to parse the body, where it is sent next, what it may cache,
# which cookies it keeps, whether a browser lets a page read it.
COMPARED_HEADERS: Final = (
    "content-type",
    "content-encoding",
    "content-language",
    "content-disposition",
    "location",
    "cache-control",
    "vary",
    "set-cookie",
    "www-authenticate",
    "allow",
    "access-control-allow-origin",
    "access-control-allow-credentials",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseView:
    """One response as compared. ``status`` None: no response at all (``error`` says why)."""

    status: int | None
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    truncated: bool = False  # the recording kept only the first bytes of the body
    error: str | None = None

    @property
    def failed(self) -> bool:
        """A server-side failure: no response, or a 5xx."""
        return self.status is None or self.error is not None or self.status >= 500

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


@dataclass(frozen=True, slots=True, kw_only=True)
class Difference:
    where: str  # a path, as in the module docstring
    change: str  # "changed", "added" (only in the new response), "removed" (only recorded)
    recorded: Any = None
    new: Any = None
    volatile: str | None = None  # what both values look like: "uuid", "timestamp", ...
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"where": self.where, "change": self.change}
        if self.change != "added":
            out["recorded"] = self.recorded
        if self.change != "removed":
            out["new"] = self.new
        if self.volatile:
            out["volatile"] = self.volatile
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    differences: tuple[Difference, ...]
    ignored: int = 0  # differences that an --ignore path covered
    left_out: int = 0  # differences past MAX_DIFFERENCES
    body: str = "empty"  # how the bodies were compared: json, text, binary, empty


def verdict(*, recorded_failed: bool, new_failed: bool, comparison: Comparison) -> str:
    """``same`` when nothing (not ignored) differs; else whether the failure went or came."""
    if not comparison.differences and not comparison.left_out:
        return "same"
    if recorded_failed and not new_failed:
        return "fixed"
    if new_failed and not recorded_failed:
        return "regressed"
    return "differs"


# -- volatile values -----------------------------------------------------------------

_VOLATILE_PATTERNS: Final = (
    ("uuid", re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)),
    ("timestamp", re.compile(
        r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
    )),
    ("timestamp", re.compile(
        r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT"
    )),
    ("ulid", re.compile(r"\b[0-7][0-9A-HJKMNP-TV-Z]{25}\b")),
    ("random id", re.compile(r"\b[0-9a-f]{16,64}\b")),
)  # fmt: skip
# Epoch times in seconds, milliseconds, microseconds, nanoseconds (years 2001 to 2286).
_EPOCH_BANDS: Final = tuple((10**e, 10 ** (e + 1)) for e in (9, 12, 15, 18))


def volatile_kind(recorded: Any, new: Any) -> str | None:
    """What two differing values look like, when both look generated per run."""
    if isinstance(recorded, bool) or isinstance(new, bool):
        return None
    if isinstance(recorded, int | float) and isinstance(new, int | float):
        for low, high in _EPOCH_BANDS:
            if low <= recorded < high and low <= new < high:
                return "epoch time"
        return None
    if not isinstance(recorded, str) or not isinstance(new, str):
        return None
    masked_recorded, kinds = _mask(recorded)
    masked_new, new_kinds = _mask(new)
    if masked_recorded != masked_new or not kinds:
        return None
    return ", ".join(sorted(kinds | new_kinds))


def _mask(text: str) -> tuple[str, set[str]]:
    found: set[str] = set()
    for kind, pattern in _VOLATILE_PATTERNS:

        def swap(match: re.Match[str], kind: str = kind) -> str:
            found.add(kind)
            return f"<{kind}>"

        text = pattern.sub(swap, text)
    return text, found


# -- comparison ----------------------------------------------------------------------


@dataclass
class _Collector:
    ignore: Sequence[IgnorePath]
    kept: list[Difference] = field(default_factory=list)
    ignored: int = 0
    left_out: int = 0

    def add(self, difference: Difference, segments: Sequence[Segment] | None = None) -> None:
        if segments is not None and any(p.matches(segments) for p in self.ignore):
            self.ignored += 1
        elif len(self.kept) >= MAX_DIFFERENCES:
            self.left_out += 1
        else:
            self.kept.append(difference)

    def value(self, segments: Sequence[Segment], change: str, old: Any, new: Any) -> None:
        self.add(
            Difference(
                where=format_path(segments),
                change=change,
                recorded=old,
                new=new,
                volatile=volatile_kind(old, new) if change == "changed" else None,
            ),
            segments,
        )


def compare(
    recorded: ResponseView, new: ResponseView, ignore: Iterable[IgnorePath | str] = ()
) -> Comparison:
    paths = [p if isinstance(p, IgnorePath) else IgnorePath(p) for p in ignore]
    out = _Collector(paths)
    if recorded.status != new.status:
        out.add(Difference(where="status", change="changed", recorded=recorded.status,
                           new=new.status, detail=new.error))  # fmt: skip
    for name in COMPARED_HEADERS:
        _compare_header(name, recorded, new, out)
    kind = _compare_body(recorded, new, out)
    return Comparison(
        differences=tuple(out.kept), ignored=out.ignored, left_out=out.left_out, body=kind
    )


def _normalized(name: str, values: list[str]) -> Any:
    if not values:
        return None
    if name == "set-cookie":
        return sorted(v.split(";", 1)[0].split("=", 1)[0].strip() for v in values)
    joined = ", ".join(v.strip() for v in values)
    if name == "content-type":
        return ";".join(part.strip() for part in joined.lower().split(";"))
    if name in ("cache-control", "vary", "allow"):
        return sorted({part.strip().lower() for part in joined.split(",") if part.strip()})
    return joined


def _compare_header(name: str, recorded: ResponseView, new: ResponseView, out: _Collector) -> None:
    if any(p.matches_header(name) for p in out.ignore):
        if recorded.header_values(name) != new.header_values(name):
            out.ignored += 1
        return
    old = _normalized(name, recorded.header_values(name))
    now = _normalized(name, new.header_values(name))
    if old == now:
        return
    change = "added" if old is None else "removed" if now is None else "changed"
    volatile = volatile_kind(old, now) if isinstance(old, str) and isinstance(now, str) else None
    out.add(Difference(where=f"header:{name}", change=change, recorded=old, new=now,
                       volatile=volatile))  # fmt: skip


def decoded_body(view: ResponseView) -> bytes:
    """The body without its content-encoding, when it is one we can undo (gzip, deflate)."""
    encoding = ",".join(view.header_values("content-encoding")).strip().lower()
    if not view.body or encoding in ("", "identity"):
        return view.body
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(view.body, wbits=31)
        if encoding == "deflate":
            try:
                return zlib.decompress(view.body)
            except zlib.error:
                return zlib.decompress(view.body, wbits=-15)  # raw deflate, as some servers send
    except zlib.error:
        pass  # a truncated recording: compare what was kept, encoded
    return view.body


def _json_value(body: bytes) -> tuple[bool, Any]:
    stripped = body.strip()
    if not stripped or stripped[:1] not in b'{["-0123456789tfn':
        return False, None
    try:
        return True, json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None


def _compare_body(recorded: ResponseView, new: ResponseView, out: _Collector) -> str:
    old_body, new_body = decoded_body(recorded), decoded_body(new)
    if not old_body and not new_body:
        return "empty"
    if recorded.truncated:
        # Only a prefix was kept: the new body must start with it.
        if new_body[: len(old_body)] != old_body:
            _text_difference(old_body, new_body[: len(old_body)], out, "recorded body truncated")
        return "binary" if _is_binary(old_body) else "text"
    old_ok, old_value = _json_value(old_body)
    new_ok, new_value = _json_value(new_body)
    if old_ok and new_ok:
        _json_diff([], old_value, new_value, out)
        return "json"
    if old_body != new_body:
        _text_difference(old_body, new_body, out, None)
    return "binary" if _is_binary(old_body) or _is_binary(new_body) else "text"


def _category(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _json_diff(segments: list[Segment], old: Any, new: Any, out: _Collector) -> None:
    if any(p.matches(segments) for p in out.ignore):
        if old != new or _category(old) != _category(new):
            out.ignored += 1
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key in new:
                _json_diff([*segments, key], old[key], new[key], out)
            else:
                out.value([*segments, key], "removed", old[key], None)
        for key in new:
            if key not in old:
                out.value([*segments, key], "added", None, new[key])
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            if i >= len(new):
                out.value([*segments, i], "removed", old[i], None)
            elif i >= len(old):
                out.value([*segments, i], "added", None, new[i])
            else:
                _json_diff([*segments, i], old[i], new[i], out)
    elif _category(old) != _category(new) or old != new:
        out.value(segments, "changed", old, new)


def _is_binary(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return True
    return False


def _text_difference(old: bytes, new: bytes, out: _Collector, note: str | None) -> None:
    if _is_binary(old) or _is_binary(new):
        at = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                  min(len(old), len(new)))  # fmt: skip
        detail = f"{len(old)} bytes recorded, {len(new)} now; first difference at byte {at}"
        out.add(Difference(where="$", change="changed", recorded=f"{len(old)} bytes",
                           new=f"{len(new)} bytes", detail=_join(detail, note)), [])  # fmt: skip
        return
    old_text, new_text = old.decode(), new.decode()
    old_lines, new_lines = old_text.splitlines(), new_text.splitlines()
    line = next(
        (i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=False)) if a != b),
        min(len(old_lines), len(new_lines)),
    )
    shown_old = old_lines[line] if line < len(old_lines) else ""
    shown_new = new_lines[line] if line < len(new_lines) else ""
    detail = f"first difference at line {line + 1}"
    out.add(
        Difference(
            where="$",
            change="changed",
            recorded=excerpt(shown_old),
            new=excerpt(shown_new),
            volatile=volatile_kind(old_text, new_text),
            detail=_join(detail, note),
        ),
        [],
    )


def _join(a: str, b: str | None) -> str:
    return f"{a} ({b})" if b else a


def excerpt(value: Any, limit: int = _EXCERPT) -> str:
    """A value as one short line: JSON for structures, the text itself for strings."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
