"""MessageScanner and CycleSplitter, driven by wire transcripts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import pgwire as pw

E = pw.encode


def _ready(status: str = "I") -> bytes:
    return E(pw.ReadyForQuery(status=status))  # type: ignore[arg-type]


def _complete(tag: str) -> bytes:
    return E(pw.CommandComplete(tag=tag))


def _parse(sql: str, name: str = "") -> bytes:
    return E(pw.Parse(statement=name, query=sql, param_types=()))


def _bind(portal: str = "", statement: str = "") -> bytes:
    return E(
        pw.Bind(portal=portal, statement=statement, param_formats=(), params=(), result_formats=())
    )


def _execute(portal: str = "") -> bytes:
    return E(pw.Execute(portal=portal, max_rows=0))


SYNC = E(pw.Sync())


def chunks(data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    return [data[i : i + 7] for i in range(0, len(data), 7)]


MODES = ["whole", "bytewise", "sevens"]


@pytest.mark.parametrize("mode", MODES)
def test_scanner_finds_every_boundary(mode: str) -> None:
    messages = [E(pw.Query(query="SELECT 1")), SYNC, E(pw.CopyData(data=b"x" * 1000)), _ready()]
    stream = b"".join(messages)
    scanner = pw.MessageScanner()
    found: list[tuple[int, int]] = []
    offset = 0
    for chunk in chunks(stream, mode):
        found += [(t, offset + end) for t, end in scanner.feed(chunk)]
        offset += len(chunk)
    ends = [sum(len(m) for m in messages[: i + 1]) for i in range(len(messages))]
    assert found == [(m[0], end) for m, end in zip(messages, ends, strict=True)]
    assert scanner.at_boundary


def test_scanner_keeps_trailing_partial_message_for_later() -> None:
    scanner = pw.MessageScanner()
    data = SYNC + _ready()[:3]
    assert scanner.feed(data) == [(ord("S"), 5)]
    assert not scanner.at_boundary
    assert scanner.feed(_ready()[3:]) == [(ord("Z"), 3)]


@pytest.mark.parametrize("length", [0, 3, 1 << 31])
def test_scanner_rejects_bad_lengths_before_the_body_arrives(length: int) -> None:
    scanner = pw.MessageScanner(max_message_length=1 << 20)
    header = b"D" + length.to_bytes(4, "big")
    with pytest.raises(pw.RemoteProtocolError):
        scanner.feed(header)


def test_scanner_rejects_oversized_header_split_across_chunks() -> None:
    scanner = pw.MessageScanner(max_message_length=100)
    scanner.feed(b"D\x00\x00")
    with pytest.raises(pw.RemoteProtocolError, match="exceeds the limit"):
        scanner.feed(b"\x10\x00")


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 50))
def test_scanner_chunking_never_changes_the_result(bodies: list[bytes], step: int) -> None:
    stream = b"".join(E(pw.CopyData(data=b)) for b in bodies)
    whole = pw.MessageScanner().feed(stream)
    scanner = pw.MessageScanner()
    pieces: list[tuple[int, int]] = []
    for i in range(0, len(stream), step):
        pieces += [(t, i + end) for t, end in scanner.feed(stream[i : i + step])]
    assert pieces == whole


def run(frontend: list[bytes], backend: list[bytes], mode: str) -> list[pw.RawCycle]:
    """Feeds all frontend bytes first (as a pipelining client would), then the backend's."""
    splitter = pw.CycleSplitter()
    for chunk in chunks(b"".join(frontend), mode):
        splitter.frontend(chunk, 1)
    cycles: list[pw.RawCycle] = []
    for chunk in chunks(b"".join(backend), mode):
        cycles += splitter.backend(chunk, 2)
    assert splitter.idle or cycles[-1].status != "I"
    return cycles


