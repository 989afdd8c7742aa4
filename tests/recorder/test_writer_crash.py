"""SIGKILL a process that is recording: what was acknowledged is on disk, intact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from recorder.sqlite_store import SQLiteStore

STEP = 200  # events submitted between two flushes, i.e. at most this many unacknowledged

CHILD = textwrap.dedent(
    """
    import sys
    from recorder.model import Event
    from recorder.sqlite_store import SQLiteStore
    from recorder.writer import RecordWriter

    path, step = sys.argv[1], int(sys.argv[2])
    traces = ["%032x" % (t + 1) for t in range(7)]
    writer = RecordWriter(lambda: SQLiteStore(path), batch_size=64, flush_interval=0.01)
    i = 0
    while True:
        for _ in range(step):
            writer.submit(Event(
                kind="pg.query", trace_id=traces[i % 7], span_id="%016x" % (i + 1),
                parent_span_id=None, conn_id="c%d" % (i % 3), start_ns=i, duration_ns=1,
                fingerprint="q%d" % (i % 5), attrs={"i": i, "tag": "SELECT 1"},
                payload={"raw": bytes([i % 256]) * (50 + i % 300), "i": i},
            ))
            i += 1
        if not writer.flush(30):
            sys.exit("flush timed out")
        print(i, flush=True)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_stream_keeps_a_consistent_store(tmp_path: Path) -> None:
    db = tmp_path / "flux.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(STEP)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acked = 0
    deadline = time.monotonic() + 30
    while acked < 20 * STEP and time.monotonic() < deadline:
        line = child.stdout.readline()
        assert line, f"child exited early ({child.wait()})"
        acked = int(line)
    time.sleep(random.uniform(0, 0.02))  # land anywhere: submitting, processing, committing
    os.kill(child.pid, signal.SIGKILL)
    rest = child.stdout.read()  # acks printed after our last read still count
    child.wait()
    acked = max([acked, *(int(x) for x in rest.split())])
    assert acked >= 20 * STEP

    with SQLiteStore(db) as store:  # read-write: recovers the WAL like the next sidecar would
        assert store.integrity_check() == "ok"
        stored = list(store.events())
        stats = store.stats()
        executions = store.list_executions(limit=100)
    n = len(stored)
    # Everything acknowledged survived; at most the last unflushed step did not.
    assert acked <= n <= acked + STEP
    for pos, s in enumerate(stored):
        e, i = s.event, s.event.attrs["i"]
        assert i == pos  # nothing missing in the middle, nothing duplicated
        assert e.trace_id == "%032x" % (i % 7 + 1) and e.span_id == "%016x" % (i + 1)
        assert e.payload == {"raw": bytes([i % 256]) * (50 + i % 300), "i": i}
        assert e.fingerprint == f"q{i % 5}" and e.conn_id == f"c{i % 3}"
        assert s.seq == i // 7 + 1
    # The executions index committed with the events, never apart from them.
    assert sum(x.events for x in executions) == n == stats["events"]
    assert stats["events.recorded"] == n
