"""recorder.analysis.why: the first failing span, what led to it, the rows it changed,
and the suggestion, on event lists shaped like the recorder's."""

from __future__ import annotations

from dataclasses import replace

import pytest

from recorder.analysis.suggest import for_call_status, for_connection, for_sqlstate
from recorder.analysis.why import explain
from tests.recorder.trace_builder import TraceBuilder


def unique_violation(sealed: bool = False) -> TraceBuilder:
    t = TraceBuilder(sealed=sealed)
    root = t.inbound("POST", "/users", 500)
    t.query("BEGIN", at=1, parent=root, tags=("BEGIN",), after="T")
    audit = t.query("INSERT INTO audit (what) VALUES ($1)", at=2, parent=root,
                    params=["signup"], tags=("INSERT 0 1",), rows=1, before="T", after="T")  # fmt: skip
    t.mutation(audit, "public.audit", "insert", "rolled_back", {"id": "7"})
    t.query(
        "INSERT INTO users (email) VALUES ($1)", at=3, parent=root, params=["a@example.com"],
        sqlstate="23505", message='duplicate key value violates unique constraint "users_email_key"',
        detail="Key (email)=(a@example.com) already exists.", before="T", after="E",
    )  # fmt: skip
    t.query("ROLLBACK", at=4, parent=root, tags=("ROLLBACK",), before="E", after="I")
    return t


def test_unique_violation_names_the_insert_its_path_rows_and_fix() -> None:
    t = unique_violation()
    why = explain(t.trace_id, t.events)
    assert why.failed and why.outcome == "POST /users → 500"
    cause = why.cause
    assert cause is not None
    assert cause.span.seq == 5 and cause.sqlstate == "23505"
    assert cause.advice.error_class == "unique_violation"
    assert "ON CONFLICT" in cause.advice.suggestion
    assert cause.fields["message"].startswith("duplicate key value")
    assert cause.fields["detail"] == "Key (email)=(a@example.com) already exists."
    assert cause.values == {"parameters": [["a@example.com"]]} and not cause.sealed
    assert cause.transaction is not None and cause.transaction.what.startswith("BEGIN")
    assert [a.kind for a in why.ancestors] == ["http.inbound"]
    assert [p.seq for p in why.preceding] == [2, 3]  # BEGIN and the audit insert; not the row
    assert [(m.table, m.op, m.status, m.key) for m in why.mutations] == [
        ("public.audit", "insert", "rolled_back", {"id": "7"})
    ]
    assert why.mutation_counts() == {"rolled_back": 1}
    assert [c.seq for c in why.consequences] == [1]  # the inbound 500 it caused
    as_json = why.to_json()
    assert as_json["cause"]["error_class"] == "unique_violation"
    assert as_json["cause"]["span"]["span_id"] == t.events[4].event.span_id


def test_sealed_payloads_still_give_the_class_but_no_values() -> None:
    t = unique_violation(sealed=True)
    why = explain(t.trace_id, t.events)
    cause = why.cause
    assert cause is not None and cause.sealed
    assert cause.advice.error_class == "unique_violation"
    assert cause.statement == "INSERT INTO users (email) VALUES ($1)"  # the normalized text
    assert cause.values is None and "message" not in cause.fields
    assert why.mutations[0].key is None and why.mutations[0].status == "rolled_back"


def test_upstream_503_is_the_cause_of_the_inbound_502() -> None:
    t = TraceBuilder()
    root = t.inbound("POST", "/pay", 502)
    t.query("SELECT balance FROM accounts WHERE id = $1", at=1, parent=root, rows=1)
    t.call("POST", "api.bank.test", "/charge", 503, at=5, parent=root,
           headers=[["retry-after", "30"]], response_body=b'{"error": "maintenance"}')  # fmt: skip
    why = explain(t.trace_id, t.events)
    cause = why.cause
    assert cause is not None and cause.span.seq == 3 and cause.status == 503
    assert cause.advice.error_class == "upstream_5xx"
    assert "api.bank.test" in cause.advice.suggestion and "after 30" in cause.advice.suggestion
    assert cause.call == "POST https://api.bank.test:443/charge"
    assert cause.values == {"response_body": '{"error": "maintenance"}'}


def test_connection_refused_call() -> None:
    t = TraceBuilder()
    root = t.inbound("GET", "/report", 500)
    t.call("GET", "127.0.0.1", "/x", 502, at=2, parent=root,
           error="[Errno 111] Connection refused", error_kind="connection_refused")  # fmt: skip
    cause = explain(t.trace_id, t.events).cause
    assert cause is not None and cause.error_kind == "connection_refused"
    assert cause.advice.error_class == "connection_refused"
    assert "127.0.0.1:443" in cause.advice.suggestion


def test_flagged_errors_come_before_a_handled_404() -> None:
    t = TraceBuilder()
    root = t.inbound("POST", "/orders", 500)
    t.call("GET", "api.test", "/customers/9", 404, at=1, parent=root)
    t.query("INSERT INTO orders (customer) VALUES ($1)", at=8, parent=root, sqlstate="23503")
    cause = explain(t.trace_id, t.events).cause
    assert cause is not None and cause.advice.error_class == "foreign_key_violation"

    only_4xx = TraceBuilder()
    root = only_4xx.inbound("GET", "/quote", 503)
    only_4xx.call("GET", "api.test", "/rates", 429, at=1, parent=root)
    cause = explain(only_4xx.trace_id, only_4xx.events).cause
    assert cause is not None and cause.advice.error_class == "rate_limited"


