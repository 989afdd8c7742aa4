"""recorder.analysis.tail: when an execution counts as complete, filters, --since."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from recorder.analysis.tail import Follower, TailFilter, parse_since
from recorder.model import ExecutionSummary

S = 10**9
NOW = 1_700_000_000 * S


def row(
    trace: str, *, start: int = NOW - S, ms: float = 50, events: int = 3, root: str | None =
    "http.inbound", path: str | None = "/orders/7", status: int | None = 200, errors: int = 0,
) -> ExecutionSummary:  # fmt: skip
    inbound = root == "http.inbound"
    return ExecutionSummary(
        trace_id=trace, start_ns=start, end_ns=start + int(ms * 1e6), events=events, queries=1,
        calls=0, errors=errors, root_kind=root, method="GET" if inbound else None,
        path=path if inbound else None, status=status if inbound else None,
    )  # fmt: skip


def test_a_request_is_shown_once_its_row_settles() -> None:
    f = Follower(settle_ns=S // 2, quiet_ns=2 * S)
    fresh = row("a", start=NOW - S // 10, ms=50)  # ended 50 ms ago
    assert f.poll([fresh], NOW) == []
    assert f.poll([fresh], NOW + S // 4) == []
    assert f.poll([fresh], NOW + S // 2) == [fresh]
    assert f.poll([fresh], NOW + S) == []  # once


def test_a_row_still_changing_is_not_shown() -> None:
    f = Follower(settle_ns=S // 2, quiet_ns=2 * S)
    first = row("a", start=NOW, ms=1)
    assert f.poll([first], NOW) == []
    grown = row("a", start=NOW, ms=1, events=4)  # a last query landed a batch later
    assert f.poll([grown], NOW + S // 2 - 1) == []
    assert f.poll([grown], NOW + S) == [grown]


def test_a_trace_without_a_request_is_shown_when_quiet() -> None:
    f = Follower(settle_ns=S // 2, quiet_ns=2 * S)
    job = row("j", start=NOW, ms=10, root="pg.query")
    assert f.poll([job], NOW + S // 10) == []
    assert f.poll([job], NOW + S) == []
    assert f.poll([job], NOW + 3 * S) == [job]


def test_skip_existing_then_follow() -> None:
    f = Follower(settle_ns=S // 2, quiet_ns=2 * S)
    done = row("done", start=NOW - 10 * S)
    running = row("running", start=NOW - S // 10, root="pg.query")  # its request is in flight
    f.skip_existing([done, running], NOW)
    assert f.poll([done, running], NOW + S // 10) == []
    finished = row("running", start=NOW - S // 10, events=4)  # now its inbound event is there
    new = row("new", start=NOW + S // 5)
    assert f.poll([done, finished, new], NOW + S // 5) == []
    shown = f.poll([done, finished, new], NOW + S)
    assert [r.trace_id for r in shown] == ["running", "new"]  # in order of completion


def test_a_request_that_looked_like_a_quiet_job_is_shown_when_it_completes() -> None:
    f = Follower(settle_ns=S // 2, quiet_ns=2 * S)
    slow = row("slow", start=NOW - 10 * S, ms=1, root="pg.query")
    f.skip_existing([slow], NOW)  # its queries are old: taken for a finished job
    done = row("slow", start=NOW - 10 * S, ms=11_000, events=5)  # its inbound, just now
    assert f.poll([done], NOW + S) == []
    assert f.poll([done], NOW + 2 * S) == [done]


def test_memory_is_bounded_by_what_is_listed() -> None:
    f = Follower()
    f.poll([row(str(n)) for n in range(100)], NOW)
    f.forget_unlisted([row("99")])
    assert len(f) == 1


@pytest.mark.parametrize(
    ("spec", "accepted"),
    [
        (TailFilter(), "abcde"),
        (TailFilter(errors=True), "cd"),
        (TailFilter(path="/orders"), "ab"),
        (TailFilter(path="/orders/*/items"), "b"),
        (TailFilter(path="/health"), "c"),
        (TailFilter(min_duration_ns=100 * 10**6), "be"),
        (TailFilter(errors=True, path="/health"), "c"),
    ],
)
def test_filters(spec: TailFilter, accepted: str) -> None:
    rows = [
        row("a", path="/orders/7"),
        row("b", path="/orders/7/items", ms=150),
        row("c", path="/health", status=503, errors=1),
        row("d", root="pg.query", errors=1),
        row("e", root="pg.query", ms=200),
    ]
    assert "".join(r.trace_id for r in rows if spec.accepts(r)) == accepted


def test_parse_since() -> None:
    assert parse_since("30s", NOW) == NOW - 30 * S
    assert parse_since("5m", NOW) == NOW - 300 * S
    assert parse_since("1h30m", NOW) == NOW - 5400 * S
    assert parse_since("1.5s", NOW) == NOW - 3 * S // 2
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2024-05-01T12:00:00", NOW) == int(moment.timestamp()) * S
    assert parse_since("2024-05-01T14:00:00+02:00", NOW) == int(moment.timestamp()) * S
    for bad in ("yesterday", "5 parsecs", "", "10m later"):
        with pytest.raises(ValueError):
            parse_since(bad, NOW)
