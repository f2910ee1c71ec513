"""The budget cap (`budget_usd`): a guard the orchestrator asks before dispatching each shard.

Spent is the dollars (`pipeline.cost`) of every committed shard of every stage, read from the
manifests' counters, so a resumed run counts what its earlier attempts committed (work of
shards never committed, e.g. those of a killed attempt, is not counted). The shards in
flight and the next one are each estimated at the dollars of this stage's dearest committed
shard; before one is committed, at `fspo-data plan`'s estimate for the stage (tokens from
the config, hourly rates at plan's default per-GPU throughput, far off for CPU engines)
divided by its planned shards; zero for a stage `plan` does not size (rationales) or that
makes no model calls. If spent plus those would cross the cap, the run stops; raising
`budget_usd` and running again resumes where it stopped (the cap is in no recipe).
"""

from __future__ import annotations

from fspo_data.core.config import JobConfig
from fspo_data.core.shards import CorruptManifest, Manifest, ShardEntry, load_manifest
from fspo_data.pipeline.cost import shard_dollars, usd
from fspo_data.pipeline.plan import stage_dollars
from fspo_data.stages import STAGES, plan_shards
from fspo_data.stages.base import Stage


class BudgetGuard:
    """`orchestrator.Guard` for `config.budget_usd` (which must be set)."""

    def __init__(self, config: JobConfig) -> None:
        assert config.budget_usd is not None
        self.config, self.cap = config, config.budget_usd
        self.planned: dict[str, float] | None = None
        # Dollars committed by the other stages, read once per stage: they do not change
        # while this one runs.
        self.elsewhere: tuple[str, float] | None = None

    def __call__(self, stage: Stage, manifest: Manifest, in_flight: int | None) -> str | None:
        if in_flight is None:  # the stage is whole: no next shard to pay for
            return None
        done = [self._dollars(entry) for entry in manifest.shards.values()]
        spent = self._spent_elsewhere(stage.name) + sum(done)
        # The dearest shard so far, not the mean: shards differ (a domain's texts are longer),
        # and the cap is a promise, so the estimate errs high.
        shard = max(done) if done else self._planned_per_shard(stage)
        if spent + (in_flight + 1) * shard <= self.cap:
            return None
        flying = f" (+ about {usd(in_flight * shard)} in flight)" if in_flight else ""
        return (
            f"budget: spent {usd(spent)} of budget_usd {self.cap:,.2f}{flying}; the next "
            f"{stage.name} shard would cost about {usd(shard)} — raise budget_usd to go on"
        )

    def _dollars(self, entry: ShardEntry) -> float:
        return shard_dollars(self.config.roster().models, entry.counters) or 0.0

    def _spent_elsewhere(self, current: str) -> float:
        if self.elsewhere is None or self.elsewhere[0] != current:
            spent = 0.0
            for stage in (s for s in STAGES if s.name != current):
                try:
                    manifest = load_manifest(self.config.run_dir / stage.name)
                except CorruptManifest:
                    manifest = None  # that stage starts over when it runs
                if manifest is not None:
                    spent += sum(self._dollars(entry) for entry in manifest.shards.values())
            self.elsewhere = (current, spent)
        return self.elsewhere[1]

    def _planned_per_shard(self, stage: Stage) -> float:
        if self.planned is None:
            self.planned = stage_dollars(self.config)
        shards = len(plan_shards(stage, self.config))
        return self.planned.get(stage.name, 0.0) / shards if shards else 0.0
