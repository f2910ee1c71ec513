"""Where shards are computed: engine actors, one pool per model, and plain Ray tasks.

Each model of the job's roster (`JobConfig.roster`) gets its own pool of `ShardWorker`
actors, one engine replica each, with that model's resources reserved on Ray, so a judge
needing several GPUs and a generator needing one can share a cluster. A pool starts when a
stage first needs its model and is let go when no later stage does. A stage's shards run
in the actors of its first role's model; calls to the stage's other models (an ensemble's
other members) go from there to their pools (`PeerPool`), split over their replicas.

A worker computes a shard, writes its Parquet file atomically and returns its manifest entry;
only the driver writes manifests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from fspo_data.backends import backend_env, make_backend
from fspo_data.core.chat import BackendStats, ChatRequest, Completion
from fspo_data.core.config import JobConfig
from fspo_data.core.model_config import RESOURCE_SLACK, ModelConfig, pools_resources
from fspo_data.core.records import to_table
from fspo_data.core.shards import ShardEntry, read_committed, write_shard
from fspo_data.core.storage import Location
from fspo_data.pipeline.tally import CallTally
from fspo_data.stages import STAGES_BY_NAME
from fspo_data.stages.base import Inputs, ShardSpec, Stage, StageContext, require_columns

BATCH_JOURNAL = "batches"  # RUN_DIR/batches: batch ids of openai batch mode, for resume
# Restarts of one engine actor (its node lost, its process killed) before it is given up.
ENGINE_RESTARTS = 2


def read_inputs(stage: Stage, spec: ShardSpec, run_dir: Location) -> tuple[Inputs, dict[str, str]]:
    """The committed upstream shards `spec` reads, as declared, checked against their record
    types; and `{stage}/{prefix}` -> digest of each group read."""
    tables, digests = {}, {}
    for source in stage.inputs:
        prefix = source.prefix(spec)
        table, digest = read_committed(run_dir, source.stage, prefix)
        record_type = STAGES_BY_NAME[source.stage].record_type
        require_columns(stage.name, f"{source.stage}/{prefix}*", table, record_type)
        tables[source.stage] = table
        digests[f"{source.stage}/{prefix}"] = digest
    return tables, digests


def execute_shard(spec: ShardSpec, ctx: StageContext, *tallies: CallTally) -> ShardEntry:
    """Read a shard's inputs, compute it, commit it; its manifest entry is the result.
    `tallies` wrap the backends in `ctx`: a shard whose model was unavailable is not committed."""
    stage = STAGES_BY_NAME[spec.stage]
    run_dir = ctx.config.run_dir
    for tally in tallies:
        tally.reset(spec)
    inputs, digests = read_inputs(stage, spec, run_dir)
    output = stage.run(spec, inputs, ctx)
    for tally in tallies:
        tally.check()
    table = to_table(output.records, stage.record_type)
    entry = write_shard(run_dir / stage.name, spec.name, table)
    entry.counters = dict(output.counters)
    for tally in tallies:
        entry.counters |= tally.backend_counters()
    entry.start, entry.stop, entry.inputs = spec.start, spec.stop, digests
    return entry


class PeerPool:
    """Another model's engine replicas, asked from inside a shard: the requests are split in
    contiguous runs (sorted requests keep their shared prefixes together) over the replicas.
    A replica lost mid-call has its run asked again of the next one (Ray restarts it)."""

    def __init__(self, name: str, actors: list) -> None:
        self.model_name = name
        self.actors = actors
        self._stats = BackendStats()

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        started = time.perf_counter()
        per = math.ceil(len(requests) / len(self.actors))
        runs = [requests[i : i + per] for i in range(0, len(requests), per)]
        refs = [a.complete.remote(run) for a, run in zip(self.actors, runs, strict=False)]
        completions: list[Completion] = []
        for i, (ref, run) in enumerate(zip(refs, runs, strict=True)):
            completions += self._answer(ref, run, i)
        self._stats.add(completions, time.perf_counter() - started)
        return completions

    def _answer(self, ref: ray.ObjectRef, run: list[ChatRequest], first: int) -> list[Completion]:
        # Every replica through every restart; the last try's error stops the shard.
        for attempt in range(1, len(self.actors) * (ENGINE_RESTARTS + 1)):
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError:
                ref = self.actors[(first + attempt) % len(self.actors)].complete.remote(run)
        return ray.get(ref)

    def stats(self) -> BackendStats:
        return self._stats


class ShardWorker:
    """A Ray actor holding one engine replica of one model: runs the shards of the stages
    whose first role that model serves, and answers other models' shards (`complete`)."""

    def __init__(self, config: JobConfig, name: str | None = None) -> None:
        roster = config.roster()
        name = name or next(iter(roster.models))
        self.engine = make_backend(roster.models[name], config.run_dir / BATCH_JOURNAL)
        self.tally = CallTally(self.engine, name)
        self.ctx = StageContext(config=config, backend=self.tally)

    def run_shard(self, spec: ShardSpec, peers: dict[str, list] | None = None) -> ShardEntry:
        tallies = [CallTally(PeerPool(n, actors), n) for n, actors in (peers or {}).items()]
        self.ctx.backends = {t.model_name: t for t in [self.tally, *tallies]}
        return execute_shard(spec, self.ctx, self.tally, *tallies)

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        """Calls of a shard running in another model's actor (the caller counts them)."""
        return self.engine.complete(requests)

    def ready(self) -> None:
        """Answers once the actor is up: after a restart, its engine has loaded again."""


