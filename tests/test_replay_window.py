"""``flux incident replay FROM..TO``: the window's spellings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from flux_proxy.cmd_replay import parse_window

PARIS = timezone(timedelta(hours=2))
NOW = datetime(2024, 5, 1, 14, 30, 15, 500_000, tzinfo=PARIS)


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2024, 5, 1, hour, minute, second, tzinfo=PARIS)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("14:00..14:05", at(14, 0), at(14, 5)),
        ("9:05:30..14:05", at(9, 5, 30), at(14, 5)),
        ("14:00..now", at(14, 0), NOW),
        ("-15m..now", NOW - timedelta(minutes=15), NOW),
        ("-2h..-90s", NOW - timedelta(hours=2), NOW - timedelta(seconds=90)),
        ("-1d..-0.5h", NOW - timedelta(days=1), NOW - timedelta(minutes=30)),
        # ISO 8601: naive is local time, an offset is kept.
        ("2024-04-30T23:00..2024-05-01T01:00:00", datetime(2024, 4, 30, 23, tzinfo=PARIS),
         datetime(2024, 5, 1, 1, tzinfo=PARIS)),
        ("2024-05-01T12:00Z..2024-05-01T12:05:00+00:00", datetime(2024, 5, 1, 12, tzinfo=UTC),
         datetime(2024, 5, 1, 12, 5, tzinfo=UTC)),
        (" 14:00 .. 14:05 ", at(14, 0), at(14, 5)),
    ],
)  # fmt: skip
def test_window_spellings(text: str, start: datetime, end: datetime) -> None:
    assert parse_window(text, NOW) == (start, end)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("14:00", "expected FROM..TO"),
        ("14:00..", "expected FROM..TO"),
        ("14:05..14:00", "ends before it starts"),
        ("now..now", "ends before it starts"),
        ("25:00..26:00", "not a time of day"),
        ("yesterday..now", "expected HH:MM"),
        ("-15x..now", "expected HH:MM"),
    ],
)
def test_bad_windows_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_window(text, NOW)
