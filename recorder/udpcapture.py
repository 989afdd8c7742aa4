"""One ``udp`` event per request datagram: the request, its response(s), and timing.

Built on the sidecar's event loop, so it stays cheap: DNS messages are small and
decoded once each, and nothing here allocates per byte. What may hold user data
(the datagrams themselves) goes in the payload, which is sealed once encryption
lands; the plaintext attrs say where it went, how big it was and, for DNS, the
question and answers, which is what a trace view and replay matching need.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

from protocols import dns

from .model import UDP, Event, new_span_id

# Why a request has no (complete) answer; stored in ``attrs["error"]``.
TIMEOUT: Final = "timeout"  # the upstream did not answer within the timeout
CLOSED: Final = "closed"  # the sidecar stopped while the request was pending


def udp_fingerprint(request: bytes, question: tuple[str, int, int] | None) -> str:
    """A matching key that holds no payload: the DNS question, or a digest of the datagram."""
    if question is not None:
        name, qtype, qclass = question
        return f"dns {dns.class_name(qclass)} {dns.type_name(qtype)} {name}"
    # A digest, not the bytes: the datagram may hold secrets (metrics tags, log lines).
    return "udp " + hashlib.blake2b(request, digest_size=8).hexdigest()


def udp_event(
    *,
    listen: str,
    upstream: str,
    client: str,
    is_dns: bool,
    request: bytes,
    responses: Sequence[bytes],
    start_ns: int,
    duration_ns: int,
    error: str | None = None,
    responses_dropped: int = 0,
) -> Event:
    """The event for one request; ``error`` is TIMEOUT or CLOSED when it got no answer."""
    attrs: dict[str, Any] = {
        "listen": listen,
        "upstream": upstream,
        "client": client,
        "dns": is_dns,
        "request_bytes": len(request),
        "response_bytes": [len(r) for r in responses],
    }
    if responses_dropped:
        attrs["responses_dropped"] = responses_dropped
    if error is not None:
        attrs["error"] = error
    question: tuple[str, int, int] | None = None
    if is_dns:
        question = _dns_attrs(attrs, request, responses[0] if responses else None)
    return Event(
        kind=UDP,
        trace_id=None,  # attribution of datagrams to traces is a later issue
        span_id=new_span_id(),
        parent_span_id=None,
        conn_id=None,
        start_ns=start_ns,
        duration_ns=duration_ns,
        error=error is not None,
        fingerprint=udp_fingerprint(request, question),
        attrs=attrs,
        payload={"request": request, "responses": list(responses)},
    )


def _dns_attrs(
    attrs: dict[str, Any], request: bytes, response: bytes | None
) -> tuple[str, int, int] | None:
    """Adds the question (from the request) and the outcome (from the response).

    Garbage is recorded, not refused: the sidecar forwards whatever the client
    sent, so the record says what failed to decode instead of dropping it.
    """
    question: tuple[str, int, int] | None = None
    problems: list[str] = []
    try:
        query = dns.decode(request)
    except dns.DNSDecodeError as exc:
        problems.append(f"request: {exc}")
        ident = dns.peek_id(request)
        if ident is not None:
            attrs["id"] = ident
    else:
        question = dns.question_key(query)
        info = dns.summary(query)
        attrs.update(id=info["id"], opcode=info["opcode"], qname=info["qname"])
        attrs.update(qtype=info["qtype"], qclass=info["qclass"])
    if response is not None:
        attrs["tc"] = dns.is_truncated(response)
        try:
            answer = dns.decode(response)
        except dns.DNSDecodeError as exc:
            problems.append(f"response: {exc}")
        else:
            info = dns.summary(answer)
            attrs.update(rcode=info["rcode"], flags=info["flags"], answers=info["answers"])
            if "qname" not in attrs:  # a garbled request; the answer still names the question
                attrs.update(qname=info["qname"], qtype=info["qtype"], qclass=info["qclass"])
    if problems:
        attrs["decode_error"] = "; ".join(problems)
    return question