# Ray retries a task whose worker or node died (3 is its default; resume relies on it).
@ray.remote(num_cpus=1, max_retries=3)
def run_cpu_shard(config: JobConfig, spec: ShardSpec) -> ShardEntry:
    return execute_shard(spec, StageContext(config=config))


def actor_options(model: ModelConfig) -> dict[str, Any]:
    """Ray options of one engine actor of `model` (bench/fleet.py starts its doubles so)."""
    env = backend_env(model) | {"OMP_NUM_THREADS": str(math.ceil(model.cpus_per_replica))}
    # Restarted on another node if theirs dies. Their shards in flight are not retried by
    # Ray (which would wait for the restart, the engine loading again): `run_stage` puts
    # them back in the queue for the next free replica (pipeline/dispatch.py).
    resources = model.replica_resources()
    return {
        "num_cpus": resources["CPU"],
        "num_gpus": resources.get("GPU", 0),
        "runtime_env": {"env_vars": env},
        "max_restarts": ENGINE_RESTARTS,
        "max_task_retries": 0,
    }


@dataclass
class EnginePools:
    """One pool of engine actors per model, started when a stage first needs the model and
    kept while a later stage does. `actors` may be given (benchmarks, tests: name -> actors)."""

    config: JobConfig
    actors: dict[str, list] = field(default_factory=dict)

    @classmethod
    def given(cls, config: JobConfig, actors: list) -> EnginePools:
        """A one-model job's pool made of `actors` started by the caller."""
        return cls(config, {next(iter(config.roster().models)): actors})

    def for_stage(self, stage: Stage, later: Sequence[Stage] = ()) -> tuple[list, dict[str, list]]:
        """The actors that run `stage`'s shards (its first role's model) and the pools of its
        other models, by name. Pools no stage from here on needs are let go first; held pools
        this stage does not need go too when the ones it needs would not fit beside them (so
        on a small machine pools run one after another instead of waiting on each other)."""
        roster = self.config.roster()
        names = roster.names_of(stage.roles)
        needed_later = {
            n for s in (stage, *later) if s.enabled(self.config) for n in roster.names_of(s.roles)
        }
        self.release(keep=needed_later)
        if not self._fit_beside_held(names):
            self.release(keep=set(names))
        for name in names:
            if name not in self.actors:
                model = roster.models[name]
                actor_class = ray.remote(ShardWorker).options(**actor_options(model))
                self.actors[name] = [
                    actor_class.remote(self.config, name) for _ in range(model.replicas)
                ]
        return self.actors[names[0]], {n: self.actors[n] for n in names[1:]}

    def _fit_beside_held(self, names: list[str]) -> bool:
        models = self.config.roster().models
        wanted = pools_resources([models[n] for n in names if n not in self.actors])
        available = ray.available_resources()
        return all(n <= available.get(kind, 0.0) + RESOURCE_SLACK for kind, n in wanted.items())

    def release(self, keep: set[str] | frozenset[str] = frozenset()) -> None:
        for name in [n for n in self.actors if n not in keep]:
            for actor in self.actors.pop(name):
                ray.kill(actor)