@pytest.mark.parametrize("mode", MODES)
def test_simple_query_is_one_cycle(mode: str) -> None:
    query = E(pw.Query(query="SELECT 1; SELECT 2"))
    backend = [_complete("SELECT 1"), _complete("SELECT 1"), _ready()]
    (cycle,) = run([query], backend, mode)
    assert cycle.frontend == query and cycle.backend == b"".join(backend)
    assert cycle.status == "I" and cycle.complete and not cycle.truncated


@pytest.mark.parametrize("mode", MODES)
def test_pipeline_splits_at_each_sync(mode: str) -> None:
    first = [_parse("BEGIN"), _bind(), _execute(), SYNC]
    second = [
        _parse("SELECT 1"),
        _bind(),
        _execute(),
        _parse("SELECT 2"),
        _bind(),
        _execute(),
        SYNC,
    ]
    bind_ok = E(pw.ParseComplete()) + E(pw.BindComplete())
    backend_1 = [bind_ok, _complete("BEGIN"), _ready("T")]
    backend_2 = [bind_ok, _complete("SELECT 1"), bind_ok, _complete("SELECT 1"), _ready("T")]
    cycles = run(first + second, backend_1 + backend_2, mode)
    assert [c.frontend for c in cycles] == [b"".join(first), b"".join(second)]
    assert [c.backend for c in cycles] == [b"".join(backend_1), b"".join(backend_2)]
    assert [c.status for c in cycles] == ["T", "T"]


@pytest.mark.parametrize("mode", MODES)
def test_error_mid_pipeline_consumes_up_to_the_sync(mode: str) -> None:
    frontend = [_parse("SELECT 1/0"), _bind(), _execute(), _parse("SELECT 2"), _bind(), SYNC]
    error = E(pw.error_response("ERROR", "22012", "division by zero"))
    (cycle,) = run(frontend, [E(pw.ParseComplete()), E(pw.BindComplete()), error, _ready()], mode)
    assert cycle.frontend == b"".join(frontend)


@pytest.mark.parametrize("mode", MODES)
def test_simple_copy_in_includes_the_copy_data(mode: str) -> None:
    query = E(pw.Query(query="COPY t FROM STDIN"))
    data = [E(pw.CopyData(data=b"1\n")), E(pw.CopyData(data=b"2\n")), E(pw.CopyDone())]
    after = E(pw.Query(query="SELECT 1"))
    copy_in = E(pw.CopyInResponse(format=0, column_formats=(0,)))
    backend = [copy_in, _complete("COPY 2"), _ready(), _complete("SELECT 1"), _ready()]
    cycles = run([query, *data, after], backend, mode)
    assert [c.frontend for c in cycles] == [query + b"".join(data), after]


@pytest.mark.parametrize("mode", MODES)
def test_extended_copy_in_skips_the_sync_the_backend_ignores(mode: str) -> None:
    # libpq sends Sync right after Execute; the backend ignores it in copy-in mode, and
    # the client sends a second Sync after CopyDone. One ReadyForQuery for all of it.
    frontend = [
        _parse("COPY t FROM STDIN"),
        _bind(),
        _execute(),
        SYNC,
        E(pw.CopyData(data=b"1\n")),
        E(pw.CopyDone()),
        SYNC,
    ]
    backend = [
        E(pw.ParseComplete()),
        E(pw.BindComplete()),
        E(pw.CopyInResponse(format=0, column_formats=(0,))),
        _complete("COPY 1"),
        _ready(),
    ]
    (cycle,) = run(frontend, backend, mode)
    assert cycle.frontend == b"".join(frontend)


