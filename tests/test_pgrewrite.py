"""The data-path rewriter as wire transcripts: frontend bytes in, what goes upstream; backend
bytes in, what the client gets and what was captured. No sockets, no server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flux_proxy.pgrewrite import PgRewriter
from flux_proxy.pgrows import result_formats, server_major
from protocols import pgwire
from protocols.pgwire import (
    Bind,
    BindComplete,
    CommandComplete,
    DataRow,
    Describe,
    Execute,
    FieldDescription,
    NoData,
    ParameterDescription,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
)
from recorder.mutation.identity import TableIdentity
from recorder.mutation.planner import Planner

KEYED = TableIdentity(16384, "public", "t", "r", ("id",), "primary key", columns=("id", "v"))
LOOKUP = (
    b'[16384, "public", "t", "r", ["id"], true, false, false, ["id","v"], "table", null, false]'
)
OURS = ("old", "new", "oid", "version_old", "version_new")


def wire(*messages: Any) -> bytes:
    return b"".join(pgwire.encode(m) for m in messages)


def field(name: str) -> FieldDescription:
    return FieldDescription(name=name, type_oid=25, type_size=-1)


def rows_out(*client: str) -> RowDescription:
    return RowDescription(fields=tuple(field(n) for n in (*client, *OURS)))


def ours(old: bytes | None, new: bytes | None) -> tuple[bytes | None, ...]:
    return (old, new, b"16384", b"1" if old else None, b"2" if new else None)


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.fixture
def rewriter() -> PgRewriter:
    planner = Planner()
    planner.identities.put(("db", "app"), "t", KEYED)
    return PgRewriter(planner, database="db", server_major=18, user="app")


def feed(rw: PgRewriter, frontend: bytes, backend: bytes, chunks: Callable[[bytes], list[bytes]]) -> tuple[bytes, bytes, list[Any]]:  # fmt: skip
    upstream = b"".join(rw.frontend(c) for c in chunks(frontend))
    client, captured = b"", []
    for c in chunks(backend):
        out, done = rw.backend(c)
        client += out
        captured += done
    return upstream, client, captured


@pytest.mark.parametrize("chunks", [whole, bytewise])
def test_simple_update_without_returning_gets_no_rows(rewriter: PgRewriter, chunks: Callable[[bytes], list[bytes]]) -> None:  # fmt: skip
    frontend = wire(Query(query="UPDATE t SET v = 2 WHERE id = 1"))
    backend = wire(
        rows_out(), DataRow(values=ours(b'{"id":1,"v":1}', b'{"id":1,"v":2}')),
        CommandComplete(tag="UPDATE 1"), ReadyForQuery(status="I"),
    )  # fmt: skip
    upstream, client, captured = feed(rewriter, frontend, backend, chunks)
    sent = pgwire.decode_frontend(upstream[0], upstream[5:])
    assert isinstance(sent, Query) and "RETURNING pg_catalog.to_json(old)" in sent.query
    assert client == wire(CommandComplete(tag="UPDATE 1"), ReadyForQuery(status="I"))
    ((capture,),) = captured
    assert capture.tag == "UPDATE 1" and capture.op == "update" and capture.index == 0
    assert capture.rows == (ours(b'{"id":1,"v":1}', b'{"id":1,"v":2}'),)


def test_client_returning_is_kept_and_ours_cut(rewriter: PgRewriter) -> None:
    frontend = wire(Query(query="SELECT 1; DELETE FROM t WHERE id = 1 RETURNING id"))
    backend = wire(
        RowDescription(fields=(field("?column?"),)), DataRow(values=(b"1",)),
        CommandComplete(tag="SELECT 1"),
        rows_out("id"), DataRow(values=(b"1", *ours(b'{"id":1}', None))),
        CommandComplete(tag="DELETE 1"), ReadyForQuery(status="I"),
    )  # fmt: skip
    _, client, captured = feed(rewriter, frontend, backend, whole)
    assert client == wire(
        RowDescription(fields=(field("?column?"),)), DataRow(values=(b"1",)),
        CommandComplete(tag="SELECT 1"),
        RowDescription(fields=(field("id"),)), DataRow(values=(b"1",)),
        CommandComplete(tag="DELETE 1"), ReadyForQuery(status="I"),
    )  # fmt: skip
    ((capture,),) = captured
    assert capture.index == 1  # the second statement of the Query


def test_extended_protocol_describe_bind_formats_and_row_limits(rewriter: PgRewriter) -> None:
    frontend = wire(
        Parse(statement="s", query="UPDATE t SET v = $1 RETURNING id"),
        Describe(kind="S", name="s"),
        Bind(statement="s", params=(b"3",), result_formats=(1,)),
        Execute(max_rows=1), Execute(max_rows=1), Sync(),
        Parse(statement="n", query="UPDATE t SET v = 0"), Describe(kind="S", name="n"),
        Bind(statement="n", result_formats=(0, 1)), Execute(max_rows=5), Sync(),
    )  # fmt: skip
    upstream = rewriter.frontend(frontend)
    sent = []
    pos = 0
    while pos < len(upstream):
        end = pos + 1 + int.from_bytes(upstream[pos + 1 : pos + 5], "big")
        sent.append(pgwire.decode_frontend(upstream[pos], upstream[pos + 5 : end]))
        pos = end
    assert "RETURNING id, pg_catalog.to_json(old)" in sent[0].query
    assert sent[2].result_formats == (1,)  # one code applies to every column: left alone
    assert sent[8].result_formats == (0, 1, 0, 0, 0, 0, 0)  # one per column: ours are text
    assert sent[9].max_rows == 0  # the client expects no rows: ours come all at once
    backend = wire(
        ParseComplete(), ParameterDescription(type_oids=(23,)), rows_out("id"), BindComplete(),
        DataRow(values=(b"1", *ours(b"{}", b"{}"))), PortalSuspended(),
        DataRow(values=(b"2", *ours(b"{}", b"{}"))), CommandComplete(tag="UPDATE 2"),
        ReadyForQuery(status="I"),
        ParseComplete(), ParameterDescription(type_oids=()), rows_out(), BindComplete(),
        DataRow(values=ours(b"{}", b"{}")), CommandComplete(tag="UPDATE 1"),
        ReadyForQuery(status="I"),
    )  # fmt: skip
    client, captured = rewriter.backend(backend)
    assert client == wire(
        ParseComplete(), ParameterDescription(type_oids=(23,)),
        RowDescription(fields=(field("id"),)), BindComplete(),
        DataRow(values=(b"1",)), PortalSuspended(), DataRow(values=(b"2",)),
        CommandComplete(tag="UPDATE 2"), ReadyForQuery(status="I"),
        ParseComplete(), ParameterDescription(type_oids=()), NoData(), BindComplete(),
        CommandComplete(tag="UPDATE 1"), ReadyForQuery(status="I"),
    )  # fmt: skip
    first, second = captured
    assert [(c.index, c.tag, len(c.rows)) for c in first] == [(0, "", 1), (1, "UPDATE 2", 1)]
    assert [(c.index, c.tag) for c in second] == [(0, "UPDATE 1")]


def test_error_positions_point_into_the_clients_text(rewriter: PgRewriter) -> None:
    sql = "UPDATE t SET v = 1 WHERE nope = 2"
    upstream = rewriter.frontend(wire(Parse(query=sql), Sync()))
    rewritten = pgwire.decode_frontend(
        upstream[0], upstream[5 : upstream.index(b"S\x00\x00\x00\x04")]
    )
    assert isinstance(rewritten, Parse) and rewritten.query != sql
    where = rewritten.query.index("nope") + 1
    error = pgwire.error_response(
        "ERROR", "42703", 'column "nope" does not exist', position=str(where)
    )
    client, _ = rewriter.backend(wire(error, ReadyForQuery(status="I")))
    got = pgwire.decode_backend(client[0], client[5 : client.index(b"Z\x00")])
    assert isinstance(got, pgwire.ErrorResponse) and got.get("P") == str(sql.index("nope") + 1)


def test_reads_pass_untouched_and_unparsed(rewriter: PgRewriter) -> None:
    frontend = wire(Query(query="SELECT * FROM t WHERE v = 'UPDATE t SET v = 1'"))
    assert rewriter.frontend(frontend) == frontend
    backend = wire(RowDescription(fields=(field("v"),)), DataRow(values=(b"x",)),
                   CommandComplete(tag="SELECT 1"), ReadyForQuery(status="I"))  # fmt: skip
    assert rewriter.backend(backend) == (backend, [[]])
    assert rewriter.planner.parses == 0


def test_the_first_statement_on_a_table_learns_its_identity() -> None:
    planner = Planner()
    rw = PgRewriter(planner, database="db", server_major=18, user="app")
    upstream = rw.frontend(wire(Query(query="INSERT INTO t VALUES (1)")))
    assert b"to_json" not in upstream  # the lookup alone: no column of the table is read
    backend = wire(
        RowDescription(fields=(field("identity"),)), DataRow(values=(LOOKUP,)),
        CommandComplete(tag="INSERT 0 1"), ReadyForQuery(status="I"),
    )  # fmt: skip
    client, ((capture,),) = rw.backend(backend)
    assert client == wire(CommandComplete(tag="INSERT 0 1"), ReadyForQuery(status="I"))
    assert planner.identities.get(("db", "app"), "t") == KEYED
    assert capture.identity == tuple(KEYED.to_wire())
    assert capture.uncaptured == "identity-unknown" and capture.rows == ((LOOKUP,),)
    assert rw.counters == {"pg.mutations.uncaptured": 1,
                           "pg.mutations.uncaptured.identity-unknown": 1}  # fmt: skip
    again = rw.frontend(wire(Query(query="INSERT INTO t VALUES (2)")))
    assert b"pg_catalog.to_json(new)" in again


def test_a_role_change_is_followed_and_looked_up_again() -> None:
    planner = Planner()
    planner.identities.put(("db", "app"), "t", KEYED)
    rw = PgRewriter(planner, database="db", server_major=18, user="app")
    update = wire(Query(query="UPDATE t SET v = 1"))

    def captured() -> bool:
        sent = rw.frontend(update)
        assert (b"to_json" in sent) != (b"json_build_array(c.oid" in sent)
        return b"to_json(old)" in sent

    assert captured()
    rw.frontend(wire(Query(query="SET ROLE reporting")))
    assert not captured()  # another role's privileges: looked up again first
    rw.frontend(wire(Query(query="RESET ROLE")))
    assert captured()
    rw.frontend(wire(Query(query="BEGIN; SET LOCAL ROLE reporting")))
    assert not captured()
    rw.backend(wire(CommandComplete(tag="BEGIN"), CommandComplete(tag="SET"),
                    ReadyForQuery(status="T")))  # fmt: skip
    assert not captured()
    rw.backend(wire(CommandComplete(tag="COMMIT"), ReadyForQuery(status="I")))
    assert captured()  # SET LOCAL ended with its transaction


def test_each_distinct_text_is_parsed_once_and_reads_never() -> None:
    planner = Planner()
    planner.identities.put(("db", ""), "t", KEYED)
    rw = PgRewriter(planner, database="db", server_major=15)
    for n in range(3):
        rw.frontend(wire(Query(query="SELECT * FROM t"), Parse(query="SELECT $1"), Sync()))
        rw.frontend(wire(Query(query="UPDATE t SET v = 1 WHERE id = 2"),
                         Parse(query=f"DELETE FROM t WHERE id = {n % 2}"), Sync()))  # fmt: skip
    assert planner.parses == 3  # one UPDATE and two DELETE texts, however often they come


def test_server_major_from_the_startup_parameters() -> None:
    status = wire(pgwire.ParameterStatus(name="server_version", value="15.4 (Debian 15.4-1)"),
                  pgwire.ParameterStatus(name="TimeZone", value="UTC"))  # fmt: skip
    assert server_major(status) == 15
    assert server_major(wire(pgwire.ParameterStatus(name="server_version", value="18beta1"))) == 18
    assert server_major(b"") == 0


def test_a_table_the_rewrite_fails_on_runs_unchanged_for_a_while(rewriter: PgRewriter) -> None:
    rewriter.frontend(wire(Query(query="DELETE FROM t WHERE id = 1")))
    denied = pgwire.error_response("ERROR", "42501", "permission denied for table t")
    rewriter.backend(wire(denied, ReadyForQuery(status="I")))
    query = wire(Query(query="DELETE FROM t WHERE id = 2"))
    assert rewriter.frontend(query) == query  # fail-open: exactly what the client sent
    answer = wire(CommandComplete(tag="DELETE 1"), ReadyForQuery(status="I"))
    client, ((capture,),) = rewriter.backend(answer)
    assert client == answer
    assert capture.uncaptured == "rewrite-failed-42501" and capture.tag == "DELETE 1"


def test_a_statement_prepared_while_learning_is_prepared_again_once_known() -> None:
    planner = Planner()
    rw = PgRewriter(planner, database="db", server_major=18)
    rw.frontend(wire(Parse(statement="s", query="DELETE FROM t WHERE id = $1"),
                     Bind(statement="s", params=(b"1",)), Execute(), Sync()))  # fmt: skip
    rw.backend(wire(
        ParseComplete(), BindComplete(), DataRow(values=(LOOKUP,)),
        CommandComplete(tag="DELETE 1"), ReadyForQuery(status="I"),
    ))  # fmt: skip
    assert planner.identities.get(("db", ""), "t") == KEYED
    upstream = rw.frontend(wire(Bind(statement="s", params=(b"2",)), Execute(), Sync()))
    types = [upstream[p] for p in _starts(upstream)]
    assert bytes(types) == b"CPBES"  # our Close and Parse go first, under the same name
    assert b"(SELECT pg_catalog.json_build_array" not in upstream  # no catalog lookup now
    client, _ = rw.backend(wire(
        pgwire.CloseComplete(), ParseComplete(), BindComplete(),
        DataRow(values=(b"{}", None, b"16384", b"1", None)), CommandComplete(tag="DELETE 1"),
        ReadyForQuery(status="I"),
    ))  # fmt: skip
    assert client == wire(
        BindComplete(), CommandComplete(tag="DELETE 1"), ReadyForQuery(status="I")
    )


def test_a_statement_prepared_while_learning_runs_as_sent_if_it_may_not_be_captured() -> None:
    planner = Planner()
    rw = PgRewriter(planner, database="db", server_major=15)
    sql = "DELETE FROM t WHERE id = $1"
    rw.frontend(wire(Parse(statement="s", query=sql), Bind(statement="s", params=(b"1",)),
                     Execute(), Sync()))  # fmt: skip
    denied = LOOKUP.replace(b'"table"', b'"none"')
    rw.backend(wire(ParseComplete(), BindComplete(), DataRow(values=(denied,)),
                    CommandComplete(tag="DELETE 1"), ReadyForQuery(status="I")))  # fmt: skip
    upstream = rw.frontend(wire(Bind(statement="s", params=(b"2",)), Execute(), Sync()))
    starts = _starts(upstream)
    assert bytes(upstream[p] for p in starts) == b"CPBES"
    parse = pgwire.decode_frontend(upstream[starts[1]], upstream[starts[1] + 5 : starts[2]])
    assert isinstance(parse, Parse) and parse.query == sql  # the client's own text again
    client, (captures,) = rw.backend(wire(
        pgwire.CloseComplete(), ParseComplete(), BindComplete(), CommandComplete(tag="DELETE 1"),
        ReadyForQuery(status="I"),
    ))  # fmt: skip
    assert client == wire(BindComplete(), CommandComplete(tag="DELETE 1"),
                          ReadyForQuery(status="I"))  # fmt: skip
    assert [c.uncaptured for c in captures] == ["no-select-privilege"]


def _starts(data: bytes) -> list[int]:
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    return starts


@pytest.mark.parametrize(
    "bind",
    [Bind(), Bind(params=(None, b"x", b""), result_formats=(1,)),
     Bind(portal="p", statement="s", param_formats=(1, 0), params=(b"\x00\x01", None),
          result_formats=(0, 1, 1))],
)  # fmt: skip
def test_result_formats_are_counted_without_decoding(bind: Bind) -> None:
    assert result_formats(pgwire.encode(bind)[5:]) == len(bind.result_formats)


def _preloading() -> tuple[Planner, PgRewriter, bytes]:
    planner = Planner()
    rw = PgRewriter(planner, database="db", server_major=18, user="app")
    return planner, rw, rw.preload()


def test_the_session_start_loads_identities_and_the_client_sees_none_of_it() -> None:
    planner, rw, sent = _preloading()
    ours = pgwire.decode_frontend(sent[0], sent[5:])
    assert isinstance(ours, Query) and "pg_table_is_visible" in ours.query
    # The client's first statement, sent meanwhile, is held until our answer is in.
    first = wire(Query(query="UPDATE t SET v = 2 WHERE id = 1"))
    assert rw.frontend(first[:7]) == b"" and rw.frontend(first[7:]) == b""
    assert not rw.releasing
    answer = wire(
        RowDescription(fields=(field("json_build_array"), field("pg_table_is_visible"))),
        DataRow(values=(LOOKUP, b"t")), CommandComplete(tag="SELECT 1"), ReadyForQuery(status="I"),
    )  # fmt: skip
    client, done = rw.backend(answer)
    assert client == b"" and done == []  # not a byte, and no cycle of the client's
    assert planner.identities.get(("db", "app"), "t") == KEYED
    assert planner.identities.get(("db", "app"), "public.t") == KEYED
    assert rw.releasing
    upstream = rw.release()
    assert b"pg_catalog.to_json(old)" in upstream  # captured from the very first write
    assert not rw.releasing and rw.counters == {"pg.mutations.preloaded": 1}
    again = PgRewriter(planner, database="db", server_major=18, user="app")
    assert again.preload() == b""  # the scope is loaded: a new session pays nothing
    other = PgRewriter(planner, database="db", server_major=18, user="other")
    assert other.preload() != b""


def test_sessions_starting_during_a_preload_load_too() -> None:
    """Eight pool connections open at once: each must know its tables before its first
    write, so one still in flight elsewhere does not excuse a session from loading."""
    planner, _, first = _preloading()
    meanwhile = PgRewriter(planner, database="db", server_major=18, user="app")
    assert first != b"" and meanwhile.preload() == first
    assert ("db", "app") not in planner.identities.loaded


def test_a_failed_preload_is_swallowed_and_tables_are_looked_up_as_before() -> None:
    planner, rw, _ = _preloading()
    held = wire(Query(query="INSERT INTO t VALUES (1)"))
    assert rw.frontend(held) == b""
    error = pgwire.ErrorResponse(fields=(("S", "ERROR"), ("C", "42501"), ("M", "denied")))
    client, done = rw.backend(wire(error, ReadyForQuery(status="I")))
    assert client == b"" and done == []
    assert ("db", "app") not in planner.identities.loaded  # the next session tries again
    upstream = rw.release()
    assert b"json_build_array(c.oid" in upstream and b"to_json(new)" not in upstream
    assert rw.counters == {"pg.mutations.preload-failed": 1}


def test_ddl_of_unknown_names_makes_the_next_session_load_again() -> None:
    planner, rw, _ = _preloading()
    rw.backend(wire(CommandComplete(tag="SELECT 0"), ReadyForQuery(status="I")))
    assert ("db", "app") in planner.identities.loaded
    planner.plan("GRANT SELECT ON ALL TABLES IN SCHEMA public TO x", "db", 18, "app")
    assert ("db", "app") not in planner.identities.loaded
