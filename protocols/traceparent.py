"""W3C Trace Context ``traceparent`` values.

The proxy reads a ``traceparent`` from a statement's sqlcommenter comment (or
an HTTP header) to know which trace the statement belongs to, so parsing is
strict: a value that another W3C-compliant vendor would reject must not start
a recording under a made-up trace. Bad input yields ``None``, never an
exception, because it comes straight from client traffic.

Spec: https://www.w3.org/TR/trace-context/#traceparent-header
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = [
    "FLAG_RANDOM",
    "FLAG_SAMPLED",
    "TraceParent",
    "child",
    "new_traceparent",
    "parse_traceparent",
]

# Fixed-width prefix shared by every version; only lowercase hex is valid.
_PREFIX_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_HEX_RE = re.compile(r"[0-9a-f]+")
_PREFIX_LEN = 55  # "vv-" + 32 + "-" + 16 + "-" + 2
_INVALID_VERSION = 0xFF
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16

FLAG_SAMPLED = 0x01
# Level 2's "random trace-id" flag. Every other bit is reserved and the spec
# says vendors must send it as zero, so child() drops them.
FLAG_RANDOM = 0x02
_KNOWN_FLAGS = FLAG_SAMPLED | FLAG_RANDOM


def _is_hex_id(value: object, length: int) -> bool:
    return (
        isinstance(value, str)
        and len(value) == length
        and _HEX_RE.fullmatch(value) is not None
        and value.strip("0") != ""
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceParent:
    """One parsed ``traceparent``; constructing an invalid one raises ValueError."""

    version: int
    trace_id: str
    parent_id: str
    flags: int

    def __post_init__(self) -> None:
        # Validating here means any TraceParent in the system formats to a
        # value other vendors accept, however it was built.
        if not isinstance(self.version, int) or not 0 <= self.version < _INVALID_VERSION:
            raise ValueError(f"invalid traceparent version {self.version!r}")
        if not _is_hex_id(self.trace_id, 32):
            raise ValueError(f"invalid trace_id {self.trace_id!r}")
        if not _is_hex_id(self.parent_id, 16):
            raise ValueError(f"invalid parent_id {self.parent_id!r}")
        if not isinstance(self.flags, int) or not 0 <= self.flags <= 0xFF:
            raise ValueError(f"invalid trace flags {self.flags!r}")

    @property
    def sampled(self) -> bool:
        return bool(self.flags & FLAG_SAMPLED)

    def format(self) -> str:
        """The header value, e.g. ``00-<32 hex>-<16 hex>-01``."""
        return f"{self.version:02x}-{self.trace_id}-{self.parent_id}-{self.flags:02x}"


def parse_traceparent(value: str) -> TraceParent | None:
    """Parse a ``traceparent`` value; ``None`` if it is not valid per the spec."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) < _PREFIX_LEN:
        return None
    match = _PREFIX_RE.fullmatch(text, 0, _PREFIX_LEN)
    if match is None:
        return None
    version_hex, trace_id, parent_id, flags_hex = match.groups()
    version = int(version_hex, 16)
    if version == _INVALID_VERSION:
        return None
    # Version 00 has exactly four fields. Later versions may append fields,
    # which we ignore, but only after a dash: "...-01x" is junk.
    if len(text) > _PREFIX_LEN and (version == 0 or text[_PREFIX_LEN] != "-"):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return TraceParent(
        version=version, trace_id=trace_id, parent_id=parent_id, flags=int(flags_hex, 16)
    )


def _random_hex(nbytes: int) -> str:
    while True:
        value = os.urandom(nbytes).hex()
        # All-zero ids are invalid; with 64+ random bits this loop practically
        # never repeats, but the spec leaves no room for "practically".
        if value.strip("0"):
            return value


def new_traceparent(
    trace_id: str | None = None, parent_id: str | None = None, sampled: bool = True
) -> TraceParent:
    """A version-00 traceparent; ids not given are random. Invalid ids raise ValueError."""
    return TraceParent(
        version=0,
        trace_id=_random_hex(16) if trace_id is None else trace_id,
        parent_id=_random_hex(8) if parent_id is None else parent_id,
        flags=FLAG_SAMPLED if sampled else 0,
    )


def child(tp: TraceParent) -> TraceParent:
    """A traceparent for a new span under ``tp``: same trace, fresh parent id.

    The result is always version 00: the spec has vendors that received a
    higher version send the version they implement, not echo the other one.
    """
    return TraceParent(
        version=0,
        trace_id=tp.trace_id,
        parent_id=_random_hex(8),
        flags=tp.flags & _KNOWN_FLAGS,
    )
