"""recorder.analysis.diff: alignment of two executions and what changed between them."""

from __future__ import annotations

from recorder.analysis.diff import TraceDiff, diff
from tests.recorder.trace_builder import TraceBuilder, rows_backend

ORDER = "SELECT id, total FROM orders WHERE id = $1"


def order_request(
    *, statement: str = ORDER, order: int = 7, call: bool = False, query_ms: float = 2,
    total: str = "10.00", sealed: bool = False, status: int = 200,
) -> TraceBuilder:  # fmt: skip
    t = TraceBuilder(sealed=sealed)
    root = t.inbound("GET", f"/orders/{order}", status)
    t.query("SELECT count(*) FROM sessions WHERE token = $1", at=1, parent=root,
            params=["tok"], tags=("SELECT 1",), rows=1)  # fmt: skip
    t.query(statement, at=4, ms=query_ms, parent=root, params=[order], tags=("SELECT 1",),
            rows=1, backend=rows_backend((str(order), total)))  # fmt: skip
    if call:
        t.call("GET", "api.test", "/stock", 200, at=30, parent=root, response_body=b"{}")
    return t


def run(a: TraceBuilder, b: TraceBuilder, **kw: float) -> TraceDiff:
    return diff(a.trace_id, a.events, b.trace_id, b.events, **kw)


def test_the_same_request_twice_has_no_differences() -> None:
    result = run(order_request(), order_request())
    assert not result.differs
    assert [s.op for s in result.spans] == ["same", "same", "same"]
    assert result.to_json()["summary"] == {"same": 3, "changed": 0, "only_a": 0, "only_b": 0}


def test_a_changed_query_and_an_added_call() -> None:
    changed = "SELECT id, total, status FROM orders WHERE id = $1"
    result = run(order_request(), order_request(statement=changed, call=True))
    assert result.differs
    assert [s.op for s in result.spans] == ["same", "same", "changed", "only_b"]
    statement = result.spans[2]
    assert statement.a is not None and statement.b is not None
    assert (statement.a.seq, statement.b.seq) == (3, 3)
    (change,) = [c for c in statement.changes if c.field == "statement"]
    assert (change.a, change.b) == (ORDER, changed)
    added = result.spans[3]
    assert added.a is None and added.b is not None and added.b.kind == "http.outbound"
    assert "GET https://api.test:443/stock" in added.b.what


def test_a_removed_call_is_only_in_a() -> None:
    result = run(order_request(call=True), order_request())
    assert [s.op for s in result.spans][-1] == "only_a"


def test_parameters_rows_and_results() -> None:
    result = run(order_request(total="10.00"), order_request(total="12.50"))
    query = result.spans[2]
    assert query.op == "changed"
    assert [c.field for c in query.changes] == ["row 1"]
    assert (query.changes[0].a, query.changes[0].b) == (["7", "10.00"], ["7", "12.50"])

    other_order = run(order_request(order=7), order_request(order=8))
    inbound, _, query = other_order.spans
    # The path is part of an inbound request's key; the kind-wise pass still pairs them.
    assert inbound.op == "changed"
    assert [(c.field, c.a, c.b) for c in inbound.changes] == [
        ("target", "GET /orders/7", "GET /orders/8")
    ]
    fields = {c.field: (c.a, c.b) for c in query.changes}
    assert fields["parameters"] == ([[7]], [[8]])


def test_sealed_payloads_compare_on_plaintext_only() -> None:
    result = run(order_request(total="1", sealed=True), order_request(total="2", sealed=True))
    assert not result.differs  # values differ, but without the key nothing shows it


def test_status_and_sqlstate_changes() -> None:
    a, b = order_request(), order_request(status=500)
    root = b.events[0]
    b.query("INSERT INTO audit VALUES ($1)", at=40, parent=root, sqlstate="23505")
    a.query("INSERT INTO audit VALUES ($1)", at=40, parent=a.events[0], tags=("INSERT 0 1",),
            rows=1)  # fmt: skip
    result = run(a, b)
    fields = {c.field: (c.a, c.b) for s in result.spans for c in s.changes}
    assert fields["status"] == (200, 500)
    assert fields["sqlstate"] == (None, "23505")
    assert fields["tags"] == (["INSERT 0 1"], [])


def test_latency_needs_both_the_threshold_and_the_ratio() -> None:
    def latency(a_ms: float, b_ms: float, **kw: float) -> bool:
        result = run(order_request(query_ms=a_ms), order_request(query_ms=b_ms), **kw)
        return any(c.field == "duration_ms" for c in result.spans[2].changes)

    assert not latency(1, 5)  # 5x, but 4 ms: noise on a fast span
    assert not latency(100, 120)  # 20 ms, but only 1.2x
    assert latency(20, 60)
    assert latency(60, 20)  # faster counts too
    assert latency(100, 120, threshold_ms=10, ratio=1)
    assert latency(1, 5, threshold_ms=0)


def test_repeats_pair_in_order() -> None:
    a, b = TraceBuilder(), TraceBuilder()
    for n in range(3):
        a.query("SELECT * FROM items WHERE id = $1", at=n, params=[n], rows=1)
    for n in range(2):
        b.query("SELECT * FROM items WHERE id = $1", at=n, params=[n], rows=1)
    result = run(a, b)
    assert [s.op for s in result.spans] == ["same", "same", "only_a"]
    assert result.spans[2].a is not None and result.spans[2].a.seq == 3


def test_response_bodies_when_readable() -> None:
    a, b = TraceBuilder(), TraceBuilder()
    a.call("GET", "api.test", "/price", 200, at=0, response_body=b'{"eur": 10}')
    b.call("GET", "api.test", "/price", 200, at=0, response_body=b'{"eur": 12}')
    (span,) = run(a, b).spans
    assert [(c.field, c.a, c.b) for c in span.changes] == [
        ("response_body", '{"eur": 10}', '{"eur": 12}')
    ]


def test_the_trace_comment_is_not_a_change_but_a_literal_is() -> None:
    def traced(literal: int) -> TraceBuilder:
        t = TraceBuilder()
        comment = f"/*traceparent='00-{t.trace_id}-{'1' * 16}-01'*/"
        t.query("SELECT * FROM items WHERE id = ?", at=0, rows=1,
                sql=f"SELECT * FROM items WHERE id = {literal} {comment}")  # fmt: skip
        return t

    assert not run(traced(1), traced(1)).differs
    (span,) = run(traced(1), traced(2)).spans
    assert [(c.field, c.a, c.b) for c in span.changes] == [
        ("sql", ["SELECT * FROM items WHERE id = 1"], ["SELECT * FROM items WHERE id = 2"])
    ]