def test_the_earliest_failure_wins_over_what_it_caused() -> None:
    t = TraceBuilder()
    t.query("BEGIN", at=0, after="T")
    t.query("UPDATE a SET n = n + $1", at=1, sqlstate="40P01", before="T", after="E", ms=30)
    t.query("UPDATE b SET n = n + $1", at=40, sqlstate="25P02", before="E", after="E")
    why = explain(t.trace_id, t.events)
    assert why.failed and why.root is None
    assert why.cause is not None and why.cause.advice.error_class == "deadlock_detected"
    assert [c.seq for c in why.consequences] == [3]


def test_an_execution_that_did_not_fail() -> None:
    t = TraceBuilder()
    root = t.inbound("POST", "/users", 200)
    t.query("INSERT INTO users (email) VALUES ($1)", at=1, parent=root, sqlstate="23505")
    why = explain(t.trace_id, t.events)
    assert not why.failed and why.cause is None
    assert [h.seq for h in why.handled] == [2]  # a violation the app caught and handled

    job = TraceBuilder()
    job.query("SELECT 1", at=0, tags=("SELECT 1",), rows=1)
    assert not explain(job.trace_id, job.events).failed


def test_failure_of_the_request_itself() -> None:
    t = TraceBuilder()
    root = t.inbound("POST", "/orders", 500)
    insert = t.query("INSERT INTO orders (total) VALUES ($1)", at=1, parent=root, rows=1)
    t.mutation(insert, "public.orders", "insert", "committed", {"id": "3"})
    t.call("POST", "api.test", "/charge", 200, at=5, parent=root)
    why = explain(t.trace_id, t.events)
    cause = why.cause
    assert cause is not None and cause.span.seq == 1 and cause.advice.error_class == "app_error"
    # Everything the request did led up to its failing answer, and its rows stay committed.
    assert [p.seq for p in why.preceding] == [2, 4]
    assert why.mutation_counts() == {"committed": 1}

    down = TraceBuilder()
    down.inbound("GET", "/", 502, error="Connection refused", error_kind="connection_refused")
    cause = explain(down.trace_id, down.events).cause
    assert cause is not None and "the app" in cause.advice.suggestion


def test_committed_rows_before_the_failure_are_reported_as_committed() -> None:
    t = TraceBuilder()
    root = t.inbound("POST", "/transfer", 500)
    debit = t.query("UPDATE accounts SET balance = balance - $1 WHERE id = $2", at=1,
                    parent=root, tags=("UPDATE 1",), rows=1)  # fmt: skip
    t.mutation(debit, "public.accounts", "update", "committed", {"id": "1"})
    t.call("POST", "api.test", "/credit", 500, at=3, parent=root)
    why = explain(t.trace_id, t.events)
    assert why.mutation_counts() == {"committed": 1}


def test_a_parent_cycle_does_not_loop() -> None:
    t = TraceBuilder()
    a = t.query("SELECT 1", at=0, sqlstate="42P01")
    b = t.query("SELECT 2", at=1, parent=a)
    t.events[0] = replace(a, event=replace(a.event, parent_span_id=b.event.span_id))
    why = explain(t.trace_id, t.events)
    assert why.cause is not None and why.cause.advice.error_class == "undefined_table"


@pytest.mark.parametrize(
    ("sqlstate", "name"),
    [("23505", "unique_violation"), ("23503", "foreign_key_violation"),
     ("23502", "not_null_violation"), ("40001", "serialization_failure"),
     ("40P01", "deadlock_detected"), ("57014", "query_canceled"),
     ("55P03", "lock_not_available"), ("R9001", "replay_miss"),
     ("22P02", "data_exception"), ("ZZ999", "database_error")],
)  # fmt: skip
def test_sqlstate_classes(sqlstate: str, name: str) -> None:
    advice = for_sqlstate(sqlstate)
    assert advice.error_class == name and sqlstate in advice.title and advice.suggestion


def test_statement_timeout_is_told_apart_from_a_cancel() -> None:
    timeout = for_sqlstate("57014", "canceling statement due to statement timeout")
    assert timeout.error_class == "statement_timeout"
    assert for_sqlstate("57014", "canceling statement due to user request").error_class == (
        "query_canceled"
    )


@pytest.mark.parametrize(
    ("status", "name"),
    [(401, "auth_rejected"), (403, "auth_rejected"), (404, "not_found"), (409, "conflict"),
     (429, "rate_limited"), (422, "upstream_4xx"), (500, "upstream_5xx"), (503, "upstream_5xx")],
)  # fmt: skip
def test_http_status_classes(status: int, name: str) -> None:
    advice = for_call_status(status, "GET https://api.test:443/x")
    assert advice.error_class == name and "api.test" in advice.suggestion


@pytest.mark.parametrize("kind", ["connection_refused", "dns", "tls", "timeout"])
def test_connection_error_classes(kind: str) -> None:
    advice = for_connection(kind, "api.test:443")
    assert advice.error_class == kind and "api.test:443" in advice.suggestion
