"""Dollars: the arithmetic per shard, stage and kept label, `plan`'s estimate, the budget
guard's decision, and prices kept out of the fingerprint and every shard recipe."""

import argparse

import pytest
from rich.console import Console

from fspo_data.core.config import JobConfig
from fspo_data.core.config_files import ConfigError, dump_config, load_yaml_model
from fspo_data.core.model_config import ModelConfig, Prices
from fspo_data.core.shards import Manifest, ShardEntry, save_manifest
from fspo_data.pipeline.budget import BudgetGuard
from fspo_data.pipeline.cost import counter_dollars, run_dollars, usd
from fspo_data.pipeline.dataset_card import _summary as dataset_card_summary
from fspo_data.pipeline.plan import stage_dollars, stage_loads
from fspo_data.pipeline.plan_command import add_plan_command, render
from fspo_data.pipeline.resume import shard_recipe
from fspo_data.pipeline.summary import RunSummary, StageSummary
from fspo_data.pipeline.summary import render as render_summary
from fspo_data.stages import STAGES, STAGES_BY_NAME, plan_shards
from tests.pipeline.test_plan import small_config

# gpt-4o-mini's list prices as of 2025, per million tokens.
TOKEN_PRICES = {
    "input_per_million": 0.15,
    "cached_input_per_million": 0.075,
    "output_per_million": 0.6,
}


def priced(config: JobConfig, budget_usd: float | None = None, **prices: float) -> JobConfig:
    model = config.model.model_copy(update={"prices": Prices(**prices)})
    return config.model_copy(update={"model": model, "budget_usd": budget_usd})


def test_token_prices_charge_cached_prompt_tokens_at_their_own_price():
    counters = {
        "prompt_tokens": 1_000_000,
        "cached_prompt_tokens": 400_000,
        "completion_tokens": 50_000,
    }
    # 600k uncached x 0.15 + 400k cached x 0.075 + 50k x 0.6, per million.
    assert counter_dollars(Prices(**TOKEN_PRICES), counters) == pytest.approx(0.09 + 0.03 + 0.03)
    # No cached price: cached tokens cost as much as the others.
    plain = Prices(input_per_million=0.15, output_per_million=0.6)
    assert counter_dollars(plain, counters) == pytest.approx(0.15 + 0.03)


def test_an_hourly_rate_charges_engine_time():
    # 90 minutes inside the backend, summed over shards, at $2.40 per replica-hour.
    counters = {"engine_ms": 90 * 60_000, "completion_tokens": 10**6}
    assert counter_dollars(Prices(per_replica_hour=2.4), counters) == pytest.approx(3.6)
    both = Prices(per_replica_hour=2.4, output_per_million=1.0)  # both are charged
    assert counter_dollars(both, counters) == pytest.approx(4.6)


def test_no_prices_give_no_money_figures():
    assert counter_dollars(Prices(), {"prompt_tokens": 10**9}) is None
    assert run_dollars([None, None], kept_labels=100) is None
    assert usd(None) == "-"
    summary = RunSummary(run_dir="r", config_fingerprint="f", wall_seconds=1.0, stages=[])
    assert summary.dollars is None
    with pytest.raises(ValueError, match="budget_usd needs model.prices"):
        JobConfig(run_dir="x", budget_usd=5)


def test_dollars_per_kept_label_divide_the_total_of_every_stage():
    figures = run_dollars([1.5, None, 0.5], kept_labels=400)
    assert figures is not None
    assert (figures.total, figures.per_kept_label) == (2.0, 0.005)
    assert run_dollars([1.0], kept_labels=0).per_kept_label is None  # nothing kept
    assert figures.describe() == "Cost at the config's prices: $2.00, $0.0050 per kept label"
    assert [usd(v) for v in (1234.5, 0.31, 0.00423, 0.0)] == [
        "$1,234.50",
        "$0.31",
        "$0.0042",
        "$0.00",
    ]


def test_the_summary_shows_each_stages_dollars():
    prices = Prices(output_per_million=1000)
    manifest = Manifest(stage="judge", schema="", config_fingerprint="f", package_versions={})
    for i, tokens in enumerate((300, 500)):
        manifest.shards[f"x-{i}"] = entry(completion_tokens=tokens)
    models = {"m": ModelConfig(prices=prices)}
    judge = StageSummary.from_manifest("judge", manifest, 2, 2, 1.0, [], models)
    assert judge.dollars == pytest.approx(0.8)
    summary = RunSummary(run_dir="r", config_fingerprint="f", wall_seconds=1.0, stages=[judge],
                         dollars=run_dollars([judge.dollars], 16))  # fmt: skip
    console = Console(record=True, width=200)
    render_summary(summary, console)
    text = console.export_text()
    assert "$0.80" in next(line for line in text.splitlines() if "judge" in line)
    assert "Cost at the config's prices: $0.80, $0.050 per kept label" in text