def test_simple_copy_aborted_by_the_backend_drops_the_late_copy_data() -> None:
    splitter = pw.CycleSplitter()
    query = E(pw.Query(query="COPY t FROM STDIN"))
    splitter.frontend(query + E(pw.CopyData(data=b"bad\n")), 1)
    error = E(pw.error_response("ERROR", "22P02", "invalid input syntax"))
    copy_in = E(pw.CopyInResponse(format=0, column_formats=(0,)))
    (cycle,) = splitter.backend(copy_in + error + _ready(), 2)
    assert cycle.frontend.startswith(query)
    # The client, not yet aware, finishes its copy; the backend discards it, so do we.
    next_query = E(pw.Query(query="SELECT 1"))
    splitter.frontend(E(pw.CopyData(data=b"2\n")) + E(pw.CopyDone()) + next_query, 3)
    (second,) = splitter.backend(_complete("SELECT 1") + _ready(), 4)
    assert second.frontend == next_query


def test_passthrough_keeps_no_bytes_but_tracks_idle() -> None:
    splitter = pw.CycleSplitter(keep_bytes=False)
    splitter.frontend(E(pw.Query(query="BEGIN")), 0)
    assert splitter.awaiting_backend and not splitter.idle
    assert splitter.backend(_complete("BEGIN") + _ready("T"), 0) == []
    assert not splitter.idle  # inside a transaction
    splitter.frontend(E(pw.Query(query="COMMIT")), 0)
    splitter.backend(_complete("COMMIT") + _ready("I"), 0)
    assert splitter.idle


def test_cycle_bytes_are_capped_and_marked() -> None:
    splitter = pw.CycleSplitter(max_cycle_bytes=100)
    splitter.frontend(E(pw.Query(query="SELECT repeat('x', 1000)")), 1)
    row = E(pw.DataRow(values=(b"x" * 1000,)))
    (cycle,) = splitter.backend(row + _complete("SELECT 1") + _ready(), 2)
    assert cycle.truncated and len(cycle.backend) == 100


def test_connection_end_mid_cycle_yields_an_incomplete_cycle() -> None:
    splitter = pw.CycleSplitter()
    query = E(pw.Query(query="SELECT pg_sleep(10)"))
    splitter.frontend(query, 5)
    cycle = splitter.close(9)
    assert cycle is not None and not cycle.complete and cycle.status == ""
    assert cycle.frontend == query and (cycle.start_ns, cycle.end_ns) == (5, 9)


def test_timestamps_come_from_first_frontend_message_and_ready_for_query() -> None:
    splitter = pw.CycleSplitter()
    splitter.frontend(_parse("SELECT 1"), 10)
    splitter.frontend(_bind() + _execute() + SYNC, 20)
    (cycle,) = splitter.backend(_complete("SELECT 1") + _ready(), 30)
    assert (cycle.start_ns, cycle.end_ns) == (10, 30)


def test_terminate_alone_is_not_an_incomplete_cycle() -> None:
    splitter = pw.CycleSplitter()
    splitter.frontend(E(pw.Terminate()), 1)
    assert splitter.close(2) is None


def test_terminate_is_not_a_request_in_progress() -> None:
    splitter = pw.CycleSplitter()
    splitter.frontend(E(pw.Query(query="SELECT 1")), 1)
    splitter.backend(_complete("SELECT 1") + _ready(), 2)
    splitter.frontend(E(pw.Terminate()), 3)
    assert not splitter.awaiting_backend and splitter.idle


def test_a_huge_copy_keeps_boundaries_not_bytes() -> None:
    splitter = pw.CycleSplitter(max_cycle_bytes=1000)
    splitter.frontend(E(pw.Query(query="COPY t FROM STDIN")), 1)
    row = E(pw.CopyData(data=b"x" * 100))
    for _ in range(10_000):  # 1 MB of rows against a 1000-byte cap
        splitter.frontend(row, 1)
    splitter.frontend(E(pw.CopyDone()), 1)
    kept = sum(len(m[1]) for m in splitter._pending)
    assert kept <= 1000
    copy_in = E(pw.CopyInResponse(format=0, column_formats=(0,)))
    (cycle,) = splitter.backend(copy_in + _complete("COPY 10000") + _ready(), 2)
    assert cycle.truncated and len(cycle.frontend) <= 1000
    assert splitter.idle  # every boundary was still tracked
