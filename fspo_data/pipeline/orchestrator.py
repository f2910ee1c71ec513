"""Runs the stages on Ray, shard by shard, committing each shard as it finishes.

LLM stages run in `ShardWorker` actors that each hold one engine replica for the whole
run; other stages run as Ray tasks. A worker computes a shard, writes its Parquet file
atomically and returns its manifest entry; only the driver writes manifests.

Ray Data's `write_parquet` names files by block, keeps no manifest and cannot skip what an
earlier attempt committed, so shards are dispatched here instead. The orchestrator alone
does I/O: it plans a stage's shards from its declaration (`plan_shards`), reads each shard's
declared inputs, hands them to the stage's pure `run` and writes what comes back.

Resume: each stage's manifest is first checked against its files (`reconcile_with_disk`),
then a committed shard is dropped if it is no longer planned, if its planned item range
changed (growing `counts.users` re-cuts a partial last shard), if its recipe (config slice,
prompts, model) changed, or if a group of upstream shards it read now has another digest
(pipeline/resume.py). Everything not committed is then computed.

A shard whose model calls the endpoint could not answer is not committed (`CallTally`,
pipeline/tally.py: no record is lost to an outage); the run stops with `RunStopped`, keeping
what is committed. So it does when a guard (`Guard`, e.g. the budget cap of
pipeline/budget.py) says so before a shard is dispatched: LLM shards go out two per replica
at a time (pipeline/dispatch.py).

One run at a time holds the run folder (pipeline/lock.py); a second is refused.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from fspo_data.core.config import JobConfig
from fspo_data.core.shards import (
    Manifest,
    OutputWriteError,
    ShardEntry,
    remove_temp_files,
    save_manifest,
)
from fspo_data.pipeline.budget import BudgetGuard
from fspo_data.pipeline.cost import run_dollars
from fspo_data.pipeline.dispatch import SHARDS_IN_FLIGHT_PER_REPLICA, Dispatcher, ReplicasLost
from fspo_data.pipeline.gold import GateGuard, summarize_gold
from fspo_data.pipeline.lock import holding, run_lock
from fspo_data.pipeline.resume import drop_stale, open_manifest, prepare_run_dir, shard_recipe
from fspo_data.pipeline.summary import (
    RunSummary,
    StageSummary,
    model_summaries,
    summarize_judgments,
    write_summary,
)
from fspo_data.pipeline.tally import ModelUnavailable
from fspo_data.pipeline.validate import validate_job, validate_placement
from fspo_data.pipeline.verdicts import with_verdicts
from fspo_data.pipeline.workers import EnginePools, run_cpu_shard
from fspo_data.stages import STAGES, plan_shards
from fspo_data.stages.base import ShardSpec, Stage

MANIFEST_SAVE_INTERVAL_S = 1.0


class RunStopped(RuntimeError):
    """The run cannot go on (model down, output not writable); committed shards are kept."""


# Raised inside a worker, they stop the run with their one-line message, not a traceback.
STOPPING_ERRORS = (ModelUnavailable, OutputWriteError)


def init_ray(config: JobConfig) -> None:
    if ray.is_initialized():
        return
    # Ray 2.60 otherwise writes an auth token under the home folder.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Every shard's result is read (`shard_result`); the only errors never read are those of
    # shards abandoned when the run stops on its first error, which Ray would log, traceback
    # and all, after the one line that says why the run stopped.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    ray.init(
        # "local", not None: None would join any cluster a `ray start` left on this machine.
        address=config.ray.address or "local",
        num_cpus=config.ray.num_cpus if config.ray.address is None else None,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level="WARNING",
    )


def shard_result(ref: ray.ObjectRef) -> ShardEntry:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, STOPPING_ERRORS):
            raise RunStopped(str(exc.cause)) from None
        raise


# A check before each shard is dispatched: (stage, its manifest with every shard committed so
# far, how many of its shards are in flight) -> a one-line reason to stop, or None; asked once
# more when the stage is whole, with None in flight. Checks are run in order, once per
# dispatch, so they should be cheap (cache what does not change within a stage). On a reason,
# nothing more is dispatched; the shards in flight finish and are committed, then the run
# stops with `RunStopped(reason)`. The budget cap (pipeline/budget.py) and the gold gate
# (pipeline/gold.py) are two.
Guard = Callable[[Stage, Manifest, int | None], str | None]


def run_stage(
    config: JobConfig,
    stage: Stage,
    pools: EnginePools,
    progress: bool,
    guards: Sequence[Guard] = (),
    later: Sequence[Stage] = (),
) -> StageSummary:
    """Compute the stage's shards not yet committed, committing each as it finishes. LLM
    shards go out `SHARDS_IN_FLIGHT_PER_REPLICA` per replica at a time (a finished shard's
    replica gets the next), CPU shards all at once (Ray queues them); `guards` are asked
    before each."""
    started = time.perf_counter()
    stage_dir = config.run_dir / stage.name
    manifest, notes = open_manifest(config, stage)
    specs = plan_shards(stage, config)
    recipes = {domain: shard_recipe(stage, domain, config) for domain in config.domains}
    recomputed = drop_stale(config, stage, manifest, specs, recipes)
    for line in recomputed if progress else []:
        tqdm.write(line)
    notes += recomputed
    # Domains interleaved: every domain's first shards go first, so a guard (the gold gate)
    # can judge each domain before the stage has spent much on any.
    todo = deque(
        sorted(
            (s for s in specs if s.name not in manifest.shards), key=lambda s: (s.index, s.domain)
        )
    )
    planned_now = len(todo)
    if stage.needs_llm:
        actors, peers = pools.for_stage(stage, later) if todo else ([], {})
        slots = [a for _ in range(SHARDS_IN_FLIGHT_PER_REPLICA) for a in actors]

        def submit(spec: ShardSpec, actor: Any) -> ray.ObjectRef:
            return actor.run_shard.remote(spec, peers)
    else:
        # Plain tasks need the CPUs the engines hold on a small machine.
        pools.release()
        slots = [None] * len(todo)  # a slot per shard: Ray places plain tasks itself

        def submit(spec: ShardSpec, _: Any) -> ray.ObjectRef:
            return run_cpu_shard.remote(config, spec)

    def ask_guards(in_flight: int | None) -> str | None:
        return next((r for guard in guards if (r := guard(stage, manifest, in_flight))), None)

    queue = Dispatcher(todo, slots, submit, ask_guards)

    def commit(spec: ShardSpec, entry: ShardEntry) -> None:
        nonlocal last_save
        entry.recipe = recipes[spec.domain]
        manifest.shards[spec.name] = entry
        bar.update(1)
        bar.set_postfix(rows=manifest.rows)
        if time.perf_counter() - last_save > MANIFEST_SAVE_INTERVAL_S:
            save_manifest(stage_dir, manifest)
            last_save = time.perf_counter()

    bar = tqdm(
        total=len(specs),
        initial=len(specs) - planned_now,
        desc=f"{stage.name:>9}",
        unit="shard",
        disable=not progress,
    )
    last_save = 0.0
    stopping = False
    try:
        queue.run(shard_result, commit)
        # A worker lost mid-write (its node died) leaves a temp file; its shard was retried.
        remove_temp_files(stage_dir)
        stop_reason = queue.stop_reason or ask_guards(None)
        if stop_reason is not None:
            raise RunStopped(stop_reason)
    except BaseException as exc:
        stopping = True
        queue.cancel()
        if isinstance(exc, ReplicasLost):
            raise RunStopped(f"{stage.name}: {exc}") from None
        raise
    finally:
        bar.close()
        try:
            save_manifest(stage_dir, manifest)
        except OutputWriteError:
            # Already stopping: the first error says why; shards committed since the last
            # save are simply recomputed on resume.
            if not stopping:
                raise
    return StageSummary.from_manifest(
        stage.name,
        manifest,
        len(specs),
        planned_now,
        time.perf_counter() - started,
        notes,
        config.roster().models,
    )


def run_job(
    config: JobConfig,
    *,
    progress: bool = True,
    force_new_config: bool = False,
    source: Path | str = "config",
    after: Callable[[RunSummary], RunSummary] | None = None,
) -> RunSummary:
    """Run (or resume) every stage, holding the run folder's lock; `after` (the report of
    `report.after_run`) is applied to the summary before the lock is let go. Raises
    `ConfigError` (naming `source`, the config file), `RunDirBusy` (another process holds the
    folder) or `RunConfigMismatch` before anything is written, and `RunStopped` when the model
    is down, the run folder cannot be written, the next shard would cross `budget_usd` or the
    judge fails the gold gate (`stages.judge.gate`)."""
    started = time.perf_counter()
    validate_job(config, source)
    init_ray(config)
    validate_placement(config, source)
    try:
        with holding(run_lock(config.run_dir)) as lock:
            prepare_run_dir(config, force_new_config)
            pools = EnginePools(config)
            # A lease taken over (object storage) stops the run before its next shard.
            guards: list[Guard] = [lambda *_: lock.lost(), GateGuard(config)]
            if config.budget_usd is not None:
                guards.append(BudgetGuard(config))
            stages = []
            try:
                for i, stage in enumerate(STAGES):
                    later = STAGES[i + 1 :]
                    stages.append(run_stage(config, stage, pools, progress, guards, later))
            finally:
                pools.release()
            consistency = summarize_judgments(config.run_dir, config.stages.judge)
            overall = consistency.get("overall")
            summary = RunSummary(
                run_dir=str(config.run_dir),
                config_fingerprint=config.fingerprint(),
                wall_seconds=time.perf_counter() - started,
                stages=stages,
                consistency=consistency,
                gold=summarize_gold(config.run_dir),
                dollars=run_dollars(
                    (s.dollars for s in stages), overall.pairs_kept if overall else 0
                ),
                models=model_summaries(config.roster(), stages),
            )
            summary = with_verdicts(summary, config.checks, config.stages.judge.gate)
            write_summary(config.run_dir, summary)
            if after is not None:
                summary = after(summary)
    except OutputWriteError as exc:
        raise RunStopped(str(exc)) from None
    return summary
