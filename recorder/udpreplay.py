"""Replay matching for datagrams: recorded ``udp`` events in, answers to new requests out.

Pure: the sidecar loads the events from a store and sends what `answer` returns.

- DNS: matched by question (name lowercased, type, class), so a new query id,
  other EDNS options or 0x20 case randomisation still match; the recorded
  answer goes back byte for byte except for its id, which becomes the new
  request's. A miss is a SERVFAIL, so the client stops waiting at once instead
  of retrying into silence.
- Generic UDP: matched by the exact request bytes; every recorded response is
  sent back in order. A miss sends nothing, as an upstream that drops the
  datagram would.

Several recordings of one request are used in recorded order; once exhausted
the last one keeps answering (a service that polls keeps getting its latest
state rather than going back in time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocols import dns

from .model import UDP, Event


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayAnswer:
    hit: bool
    packets: tuple[bytes, ...]  # what to send back to the client, in order; may be empty
    reason: str | None = None  # why it missed, for the log


@dataclass(slots=True)
class _Recordings:
    responses: list[tuple[bytes, ...]] = field(default_factory=list)
    used: int = 0

    def take(self) -> tuple[bytes, ...]:
        chosen = self.responses[min(self.used, len(self.responses) - 1)]
        self.used += 1
        return chosen


DnsKey = tuple[str, int, int]


class UdpReplay:
    """The recordings of one listener (identified by its upstream address and DNS flag)."""

    def __init__(self, *, is_dns: bool) -> None:
        self.is_dns = is_dns
        self.skipped = 0  # recordings that cannot answer anything (sealed, unanswered, garbage)
        self._table: dict[DnsKey | bytes, _Recordings] = {}

    def __len__(self) -> int:
        return sum(len(r.responses) for r in self._table.values())

    def add(self, request: bytes, responses: Sequence[bytes]) -> bool:
        """One recorded exchange; False (and counted in ``skipped``) if it cannot be replayed."""
        key: DnsKey | bytes | None
        if self.is_dns:
            # An unanswered query has nothing to replay; a timeout in replay would
            # only make the client wait for the SERVFAIL it gets at once anyway.
            key = _dns_key(request) if responses and len(responses[0]) >= 12 else None
        else:
            key = request
        if key is None:
            self.skipped += 1
            return False
        recordings = self._table.get(key)
        if recordings is None:
            recordings = self._table[key] = _Recordings()
        recordings.responses.append(tuple(responses[:1]) if self.is_dns else tuple(responses))
        return True

    def load(self, events: Iterable[Event], *, upstream: str) -> int:
        """Adds the ``udp`` events recorded toward ``upstream``, in request order."""
        chosen = [
            e
            for e in events
            if e.kind == UDP
            and e.attrs.get("upstream") == upstream
            and bool(e.attrs.get("dns")) == self.is_dns
        ]
        chosen.sort(key=lambda e: e.start_ns)  # stable: equal times keep write order
        added = 0
        for event in chosen:
            request, responses = _exchange(event.payload)
            if request is None:
                self.skipped += 1  # sealed by a key we do not hold, or not a udp payload
                continue
            added += self.add(request, responses)
        return added

    def answer(self, request: bytes) -> ReplayAnswer:
        if not self.is_dns:
            found = self._table.get(request)
            if found is None:
                return ReplayAnswer(hit=False, packets=(), reason="no recording of this datagram")
            return ReplayAnswer(hit=True, packets=found.take())
        try:
            query = dns.decode(request)
        except dns.DNSDecodeError as exc:
            # A header is enough for a SERVFAIL with the client's id; less is unanswerable.
            packets = (dns.servfail(request),) if len(request) >= 12 else ()
            return ReplayAnswer(hit=False, packets=packets, reason=f"malformed query: {exc}")
        key = dns.question_key(query)
        found = self._table.get(key) if key is not None else None
        if found is None:
            shown = f"{key[0]} {dns.type_name(key[1])}" if key else "no question"
            return ReplayAnswer(
                hit=False, packets=(dns.servfail(query),), reason=f"not recorded: {shown}"
            )
        recorded = found.take()[0]
        return ReplayAnswer(hit=True, packets=(dns.with_id(recorded, query.header.id),))


def _dns_key(request: bytes) -> DnsKey | None:
    try:
        return dns.question_key(dns.decode(request))
    except dns.DNSDecodeError:
        return None


def _exchange(payload: dict[str, Any]) -> tuple[bytes | None, list[bytes]]:
    request = payload.get("request")
    responses = payload.get("responses")
    if not isinstance(request, bytes) or not isinstance(responses, list):
        return None, []
    return request, [r for r in responses if isinstance(r, bytes)]
