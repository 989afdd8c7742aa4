"""udp events and replay matching: pure functions over datagrams, no sockets."""

from __future__ import annotations

from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from protocols.dns import decode, is_truncated, peek_id
from recorder.model import PG_QUERY, UDP, Event
from recorder.store import SEALED_MARKER
from recorder.udpcapture import CLOSED, TIMEOUT, udp_event, udp_fingerprint
from recorder.udpreplay import UdpReplay

UPSTREAM = "127.0.0.1:53"


def query(name: str, rdtype: str = "A", *, ident: int = 0x1234) -> bytes:
    q = dns.message.make_query(name, rdtype)
    q.id = ident
    return q.to_wire()


def answer(request: bytes, *records: str, rcode: int = 0, tc: bool = False) -> bytes:
    q = dns.message.from_wire(request)
    r = dns.message.make_response(q)
    for text in records:
        rdtype, value = text.split(" ", 1)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", rdtype, value))
    r.set_rcode(rcode)
    if tc:
        r.flags |= dns.flags.TC
    wire: bytes = r.to_wire()
    return wire


def event(request: bytes, responses: list[bytes], **kw: Any) -> Event:
    fields: dict[str, Any] = {
        "listen": "127.0.0.1:4053",
        "upstream": UPSTREAM,
        "client": "127.0.0.1:40000",
        "is_dns": True,
        "request": request,
        "responses": responses,
        "start_ns": 1_000,
        "duration_ns": 500,
    }
    fields.update(kw)
    return udp_event(**fields)


# -- udp_event


def test_dns_event_has_question_answers_and_payload() -> None:
    request = query("Example.COM.")
    response = answer(request, "A 192.0.2.1", "A 192.0.2.2")
    e = event(request, [response])
    assert e.kind == UDP and e.trace_id is None and not e.error
    assert e.fingerprint == "dns IN A example.com."
    a = e.attrs
    assert a["qname"] == "Example.COM." and a["qtype"] == "A" and a["qclass"] == "IN"
    assert a["id"] == 0x1234 and a["rcode"] == "NOERROR" and a["tc"] is False
    assert a["answers"] == ["A 192.0.2.1", "A 192.0.2.2"]
    assert a["request_bytes"] == len(request) and a["response_bytes"] == [len(response)]
    assert "decode_error" not in a
    assert e.payload == {"request": request, "responses": [response]}


def test_dns_event_flags_truncated_answers() -> None:
    request = query("big.example.")
    e = event(request, [answer(request, "TXT x", tc=True)])
    assert e.attrs["tc"] is True and "tc" in e.attrs["flags"]


def test_dns_timeout_event_is_an_error_with_the_question() -> None:
    request = query("slow.example.", "AAAA")
    e = event(request, [], error=TIMEOUT)
    assert e.error and e.attrs["error"] == "timeout"
    assert e.attrs["qname"] == "slow.example." and e.attrs["qtype"] == "AAAA"
    assert "rcode" not in e.attrs and e.attrs["response_bytes"] == []
    assert event(request, [], error=CLOSED).attrs["error"] == "closed"


@pytest.mark.parametrize("garbage", [b"\x01", b"not a dns message at all", bytes(range(40))])
def test_malformed_dns_is_recorded_with_a_decode_error(garbage: bytes) -> None:
    e = event(garbage, [])
    assert e.attrs["decode_error"].startswith("request: ")
    assert e.payload["request"] == garbage
    assert e.fingerprint == udp_fingerprint(garbage, None)
    if len(garbage) >= 12:
        assert e.attrs["id"] == peek_id(garbage)
    else:
        assert "id" not in e.attrs


def test_malformed_request_with_an_answer_takes_the_question_from_the_answer() -> None:
    good = query("example.com.")
    garbled = good[:-2]  # qclass cut off
    e = event(garbled, [answer(good, rcode=dns.rcode.FORMERR)])
    assert e.attrs["decode_error"].startswith("request: ")
    assert e.attrs["rcode"] == "FORMERR" and e.attrs["qname"] == "example.com."


def test_malformed_response_is_noted() -> None:
    request = query("example.com.")
    # A header saying "truncated, one question", then a label running past the end.
    e = event(request, [b"\x12\x34\x82\x00\x00\x01" + bytes(6) + b"\x3fjunk"])
    assert e.attrs["decode_error"].startswith("response: ")
    assert e.attrs["tc"] is True and e.attrs["qname"] == "example.com."


