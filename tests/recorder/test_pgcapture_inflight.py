"""Attribution of recorded cycles to the one inbound request in flight, the weakest rule:
beneath a statement's comment and its transaction's trace, never instead of them."""

from __future__ import annotations

import msgpack

from protocols import pgwire as pw
from protocols.traceparent import TraceParent, new_traceparent
from recorder.ingest import pack_item, unpack_item
from recorder.model import Event
from recorder.pgcapture import PgCycleCaptured, PgEventBuilder, PgSessionEnded, PgSessionStarted

REQUEST = new_traceparent("a0000000000000000000000000000001", "b000000000000001")
OTHER = new_traceparent("a0000000000000000000000000000002", "b000000000000002")
COMMENTED = "c0000000000000000000000000000003"
COMMENT = f" /*traceparent='00-{COMMENTED}-d000000000000003-01'*/"


def cycle(sql: str, tag: str, status: str, inflight: TraceParent | None) -> PgCycleCaptured:
    backend = pw.encode(pw.CommandComplete(tag=tag)) + pw.encode(pw.ReadyForQuery(status=status))  # type: ignore[arg-type]
    raw = pw.RawCycle(
        frontend=pw.encode(pw.Query(query=sql)),
        backend=backend,
        start_ns=1,
        end_ns=2,
        status=status,
        truncated=False,
        complete=True,
    )
    return PgCycleCaptured(conn_id="c1", cycle=raw, inflight=inflight)


def builder() -> PgEventBuilder:
    events = PgEventBuilder()
    events.process(
        PgSessionStarted(
            conn_id="c1",
            parameters=(("user", "u"), ("database", "d")),
            backend=pw.encode(pw.ReadyForQuery(status="I")),
            client="127.0.0.1:1",
            upstream="127.0.0.1:2",
            start_ns=0,
            end_ns=1,
        )
    )
    return events


def traces(events: list[Event]) -> list[tuple[str | None, str | None, str]]:
    return [(e.trace_id, e.parent_span_id, e.attrs.get("trace_source", "")) for e in events]


def test_the_request_in_flight_travels_to_the_recorder_process() -> None:
    item = cycle("SELECT 1", "SELECT 1", "I", REQUEST)
    back = unpack_item(msgpack.unpackb(pack_item(item), raw=False))
    assert isinstance(back, PgCycleCaptured)
    assert back.inflight == REQUEST and back.cycle == item.cycle and back.captures == ()
    alone = unpack_item(msgpack.unpackb(pack_item(cycle("SELECT 1", "SELECT 1", "I", None))))
    assert isinstance(alone, PgCycleCaptured) and alone.inflight is None


def test_a_statement_outside_a_transaction_goes_to_the_request() -> None:
    events = builder()
    got = events.process(cycle("SELECT 1", "SELECT 1", "I", REQUEST))
    assert traces(got) == [(REQUEST.trace_id, REQUEST.parent_id, "inflight")]
    assert traces(events.process(cycle("SELECT 2", "SELECT 1", "I", None))) == [(None, None, "")]
    # A comment is stronger.
    got = events.process(cycle("SELECT 3" + COMMENT, "SELECT 1", "I", REQUEST))
    assert [t for t, _, _ in traces(got)] == [COMMENTED]


def test_a_transaction_goes_whole_to_the_request_at_its_start() -> None:
    events = builder()
    assert events.process(cycle("BEGIN", "BEGIN", "T", REQUEST)) == []  # held until attributed
    assert events.process(cycle("UPDATE t SET v = 1", "UPDATE 1", "T", OTHER)) == []
    got = events.process(cycle("COMMIT", "COMMIT", "I", None))
    assert traces(got) == [(REQUEST.trace_id, REQUEST.parent_id, "inflight")] * 3


def test_a_comment_in_the_transaction_outranks_the_request() -> None:
    events = builder()
    assert events.process(cycle("BEGIN", "BEGIN", "T", REQUEST)) == []
    got = events.process(cycle("UPDATE t SET v = 1" + COMMENT, "UPDATE 1", "T", REQUEST))
    got += events.process(cycle("COMMIT", "COMMIT", "I", REQUEST))
    assert [t for t, _, _ in traces(got)] == [COMMENTED] * 3


def test_a_transaction_left_open_goes_to_the_request_when_the_session_ends() -> None:
    events = builder()
    assert events.process(cycle("BEGIN", "BEGIN", "T", REQUEST)) == []
    got = events.process(PgSessionEnded(conn_id="c1", end_ns=3, reason="client closed"))
    assert traces(got) == [(REQUEST.trace_id, REQUEST.parent_id, "inflight")]
