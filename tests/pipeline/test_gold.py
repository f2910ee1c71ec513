"""Gold figures from the gold shards' counters, their interval, and when the gate stops."""

from __future__ import annotations

import pytest

from fspo_data.core.config import JobConfig
from fspo_data.core.shards import ShardEntry
from fspo_data.pipeline.gold import figures_of, gate_failure, gold_figures, wilson_interval


def entry(judged: int, kept: int, right: int) -> ShardEntry:
    counters = {"gold_pairs_judged": judged, "gold_pairs_kept": kept, "gold_pairs_right": right}
    return ShardEntry(file="f", rows=judged, bytes=1, sha256="x", counters=counters)


def job(min_accuracy: float | None, min_pairs: int = 20) -> JobConfig:
    gate = {"min_accuracy": min_accuracy, "min_pairs": min_pairs}
    return JobConfig.model_validate(
        {"run_dir": "unused", "domains": ["elix", "review"], "stages": {"judge": {"gate": gate}}}
    )


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_a_dropped_pair_counts_one_half():
    figures = figures_of(judged=10, kept=6, right=5)  # 5 right, 1 wrong, 4 abstentions
    assert figures.accuracy == pytest.approx((5 + 4 / 2) / 10)
    assert figures.ci_low < figures.accuracy < figures.ci_high
    assert figures_of(0, 0, 0).accuracy is None
    assert figures.describe() == "0.70 [0.40, 0.89] (10 pairs, 6 kept, 5 right)"


def test_figures_add_up_per_domain_and_overall():
    figures = gold_figures(
        {
            "elix-00000": entry(10, 10, 9),
            "elix-00001": entry(10, 10, 9),
            "review-00000": entry(4, 0, 0),
        }
    )
    assert figures["elix"].pairs == 20 and figures["elix"].accuracy == pytest.approx(0.9)
    assert figures["review"].accuracy == 0.5
    assert figures["overall"].pairs == 24 and figures["overall"].right == 18
    assert gold_figures({"elix-00000": entry(0, 0, 0)}) == {}


def test_the_gate_waits_for_min_pairs_then_names_the_figure_and_the_threshold():
    config = job(min_accuracy=0.8)
    low = {"elix-00000": entry(10, 10, 5)}
    assert gate_failure(config, low, stage_done=False) is None  # 10 < min_pairs: not yet
    low["elix-00001"] = entry(10, 10, 5)
    message = gate_failure(config, low, stage_done=False)
    assert message and message.startswith("gate: elix gold accuracy 0.50")
    assert "stages.judge.gate.min_accuracy 0.8" in message and "\n" not in message
    assert gate_failure(job(min_accuracy=None), low, stage_done=True) is None


def test_a_domain_left_unmeasured_when_the_stage_ends_stops_the_run():
    good = {"elix-00000": entry(30, 30, 30), "review-00000": entry(4, 4, 4)}
    assert gate_failure(job(min_accuracy=0.8), good, stage_done=False) is None
    message = gate_failure(job(min_accuracy=0.8), good, stage_done=True)
    assert message and "review has 4 gold pairs judged, fewer than" in message
