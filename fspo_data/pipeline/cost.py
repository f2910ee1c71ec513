"""Dollars: the one place that turns counted work into money at the config's prices.

The same arithmetic prices a committed shard (its manifest counters), a stage of the run
summary (the sum of its shards' counters) and a stage of `fspo-data plan` (its estimated
tokens and GPU-hours), so the three agree by construction:

- tokens: uncached prompt tokens at `input_per_million`, cached ones at
  `cached_input_per_million` (the input price when empty), generated tokens at
  `output_per_million`;
- time: engine hours (`engine_ms`; in `plan`, GPU-hours / tensor_parallel_size) at
  `per_replica_hour`.

Without any price every figure is None, shown as '-': a price is never made up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from fspo_data.core.chat import counters_by_model
from fspo_data.core.model_config import ModelConfig, Prices

# `fspo-data plan`, imported on every CLI start, imports this module: no stage modules here.
if TYPE_CHECKING:
    from fspo_data.stages.base import StageLoad

MS_PER_HOUR = 3_600_000


class RunDollars(BaseModel):
    """The run's money figures in summary.json (per stage: `StageSummary.dollars`)."""

    model_config = ConfigDict(extra="forbid")
    total: float = Field(description="Dollars of every committed shard at the config's prices.")
    per_kept_label: float | None = Field(
        description="total / the judge's kept pairs (all domains); null when none was kept."
    )

    def describe(self) -> str:
        """The one line the run summary and the dataset card print."""
        per_label = (
            "" if self.per_kept_label is None else f", {usd(self.per_kept_label)} per kept label"
        )
        return f"Cost at the config's prices: {usd(self.total)}{per_label}"


def work_dollars(
    prices: Prices,
    prompt_tokens: int,
    cached_prompt_tokens: int,
    completion_tokens: int,
    replica_hours: float,
) -> float | None:
    """Dollars of some model work; None when no price is given."""
    if not prices.given:
        return None
    cached_price = prices.cached_input_per_million
    cached_price = prices.input_per_million if cached_price is None else cached_price
    tokens = (
        (prompt_tokens - cached_prompt_tokens) * prices.input_per_million
        + cached_prompt_tokens * cached_price
        + completion_tokens * prices.output_per_million
    ) / 1e6
    return tokens + replica_hours * prices.per_replica_hour


def counter_dollars(prices: Prices, counters: Mapping[str, int]) -> float | None:
    """Dollars of a shard, or a stage, from its counters (as `core.chat.complete_all` counts)."""
    return work_dollars(
        prices,
        counters.get("prompt_tokens", 0),
        counters.get("cached_prompt_tokens", 0),
        counters.get("completion_tokens", 0),
        counters.get("engine_ms", 0) / MS_PER_HOUR,
    )


def model_counters(
    models: Mapping[str, ModelConfig], counters: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    """Each model's counters in a shard's, or a stage's (`model/<name>/...`). A shard of a
    one-model job written before models had counters of their own counts all its work for
    that model: its totals."""
    by_model = counters_by_model(counters)
    if not by_model and len(models) == 1:
        # Its calls were counted only per kind of request (`<what>_requests`).
        calls = sum(n for key, n in counters.items() if key.endswith("_requests"))
        return {next(iter(models)): {**counters, "requests": calls}}
    return by_model


def shard_dollars(models: Mapping[str, ModelConfig], counters: Mapping[str, int]) -> float | None:
    """Dollars of a shard, or a stage, whose calls may have gone to several models: each
    model's counters at its own prices."""
    figures = [
        counter_dollars(models[name].prices, counts)
        for name, counts in model_counters(models, counters).items()
        if name in models
    ]
    given = [d for d in figures if d is not None]
    return sum(given) if given else None


def load_dollars(model: ModelConfig, load: StageLoad, gpu_hours: float) -> float | None:
    """Dollars `fspo-data plan` expects for `load`, taking `gpu_hours` (at its per-GPU rates)
    as gpu_hours / tensor_parallel_size hours of a replica."""
    return work_dollars(
        model.prices,
        load.prompt_tokens,
        load.cached_prompt_tokens,
        load.generated_tokens,
        gpu_hours / model.tensor_parallel_size,
    )


def run_dollars(stage_dollars: Iterable[float | None], kept_labels: int) -> RunDollars | None:
    """The total of the stages' dollars, and per kept label; None without prices."""
    figures = [d for d in stage_dollars if d is not None]
    if not figures:
        return None
    total = sum(figures)
    return RunDollars(total=total, per_kept_label=total / kept_labels if kept_labels else None)


def usd(value: float | None) -> str:
    """How every dollar figure prints: '$1,234.50', '$0.31', '$0.0042' (two significant
    digits below a dollar: a demo's stages cost fractions of a cent); '-' without prices."""
    if value is None:
        return "-"
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.{max(2, 1 - math.floor(math.log10(value)))}f}"
