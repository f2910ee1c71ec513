"""Gold accuracy: how often the judge labels gold pairs right, per domain and overall, from
the committed gold shards; and the gate (`stages.judge.gate`) that stops a run whose judge
is not good enough before the judge stage spends the budget.

Gold accuracy is the mean of the gold judgments' `score` (1 right, 0 wrong, 0.5 dropped):
a judge that knows every answer scores 1.0, one at chance or one that follows the slot only
(every pair dropped, in either mode) scores 0.5. Its interval is Wilson's at 95 %, taking
the summed score as the successes of `pairs` trials: the scores vary no more than Bernoulli
trials of the same mean, so the interval is, if anything, wide.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class GoldFigures(BaseModel):
    """One domain's (or 'overall') gold figures; accuracy and its interval None without pairs."""

    model_config = ConfigDict(extra="forbid")
    pairs: int
    kept: int
    right: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None

    def describe(self) -> str:
        """'0.62 [0.50, 0.73] (48 pairs, 20 kept, 17 right)': how every place prints it."""
        if self.accuracy is None or self.ci_low is None or self.ci_high is None:
            return "n/a (no gold pairs)"
        return (
            f"{self.accuracy:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}] "
            f"({self.pairs} pairs, {self.kept} kept, {self.right} right)"
        )
