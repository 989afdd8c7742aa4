"""Pairing recorded frontend messages with the backend messages that answered them."""

from __future__ import annotations

from protocols import pgwire as pw
from recorder.pgexchange import split_exchanges, split_messages

E = pw.encode


def b(*messages: object) -> bytes:
    return b"".join(E(m) for m in messages)  # type: ignore[arg-type]


PARSE = pw.Parse(statement="s1", query="SELECT $1::int", param_types=())
BIND = pw.Bind(portal="", statement="s1", param_formats=(), params=(b"7",), result_formats=())
ROWS = pw.RowDescription(
    fields=(
        pw.FieldDescription(
            name="int4",
            table_oid=0,
            column_number=0,
            type_oid=23,
            type_size=4,
            type_modifier=-1,
            format=0,
        ),
    )
)
NOTICE = pw.NoticeResponse(fields=(("S", "NOTICE"), ("C", "00000"), ("M", "hi")))


def test_extended_cycle_pairs_each_message_with_its_answer() -> None:
    frontend = b(
        PARSE,
        pw.Describe(kind="S", name="s1"),
        pw.Flush(),
        BIND,
        pw.Execute(portal="", max_rows=0),
        pw.Sync(),
    )
    backend = b(
        pw.ParseComplete(),
        pw.ParameterDescription(type_oids=(23,)),
        ROWS,
        pw.BindComplete(),
        NOTICE,
        pw.DataRow(values=(b"7",)),
        pw.CommandComplete(tag="SELECT 1"),
        pw.ReadyForQuery(status="I"),
    )
    exchanges = split_exchanges(frontend, backend)
    kinds = [type(x.request).__name__ for x in exchanges]
    assert kinds == ["Parse", "Describe", "Flush", "Bind", "Execute", "Sync"]
    answers = [[m[0:1] for m in x.response] for x in exchanges]
    assert answers == [[b"1"], [b"t", b"T"], [], [b"2"], [b"N", b"D", b"C"], [b"Z"]]


def test_after_an_error_messages_until_sync_get_no_answer() -> None:
    bad = pw.Parse(statement="", query="SELEC 1", param_types=())
    frontend = b(
        bad,
        pw.Bind(portal="", statement="", param_formats=(), params=(), result_formats=()),
        pw.Execute(portal="", max_rows=0),
        pw.Sync(),
    )
    error = pw.error_response("ERROR", "42601", "syntax error")
    backend = b(error, pw.ReadyForQuery(status="I"))
    exchanges = split_exchanges(frontend, backend)
    assert exchanges[0].failed
    assert [x.response for x in exchanges[1:3]] == [(), ()]
    assert exchanges[3].response == (E(pw.ReadyForQuery(status="I")),)


def test_simple_query_takes_everything_up_to_ready_for_query() -> None:
    frontend = b(pw.Query(query="SELECT 1; SELECT 2"))
    backend = b(
        ROWS,
        pw.DataRow(values=(b"1",)),
        pw.CommandComplete(tag="SELECT 1"),
        ROWS,
        pw.DataRow(values=(b"2",)),
        pw.CommandComplete(tag="SELECT 1"),
        pw.ReadyForQuery(status="I"),
    )
    (exchange,) = split_exchanges(frontend, backend)
    assert b"".join(exchange.response) == backend


def test_row_limited_execute_ends_at_portal_suspended() -> None:
    frontend = b(
        BIND, pw.Execute(portal="", max_rows=1), pw.Execute(portal="", max_rows=1), pw.Sync()
    )
    backend = b(
        pw.BindComplete(),
        pw.DataRow(values=(b"1",)),
        pw.PortalSuspended(),
        pw.DataRow(values=(b"2",)),
        pw.CommandComplete(tag="SELECT 1"),
        pw.ReadyForQuery(status="T"),
    )
    first, second = split_exchanges(frontend, backend)[1:3]
    assert [m[0:1] for m in first.response] == [b"D", b"s"]
    assert [m[0:1] for m in second.response] == [b"D", b"C"]


def test_truncated_recording_stops_cleanly() -> None:
    frontend = b(pw.Query(query="SELECT 1"))
    backend = b(ROWS, pw.DataRow(values=(b"1" * 100,)))[:-10]
    (exchange,) = split_exchanges(frontend, backend)
    assert [m[0:1] for m in exchange.response] == [b"T"]
    assert split_messages(backend) == [E(ROWS)]
