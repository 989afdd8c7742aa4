"""The search of ``flux bug bisect``: which commit first broke a recorded request.

Pure: no git, no processes. The caller tests commits (replays the request against each)
and feeds the outcomes back; :class:`Bisection` says which commit to test next and, at
the end, which one is the first bad.

Classifying a replay verdict depends on how the recorded request ended:

=================  ======================  ==============================================
recording          good                    bad
=================  ======================  ==============================================
succeeded          ``same``                ``differs`` (another answer), ``regressed``
failed             ``fixed``               ``same`` (fails as recorded), ``differs``
                                           (fails another way)
=================  ======================  ==============================================

So a request that worked when it was recorded is good where it replays identically, and
a request recorded failing (in production, on the bad side) is good where it succeeds.
A replay that could not run (the app did not start, the sidecar was unreachable) is
``skip``: that commit can be neither good nor bad, and the search goes around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

Outcome = Literal["good", "bad", "skip"]

GOOD_VERDICTS: Final = {False: frozenset({"same"}), True: frozenset({"fixed"})}
KNOWN_VERDICTS: Final = frozenset({"same", "fixed", "regressed", "differs"})


def classify(verdict: str | None, *, recorded_failed: bool) -> Outcome:
    """good, bad or skip for one replay: ``verdict`` None when it could not replay."""
    if verdict is None or verdict not in KNOWN_VERDICTS:
        return "skip"
    return "good" if verdict in GOOD_VERDICTS[recorded_failed] else "bad"


class BisectError(Exception):
    """The history cannot be searched as given (the ends do not behave as claimed)."""


@dataclass
class Bisection:
    """Binary search over ``commits``: the good revision first, the bad one last.

    Everything between is in history order (oldest first). The search keeps the
    last commit known good (``low``) and the first known bad (``high``); the first
    bad commit lies in ``(low, high]``. Both ends are tested first: a search whose
    good end replays bad (or bad end good) would name a wrong commit with confidence.
    """

    commits: Sequence[str]
    outcomes: dict[int, Outcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.commits) < 2:
            raise BisectError("the good and bad revisions are the same commit")

    @property
    def low(self) -> int:
        goods = [i for i, o in self.outcomes.items() if o == "good"]
        return max(goods, default=0)

    @property
    def high(self) -> int:
        bads = [i for i, o in self.outcomes.items() if o == "bad"]
        return min(bads, default=len(self.commits) - 1)

    def record(self, index: int, outcome: Outcome) -> None:
        last = len(self.commits) - 1
        if index == last and outcome != "bad":
            raise BisectError(
                "the bad revision does not replay bad"
                + (" (it could not be tested)" if outcome == "skip" else "")
            )
        if index == 0 and outcome != "good":
            raise BisectError(
                "the good revision does not replay good"
                + (" (it could not be tested)" if outcome == "skip" else "")
            )
        self.outcomes[index] = outcome

    def next_index(self) -> int | None:
        """The commit to test next, or None when the search is over."""
        last = len(self.commits) - 1
        if last not in self.outcomes:
            return last
        if 0 not in self.outcomes:
            return 0
        low, high = self.low, self.high
        untested = [i for i in range(low + 1, high) if i not in self.outcomes]
        if not untested:
            return None
        middle = (low + high) / 2
        # Nearest to the middle; on a tie the older one, as git bisect does.
        return min(untested, key=lambda i: (abs(i - middle), i))

    def done(self) -> bool:
        return self.next_index() is None

    def first_bad(self) -> int | None:
        """The first bad commit once found; None while the search goes on or when
        skipped commits leave several candidates (see :meth:`candidates`)."""
        if not self.done():
            return None
        candidates = self.candidates()
        return candidates[0] if len(candidates) == 1 else None

    def candidates(self) -> list[int]:
        """Commits that may be the first bad: ``(low, high]`` less the known good."""
        return [i for i in range(self.low + 1, self.high + 1) if self.outcomes.get(i) != "good"]

    def steps_left(self) -> int:
        """An estimate of the tests still needed, for a progress bar."""
        last = len(self.commits) - 1
        ends = int(last not in self.outcomes) + int(0 not in self.outcomes)
        between = max(self.high - self.low - 1, 0)
        untested = sum(1 for i in range(self.low + 1, self.high) if i not in self.outcomes)
        # Halving n commits takes the bit length of n tests; skipped ones cost more.
        return ends + min(untested, between.bit_length())
