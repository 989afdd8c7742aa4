"""Following Parse and Close on the client's side of a proxied session, however it is cut."""

from __future__ import annotations

import random

from flux_proxy.pgprepared import PreparedStatements
from protocols import pgwire

STREAM = [
    pgwire.Parse(statement="s1", query="SELECT $1::int", param_types=(23,)),
    pgwire.Describe(kind="S", name="s1"),
    pgwire.Sync(),
    # A Bind whose values hold the very bytes that start Parse and Close messages.
    pgwire.Bind(portal="", statement="s1", params=(b"PPPP" * 40, b"C" * 300)),
    pgwire.Execute(portal="", max_rows=0),
    pgwire.Parse(statement="", query="SELECT 'x' || $1", param_types=()),
    pgwire.Parse(statement="big", query="SELECT " + " + ".join(["1"] * 5000), param_types=()),
    pgwire.Close(kind="P", name="s1"),  # a portal of the same name: the statement stays
    pgwire.Parse(statement="gone", query="SELECT 2", param_types=()),
    pgwire.Close(kind="S", name="gone"),
    pgwire.Sync(),
    pgwire.Query(query="SELECT 'P' AS p, 'C' AS c"),
]
EXPECTED = {
    "s1": ("SELECT $1::int", (23,)),
    "": ("SELECT 'x' || $1", ()),
    "big": ("SELECT " + " + ".join(["1"] * 5000), ()),
}


def feed(chunks: list[bytes]) -> PreparedStatements:
    splitter = pgwire.CycleSplitter(keep_bytes=False)
    tracker = PreparedStatements()
    for chunk in chunks:
        splitter.frontend(chunk, 0)
        tracker.frontend(chunk, splitter)
    return tracker


def test_whole_messages() -> None:
    assert feed([pgwire.encode(m) for m in STREAM]).statements == EXPECTED


def test_every_cut_of_the_stream() -> None:
    data = b"".join(pgwire.encode(m) for m in STREAM)
    # One byte at a time: every header and body split at every offset.
    assert feed([data[i : i + 1] for i in range(len(data))]).statements == EXPECTED
    rng = random.Random(7)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert feed(chunks).statements == EXPECTED, cuts


def test_reads_without_parse_or_close_skip_the_walk() -> None:
    bind = pgwire.encode(pgwire.Bind(portal="", statement="s1", params=(b"7",)))
    execute = pgwire.encode(pgwire.Execute(portal="", max_rows=0))
    sync = pgwire.encode(pgwire.Sync())
    tracker = feed([pgwire.encode(STREAM[0]), bind + execute + sync] * 3)
    assert tracker.statements == {"s1": EXPECTED["s1"]}