def test_generic_event_keeps_no_payload_in_plaintext() -> None:
    e = event(b"secret=hunter2", [b"ok", b"ok too"], is_dns=False)
    assert e.attrs["dns"] is False and "qname" not in e.attrs
    assert e.attrs["response_bytes"] == [2, 6]
    assert e.fingerprint is not None and e.fingerprint.startswith("udp ")
    assert "hunter2" not in repr(e.attrs) + e.fingerprint
    assert udp_fingerprint(b"a", None) != udp_fingerprint(b"b", None)


# -- replay


def loaded(*events: Event, is_dns: bool = True) -> UdpReplay:
    table = UdpReplay(is_dns=is_dns)
    table.load(events, upstream=UPSTREAM)
    return table


def test_dns_replay_answers_with_the_new_id_and_the_recorded_bytes() -> None:
    request = query("example.com.", ident=1)
    response = answer(request, "A 192.0.2.1")
    table = loaded(event(request, [response]))
    # Another id, another case, EDNS on: still the same question.
    q = dns.message.make_query("EXAMPLE.com.", "A", use_edns=0)
    q.id = 777
    result = table.answer(q.to_wire())
    assert result.hit and len(result.packets) == 1
    assert peek_id(result.packets[0]) == 777
    assert result.packets[0][2:] == response[2:]


def test_dns_replay_miss_is_servfail_with_the_request_id() -> None:
    table = loaded(event(query("example.com."), [answer(query("example.com."), "A 192.0.2.1")]))
    for name, rdtype in (("other.example.", "A"), ("example.com.", "AAAA")):
        result = table.answer(query(name, rdtype, ident=4321))
        assert not result.hit and result.reason and name in result.reason
        (packet,) = result.packets
        reply = decode(packet)
        assert reply.header.id == 4321 and reply.header.rcode == dns.rcode.SERVFAIL
        assert reply.questions[0].name == name


def test_dns_replay_of_garbage() -> None:
    table = loaded()
    assert table.answer(b"\x00\x07short").packets == ()
    (packet,) = table.answer(b"\x00\x07" + b"\xff" * 20).packets
    assert peek_id(packet) == 7 and packet[3] & 0x0F == dns.rcode.SERVFAIL


def test_repeats_are_used_in_recorded_order_then_the_last_one_stays() -> None:
    request = query("counter.example.", "TXT")
    events = [
        event(request, [answer(request, f'TXT "{n}"')], start_ns=start)
        for n, start in ((2, 200), (1, 100), (3, 300))  # written out of order
    ]
    table = loaded(*events)
    seen = [
        dns.message.from_wire(table.answer(request).packets[0]).answer[0][0].to_text()
        for _ in range(5)
    ]
    assert seen == ['"1"', '"2"', '"3"', '"3"', '"3"']


def test_load_keeps_only_replayable_recordings_of_this_upstream() -> None:
    request = query("example.com.")
    good = event(request, [answer(request, "A 192.0.2.1")])
    other_upstream = event(request, [answer(request, "A 203.0.113.9")], upstream="10.0.0.1:53")
    unanswered = event(query("slow.example."), [], error=TIMEOUT)
    generic = event(b"ping", [b"pong"], is_dns=False)
    sealed = Event(**{**_fields(good), "payload": {SEALED_MARKER: "key-1"}})
    not_udp = Event(**{**_fields(good), "kind": PG_QUERY})
    table = UdpReplay(is_dns=True)
    assert (
        table.load([other_upstream, unanswered, generic, sealed, not_udp, good], upstream=UPSTREAM)
        == 1
    )
    assert len(table) == 1 and table.skipped == 2  # unanswered and sealed
    reply = dns.message.from_wire(table.answer(request).packets[0])
    assert reply.answer[0][0].to_text() == "192.0.2.1"
    assert not table.answer(query("slow.example.")).hit


def test_generic_replay_matches_exact_bytes_and_sends_every_response() -> None:
    table = loaded(
        event(b"ping", [b"pong"], is_dns=False),
        event(b"twice", [b"one", b"two"], is_dns=False),
        event(b"fire-and-forget", [], is_dns=False),
        is_dns=False,
    )
    assert table.answer(b"ping").packets == (b"pong",)
    assert table.answer(b"twice").packets == (b"one", b"two")
    silent = table.answer(b"fire-and-forget")
    assert silent.hit and silent.packets == ()
    miss = table.answer(b"ping ")
    assert not miss.hit and miss.packets == ()


def test_truncated_answers_replay_as_recorded() -> None:
    request = query("big.example.")
    table = loaded(event(request, [answer(request, "TXT x", tc=True)]))
    assert is_truncated(table.answer(query("big.example.", ident=9)).packets[0])


def _fields(e: Event) -> dict[str, Any]:
    return {name: getattr(e, name) for name in Event.__slots__}