def test_plan_prices_each_stages_estimated_tokens_and_gpu_hours():
    config = priced(small_config(), **TOKEN_PRICES)
    loads = stage_loads(config)
    assert [load.stage for load in loads["responses"]] == ["views", "responses"]
    dollars = stage_dollars(config)
    judge = loads["judge"][0]
    expected = (
        (judge.prompt_tokens - judge.cached_prompt_tokens) * 0.15
        + judge.cached_prompt_tokens * 0.075
        + judge.generated_tokens * 0.6
    ) / 1e6
    assert dollars["judge"] == pytest.approx(expected)
    # Hourly: GPU-hours at the per-GPU rates, over tensor_parallel_size (2) GPUs per replica.
    hourly = stage_dollars(priced(small_config(), per_replica_hour=10.0), 5000, 1000)
    assert hourly["judge"] == pytest.approx(judge.gpu_hours(5000, 1000) / 2 * 10.0)
    assert stage_dollars(small_config()) == {}  # no prices, no estimate


def test_plan_prints_dollars_per_stage_and_in_total(capsys):
    parser = argparse.ArgumentParser()
    add_plan_command(parser.add_subparsers())
    args = parser.parse_args(["plan", "x.yaml"])
    config = priced(small_config(), **TOKEN_PRICES)
    console = Console(record=True, width=200)
    render(config, args, console)
    text = console.export_text()
    total = sum(stage_dollars(config).values())
    assert usd(stage_dollars(config)["judge"]) in next(
        line for line in text.splitlines() if line.startswith("│ judge")
    )
    total_line = next(line for line in text.splitlines() if "dollars at the config" in line)
    assert usd(total) in total_line


def entry(**counters: int) -> ShardEntry:
    return ShardEntry(file="f", rows=1, bytes=1, sha256="s", counters=counters)


def manifest_of(stage: str, *costs_in_tokens: int) -> Manifest:
    manifest = Manifest(stage=stage, schema="", config_fingerprint="f", package_versions={})
    for i, tokens in enumerate(costs_in_tokens):
        manifest.shards[f"roleplay-{i:05d}"] = entry(completion_tokens=tokens)
    return manifest


def test_the_budget_guard_stops_before_a_shard_that_would_cross_the_cap(tmp_path):
    # $1 per thousand generated tokens: personas committed $1.50, judge shards $0.20 and $0.40.
    config = priced(small_config().model_copy(update={"run_dir": tmp_path}),
                    budget_usd=2.5, output_per_million=1000)  # fmt: skip
    save_manifest(tmp_path / "personas", manifest_of("personas", 1000, 500))
    guard, judge = BudgetGuard(config), STAGES_BY_NAME["judge"]
    # $1.50 + $0.60 spent; the next at the dearest so far, $0.40: $2.50 <= $2.50.
    assert guard(judge, manifest_of("judge", 200, 400), in_flight=0) is None
    # One more in flight: $2.10 + 2 x $0.40 > $2.50.
    reason = guard(judge, manifest_of("judge", 200, 400), in_flight=1)
    assert reason == (
        "budget: spent $2.10 of budget_usd 2.50 (+ about $0.40 in flight); the next judge shard "
        "would cost about $0.40 — raise budget_usd to go on"
    )


def test_before_a_stages_first_shard_the_guard_takes_plans_estimate(tmp_path):
    config = priced(small_config().model_copy(update={"run_dir": tmp_path}),
                    budget_usd=1000, output_per_million=1000)  # fmt: skip
    judge = STAGES_BY_NAME["judge"]
    per_shard = stage_dollars(config)["judge"] / len(plan_shards(judge, config))
    guard = BudgetGuard(config)
    assert guard(judge, manifest_of("judge"), in_flight=0) is None
    tight = BudgetGuard(config.model_copy(update={"budget_usd": per_shard * 0.99}))
    assert f"would cost about {usd(per_shard)}" in tight(judge, manifest_of("judge"), 0)


def test_prices_and_the_budget_change_no_fingerprint_and_no_recipe(tmp_path):
    plain = small_config()
    costly = priced(plain, budget_usd=7.5, **TOKEN_PRICES, per_replica_hour=3.0)
    assert plain.fingerprint() == costly.fingerprint()
    assert "prices" not in str(costly.model.identity())
    for stage in STAGES:
        for domain in plain.domains:
            assert shard_recipe(stage, domain, plain) == shard_recipe(stage, domain, costly)
    # And they survive the run folder's config.yaml.
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(costly))
    assert load_yaml_model(path, JobConfig).model.prices == costly.model.prices


def test_a_budget_without_prices_is_a_one_line_config_error(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("run_dir: r\nbudget_usd: 3\n")
    with pytest.raises(ConfigError, match="budget_usd needs model.prices"):
        load_yaml_model(path, JobConfig)


def test_the_dataset_card_shows_dollars_per_stage_and_in_total():
    judge = StageSummary(stage="judge", shards_planned=1, shards_committed=1, shards_run_now=1,
                         rows=1, wall_seconds=1.0, dollars=0.25)  # fmt: skip
    summary = RunSummary(run_dir="r", config_fingerprint="f", wall_seconds=1.0, stages=[judge],
                         dollars=run_dollars([0.25], 100))  # fmt: skip
    card = dataset_card_summary(summary.model_dump(mode="json"), None)
    assert "| judge | 0 | 0 | 0 | 0 | 1.0 | $0.25 |" in card
    assert "Cost at the config's prices: $0.25, $0.0025 per kept label." in card
