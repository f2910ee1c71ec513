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

import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from fspo_data.core.config import JobConfig
from fspo_data.core.records import GoldJudgment
from fspo_data.core.shards import Manifest, ShardEntry, committed_entries
from fspo_data.stages.base import Stage

Z_95 = 1.959964
GOLD_STAGE = "gold"


# What every place that prints gold figures says they are.
LEGEND = (
    "the judge on pairs whose answer is known; chance 0.50, a dropped pair counts 0.5; "
    "95 % interval"
)


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


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a proportion `successes / trials` (trials > 0)."""
    p, shrink = successes / trials, 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / shrink
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / shrink
    return max(0.0, centre - half), min(1.0, centre + half)


def figures_of(judged: int, kept: int, right: int) -> GoldFigures:
    """Gold figures from counts: the score sum is `right` plus every dropped pair's score."""
    if not judged:
        return GoldFigures(pairs=0, kept=0, right=0, accuracy=None, ci_low=None, ci_high=None)
    score = right + (judged - kept) * GoldJudgment.ABSTAINED
    low, high = wilson_interval(score, judged)
    return GoldFigures(
        pairs=judged, kept=kept, right=right, accuracy=score / judged, ci_low=low, ci_high=high
    )


def gold_figures(entries: Mapping[str, ShardEntry]) -> dict[str, GoldFigures]:
    """Per domain and 'overall', from the gold shards' counters (no rows read), so the gate can
    judge a stage in flight from its manifest. {} when no gold pair was judged."""
    tallies: dict[str, Counter[str]] = {}
    for name, entry in sorted(entries.items()):
        domain = name.rsplit("-", 1)[0]
        tallies.setdefault(domain, Counter()).update(
            {k: v for k, v in entry.counters.items() if k.startswith("gold_pairs_")}
        )
    if not any(t["gold_pairs_judged"] for t in tallies.values()):
        return {}
    tallies["overall"] = sum(tallies.values(), Counter())
    return {
        domain: figures_of(t["gold_pairs_judged"], t["gold_pairs_kept"], t["gold_pairs_right"])
        for domain, t in tallies.items()
    }


def summarize_gold(run_dir: Path) -> dict[str, GoldFigures]:
    return gold_figures(committed_entries(run_dir, GOLD_STAGE))


def gate_failure(
    config: JobConfig, entries: Mapping[str, ShardEntry], stage_done: bool
) -> str | None:
    """Why the gate stops the run, in one line; None while it lets the run go on.

    A domain is held to `min_accuracy` once it has `min_pairs` gold pairs judged; when the
    gold stage is done, a domain that never got there stops the run too, since its judge
    was never measured.
    """
    gate = config.stages.judge.gate
    if gate.min_accuracy is None:
        return None
    figures = gold_figures(entries)
    for domain in config.domains:
        gold = figures.get(domain) or figures_of(0, 0, 0)
        if gold.pairs >= gate.min_pairs and gold.accuracy is not None:
            if gold.accuracy < gate.min_accuracy:
                return (
                    f"gate: {domain} gold accuracy {gold.describe()} is below "
                    f"stages.judge.gate.min_accuracy {gate.min_accuracy:g}: the judge does not "
                    "follow the known answers; change the judge model (or the gate)"
                )
        elif stage_done:
            return (
                f"gate: {domain} has {gold.pairs} gold pairs judged, fewer than "
                f"stages.judge.gate.min_pairs {gate.min_pairs}: raise "
                "stages.judge.gold_pairs_per_user or counts.users (or lower min_pairs)"
            )
    return None


class GateGuard:
    """`orchestrator.Guard` of the gate: asked before each gold shard is dispatched, and once
    the gold stage is whole (`in_flight` None); no other stage is held to it."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config

    def __call__(self, stage: Stage, manifest: Manifest, in_flight: int | None) -> str | None:
        if stage.name != GOLD_STAGE:
            return None
        return gate_failure(self.config, manifest.shards, stage_done=in_flight is None)
