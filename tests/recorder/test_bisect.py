"""The bisection search and the classification of replay verdicts."""

from __future__ import annotations

import math

import pytest

from recorder.bisect import BisectError, Bisection, Outcome, classify


@pytest.mark.parametrize(
    ("verdict", "recorded_failed", "expected"),
    [
        ("same", False, "good"),
        ("differs", False, "bad"),
        ("regressed", False, "bad"),
        ("fixed", True, "good"),
        ("same", True, "bad"),
        ("differs", True, "bad"),
        (None, False, "skip"),
        (None, True, "skip"),
        ("something new", False, "skip"),
    ],
)
def test_classify(verdict: str | None, recorded_failed: bool, expected: Outcome) -> None:
    assert classify(verdict, recorded_failed=recorded_failed) == expected


def run(
    commits: int, first_bad: int, skipped: frozenset[int] = frozenset()
) -> tuple[Bisection, list[int]]:
    search = Bisection([f"c{i}" for i in range(commits)])
    tested: list[int] = []
    while (index := search.next_index()) is not None:
        assert index not in tested, "a commit was tested twice"
        tested.append(index)
        outcome: Outcome = "skip" if index in skipped else "bad" if index >= first_bad else "good"
        search.record(index, outcome)
    return search, tested


@pytest.mark.parametrize("commits", [2, 3, 4, 5, 8, 17, 100])
def test_finds_every_first_bad_in_logarithmic_steps(commits: int) -> None:
    for first_bad in range(1, commits):
        search, tested = run(commits, first_bad)
        assert search.first_bad() == first_bad
        assert search.candidates() == [first_bad]
        # The two ends, then one halving per test.
        assert len(tested) <= 2 + math.ceil(math.log2(commits - 1))
        assert tested[:2] == [commits - 1, 0]


def test_goes_around_a_skipped_commit() -> None:
    search, tested = run(9, first_bad=6, skipped=frozenset({4}))
    assert 4 in tested
    assert search.first_bad() == 6


def test_skips_next_to_the_boundary_leave_candidates() -> None:
    search, _ = run(9, first_bad=5, skipped=frozenset({4}))
    assert search.done()
    assert search.first_bad() is None
    assert search.candidates() == [4, 5]


def test_ends_that_do_not_behave_as_claimed_stop_the_search() -> None:
    search = Bisection(["good", "middle", "bad"])
    with pytest.raises(BisectError, match="bad revision does not replay bad"):
        search.record(2, "good")
    search.record(2, "bad")
    with pytest.raises(BisectError, match="could not be tested"):
        search.record(0, "skip")
    with pytest.raises(BisectError, match="same commit"):
        Bisection(["only"])


def test_steps_left_counts_down_to_zero() -> None:
    search = Bisection([f"c{i}" for i in range(33)])
    estimates = []
    while (index := search.next_index()) is not None:
        estimates.append(search.steps_left())
        search.record(index, "bad" if index >= 20 else "good")
    assert search.steps_left() == 0
    assert estimates[0] == 2 + (31).bit_length()
    assert estimates == sorted(estimates, reverse=True)
