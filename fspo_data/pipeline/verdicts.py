"""Verdict lines: the run's figures read against thresholds, one line per check, in words.

`verdicts` is the one home of the rule (which figure, which threshold, which colour) and the
wording (the figure, the threshold, what to do); the run summary ends with these lines, the
diversity report opens with them and the dataset card lists them, each from the same
`Check` list stored in summary.json. A check whose figure the run does not have (the report
switched off, no gold pairs, no judged pair yet) is grey and says how to get it.

Thresholds come from the job config's `checks:` (`core.checks_config`); gold accuracy is red
below `stages.judge.gate.min_accuracy` when the gate is set.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from fspo_data.core.checks_config import ChecksConfig
from fspo_data.core.judge_config import GateConfig

if TYPE_CHECKING:  # summary.py stores `Check`s, so it imports this module
    from fspo_data.pipeline.consistency import Consistency
    from fspo_data.pipeline.gold import GoldFigures
    from fspo_data.pipeline.summary import RunSummary, StageSummary

Status = Literal["green", "amber", "red", "grey"]
# How each status is coloured: rich styles for the terminal, CSS colours for the report.
RICH_STYLES: dict[Status, str] = {"green": "green", "amber": "yellow", "red": "red", "grey": "dim"}
CSS_COLOURS: dict[Status, str] = {
    "green": "#1a7f37",
    "amber": "#9a6700",
    "red": "#cf222e",
    "grey": "#6e7781",
}
CHANCE = 0.5
COIN_FLIP_NATS = math.log(2)
NO_REPORT = "Run `fspo-data report RUN_DIR` (or keep report.after_run on) to measure it."
NO_JUDGMENTS = "Run the judge stage to measure it."
GREEN = "Nothing to do."
_CUT_SUFFIXES = ("_regenerated_truncated", "_dropped_truncated")


class Check(BaseModel):
    """One verdict line."""

    model_config = ConfigDict(extra="forbid")
    name: str
    status: Status
    value: float | None = Field(description="The figure judged; None when the run has none.")
    figure: str = Field(description="The figure in words, 'n/a' when the run has none.")
    threshold: str = Field(description="The thresholds it was judged against, and references.")
    action: str = Field(description="What to do, one short imperative sentence.")

    def text(self) -> str:
        """'personalization: mean cross-user agreement 1.00 ... [amber > 0.80, ...] Do not ...'."""
        return f"{self.name}: {self.figure} [{self.threshold}] {self.action}"

    def line(self) -> str:
        """The text after the status in capitals, padded so that the lines align."""
        return f"{self.status.upper():<5} {self.text()}"


def verdicts(summary: RunSummary, checks: ChecksConfig, gate: GateConfig) -> list[Check]:
    """The checks of a run, in the order they are shown."""
    overall = summary.consistency.get("overall")
    return [
        _personalization(summary.diversity.get("mean_agreement"), checks),
        _gold(summary.gold, checks, gate),
        _position(overall, checks),
        _entropy(overall, checks),
        _truncation(summary.stages, checks),
        _similarity(summary.diversity.get("candidate_similarity"), checks),
    ]


def with_verdicts(summary: RunSummary, checks: ChecksConfig, gate: GateConfig) -> RunSummary:
    """The summary with its `verdicts` computed from its own figures."""
    return summary.model_copy(update={"verdicts": verdicts(summary, checks, gate)})


def _grade(value: float, amber: float, red: float, *, lower_is_worse: bool = False) -> Status:
    if lower_is_worse:
        value, amber, red = -value, -amber, -red
    return "red" if value > red else "amber" if value > amber else "green"


def _missing(name: str, threshold: str, action: str) -> Check:
    return Check(
        name=name, status="grey", value=None, figure="n/a", threshold=threshold, action=action
    )


def _judged(
    name: str, value: float, status: Status, figure: str, threshold: str, *, red: str, amber: str
) -> Check:
    """A measured check; `red` and `amber` say what to do at those statuses."""
    action = {"red": red, "amber": amber}.get(status, GREEN)
    return Check(
        name=name, status=status, value=value, figure=figure, threshold=threshold, action=action
    )


def _personalization(agreement: float | None, checks: ChecksConfig) -> Check:
    name = "personalization"
    threshold = (
        f"amber > {checks.agreement_amber:.2f}, red > {checks.agreement_red:.2f}; "
        "1.0 = every user labels alike"
    )
    if agreement is None:
        return _missing(name, threshold, NO_REPORT)
    status = _grade(agreement, checks.agreement_amber, checks.agreement_red)
    figure = f"mean cross-user agreement {agreement:.2f} on shared pairs"
    return _judged(
        name,
        agreement,
        status,
        figure,
        threshold,
        red="Use a stronger judge: these labels follow its taste, not the persona.",
        amber="Look for blocks of alike users in the report's agreement matrix.",
    )


def _gold(gold: dict[str, GoldFigures], checks: ChecksConfig, gate: GateConfig) -> Check:
    name = "gold accuracy"
    red = checks.gold_red if gate.min_accuracy is None else gate.min_accuracy
    amber = max(checks.gold_amber, red)
    source = "gate" if gate.min_accuracy is not None else "checks.gold_red"
    threshold = f"amber < {amber:.2f}, red < {red:.2f} ({source}); chance {CHANCE:.2f}"
    measured = {k: g.accuracy for k, g in gold.items() if g.accuracy is not None}
    if not measured:
        return _missing(name, threshold, "Judge gold pairs (stages.judge.gold_pairs_per_user).")
    worst = min(measured, key=lambda k: (measured[k], k))
    overall = gold.get("overall")
    figure = f"overall {overall.describe()}" if overall is not None else ""
    if worst != "overall":
        figure += f"{'; ' if figure else ''}worst {worst} {gold[worst].describe()}"
    status = _grade(measured[worst], amber, red, lower_is_worse=True)
    return _judged(
        name,
        measured[worst],
        status,
        figure,
        threshold,
        red="Use a stronger judge: its labels are close to chance.",
        amber=f"Read {worst}'s gold pairs, or use a stronger judge.",
    )


def _position(overall: Consistency | None, checks: ChecksConfig) -> Check:
    name = "position bias"
    threshold = (
        f"amber beyond 50 ± {checks.slot_a_amber:.0%}, red beyond 50 ± {checks.slot_a_red:.0%}"
    )
    rate = overall.first_slot_win_rate if overall is not None else None
    if overall is None or rate is None:
        return _missing(name, threshold, NO_JUDGMENTS)
    status = _grade(abs(rate - 0.5), checks.slot_a_amber, checks.slot_a_red)
    bias = overall.position_bias_nats
    figure = f"slot A wins {rate:.1%}" + ("" if bias is None else f", bias {bias:+.2f} nats")
    return _judged(
        name,
        rate,
        status,
        figure,
        threshold,
        red="Keep judge.mode calibrated and use a judge that reads the responses.",
        amber="Keep judge.mode calibrated: it cancels a constant bias.",
    )


def _entropy(overall: Consistency | None, checks: ChecksConfig) -> Check:
    name = "label entropy"
    threshold = (
        f"amber > {checks.entropy_amber:.2f}, red > {checks.entropy_red:.2f} nats; "
        f"paper 0.13, coin flip {COIN_FLIP_NATS:.3f}"
    )
    after = overall.label_entropy_after if overall is not None else None
    if overall is None or after is None:
        return _missing(name, threshold, NO_JUDGMENTS)
    status = _grade(after, checks.entropy_amber, checks.entropy_red)
    before = overall.label_entropy_before
    figure = f"{after:.3f} nats after refinement" + (
        "" if before is None else f" ({before:.3f} before)"
    )
    return _judged(
        name,
        after,
        status,
        figure,
        threshold,
        red="Use a stronger judge: its labels are close to coin flips.",
        amber="Raise stages.judge.refine_rounds, or use a stronger judge.",
    )


def _truncation(stages: list[StageSummary], checks: ChecksConfig) -> Check:
    """Completions cut at max_tokens (`stages.base.complete_whole`: each is asked again or
    dropped, `<what>_regenerated_truncated` + `<what>_dropped_truncated`) over all
    completions of those texts (`<what>_requests`, retries included)."""
    name = "truncated texts"
    threshold = f"amber > {checks.truncated_amber:.0%}, red > {checks.truncated_red:.0%}"
    cut: Counter[str] = Counter()
    asked: Counter[str] = Counter()
    for stage in stages:
        c = stage.counters
        found = {key.removesuffix(s) for key in c for s in _CUT_SUFFIXES if key.endswith(s)}
        for what in found:
            cut[what] += sum(c.get(f"{what}{s}", 0) for s in _CUT_SUFFIXES)
            asked[what] += c.get(f"{what}_requests", 0)
    total = sum(asked.values())
    if not total:
        return _missing(name, threshold, "Generate texts to measure it.")
    share = sum(cut.values()) / total
    status = _grade(share, checks.truncated_amber, checks.truncated_red)
    worst = max(cut, key=lambda w: (cut[w], w))
    figure = f"{sum(cut.values())} of {total} texts cut at max_tokens ({share:.1%})"
    raise_budget = f"Raise stages.{worst}.max_tokens ({cut[worst]} of {asked[worst]} cut)."
    return _judged(name, share, status, figure, threshold, red=raise_budget, amber=raise_budget)


def _similarity(similarity: float | None, checks: ChecksConfig) -> Check:
    name = "candidate similarity"
    threshold = (
        f"amber > {checks.similarity_amber:.2f}, red > {checks.similarity_red:.2f}; paper 0.96 "
        "one model at T=0.3, 0.78 views, 0.71 ensemble + views (another embedder)"
    )
    if similarity is None:
        return _missing(name, threshold, NO_REPORT)
    status = _grade(similarity, checks.similarity_amber, checks.similarity_red)
    figure = f"mean cosine {similarity:.2f} between a question's candidates"
    return _judged(
        name,
        similarity,
        status,
        figure,
        threshold,
        red="Steer candidates by views, or use an ensemble of models.",
        amber="Look for collapsed viewpoints in the report's candidate histogram.",
    )
