"""Runs the stages on Ray, shard by shard, committing each shard as it finishes.

LLM stages run in `ShardWorker` actors that each hold one engine replica for the whole
run; other stages run as Ray tasks. A worker computes a shard, writes its Parquet file
atomically and returns its manifest entry; only the driver writes manifests.

Ray Data's `write_parquet` names files by block, keeps no manifest and cannot skip what an
earlier attempt committed, so shards are dispatched here instead; the per-shard work is
still a plain function over a batch of records.

Resume: each stage's manifest is first checked against its files (`reconcile_with_disk`),
then a committed shard is dropped if it is no longer planned, if its planned item range
changed (growing `counts.users` re-cuts a partial last shard), or if a group of upstream
shards it read now has another digest. Comparing inputs by content makes a change cascade
exactly as far as it must: a re-cut persona shard re-judges only its own users, while new
questions re-judge every user of the domain (their candidate pool changed). Everything not
committed is then computed.

A shard whose every model call failed is not committed: that says the engine or endpoint is
down, not that the rows are bad. The run stops with `RunStopped`, keeping what is committed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import yaml
from pydantic import ValidationError
from tqdm import tqdm

from fspo_data.backends import backend_env, make_backend
from fspo_data.core.chat import BackendStats, ChatRequest, Completion, LLMBackend
from fspo_data.core.config import JobConfig, dump_config
from fspo_data.core.records import to_table
from fspo_data.core.shards import (
    CorruptManifest,
    Manifest,
    OutputWriteError,
    ShardEntry,
    atomic_write_bytes,
    inputs_digest,
    load_manifest,
    make_dir,
    package_versions,
    reconcile_with_disk,
    recording_reads,
    remove,
    remove_temp_files,
    save_manifest,
    write_shard,
)
from fspo_data.domains import template_hashes
from fspo_data.pipeline.summary import (
    RunSummary,
    StageSummary,
    summarize_judgments,
    write_summary,
)
from fspo_data.pipeline.validate import validate_job
from fspo_data.stages import STAGES, STAGES_BY_NAME
from fspo_data.stages.base import ShardSpec, Stage, StageContext

MANIFEST_SAVE_INTERVAL_S = 1.0


class RunConfigMismatch(ValueError):
    """The run folder holds output of a different config."""


class ModelUnavailable(RuntimeError):
    """Every model call of a shard failed, so the shard is not committed."""


class RunStopped(RuntimeError):
    """The run cannot go on (model down, output not writable); committed shards are kept."""


# Raised inside a worker, they stop the run with their one-line message, not a traceback.
STOPPING_ERRORS = (ModelUnavailable, OutputWriteError)


class CallTally:
    """Wraps a worker's backend to count the current shard's model calls that failed for good."""

    def __init__(self, backend: LLMBackend) -> None:
        self.backend = backend
        self.model_name = backend.model_name
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.failed = 0
        self.first_error = ""

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        completions = self.backend.complete(requests)
        failed = [c for c in completions if not c.ok]
        self.calls += len(completions)
        self.failed += len(failed)
        self.first_error = self.first_error or (failed[0].error if failed else "")
        return completions

    def stats(self) -> BackendStats:
        return self.backend.stats()

    def check(self, spec: ShardSpec) -> None:
        if self.calls and self.failed == self.calls:
            raise ModelUnavailable(
                f"the model or endpoint is unavailable: all {self.calls} model calls of "
                f"{spec.stage}/{spec.name} failed ({self.first_error or 'no reason given'})"
            )


def execute_shard(spec: ShardSpec, ctx: StageContext, tally: CallTally | None = None) -> ShardEntry:
    stage = STAGES_BY_NAME[spec.stage]
    with recording_reads() as reads:
        output = stage.run(spec, ctx)
    if tally is not None:
        tally.check(spec)
    table = to_table(output.records, stage.record_type)
    entry = write_shard(ctx.run_dir / stage.name, spec.name, table)
    entry.counters = dict(output.counters)
    entry.start, entry.stop, entry.inputs = spec.start, spec.stop, reads
    return entry


class ShardWorker:
    """A Ray actor holding one engine replica; runs the shards of every LLM stage."""

    def __init__(self, config: JobConfig) -> None:
        self.tally = CallTally(make_backend(config.model))
        self.ctx = StageContext(config=config, backend=self.tally)

    def run_shard(self, spec: ShardSpec) -> ShardEntry:
        self.tally.reset()
        return execute_shard(spec, self.ctx, self.tally)


# Ray retries a task whose worker or node died (3 is its default; resume relies on it).
@ray.remote(num_cpus=1, max_retries=3)
def run_cpu_shard(config: JobConfig, spec: ShardSpec) -> ShardEntry:
    return execute_shard(spec, StageContext(config=config))


def init_ray(config: JobConfig) -> None:
    if ray.is_initialized():
        return
    # Ray 2.60 otherwise writes an auth token under the home folder.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        # "local", not None: None would join any cluster a `ray start` left on this machine.
        address=config.ray.address or "local",
        num_cpus=config.ray.num_cpus if config.ray.address is None else None,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level="WARNING",
    )


@dataclass
class WorkerPool:
    """Engine actors, started at the first LLM stage and kept until no later stage needs them."""

    config: JobConfig
    actors: list = field(default_factory=list)

    def get(self) -> list:
        if not self.actors:
            model = self.config.model
            env = backend_env(model) | {"OMP_NUM_THREADS": str(math.ceil(model.cpus_per_replica))}
            # Restarted on another node if theirs dies; their unfinished shards are retried.
            actor_class = ray.remote(ShardWorker).options(
                num_cpus=model.cpus_per_replica,
                num_gpus=model.tensor_parallel_size if model.use_gpu else 0,
                runtime_env={"env_vars": env},
                max_restarts=2,
                max_task_retries=2,
            )
            self.actors = [actor_class.remote(self.config) for _ in range(model.replicas)]
        return self.actors

    def release(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        leaves |= _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    return leaves


def _with_leaf(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    copy = dict(tree)
    copy[head] = _with_leaf(copy.get(head) or {}, rest, value) if rest else value
    return copy


def config_changes(saved_config: Path, config: JobConfig) -> list[str]:
    """The fields of the saved config whose value alone changes the fingerprint, `f: old -> new`.

    Each differing field is put back to its old value on its own; if that moves the
    fingerprint (or cannot be validated), the field is one the run folder cannot take.
    """
    try:
        old = _leaves(yaml.safe_load(saved_config.read_text()))
    except (OSError, yaml.YAMLError):
        return []
    new_tree = config.model_dump(mode="json")
    new = _leaves(new_tree)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        try:
            trial = JobConfig.model_validate(_with_leaf(new_tree, key, old.get(key)))
            matters = trial.fingerprint() != config.fingerprint()
        except ValidationError:
            matters = True
        if matters:
            changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes


def prepare_run_dir(config: JobConfig, force_new_config: bool) -> None:
    run_dir = config.run_dir
    make_dir(run_dir)
    fingerprint = config.fingerprint()
    marker = run_dir / "fingerprint"
    previous = marker.read_text().strip() if marker.exists() else fingerprint
    if previous != fingerprint and not force_new_config:
        changes = config_changes(run_dir / "config.yaml", config)
        what = ", ".join(changes) or f"fingerprint {previous}, this config {fingerprint}"
        raise RunConfigMismatch(
            f"{run_dir}: holds a run of a different config ({what}); use a new run_dir, or "
            "--force-new-config to keep its committed shards anyway"
        )
    atomic_write_bytes(marker, fingerprint.encode())
    atomic_write_bytes(run_dir / "config.yaml", dump_config(config).encode())


def open_manifest(config: JobConfig, stage: Stage) -> tuple[Manifest, list[str]]:
    stage_dir = config.run_dir / stage.name
    notes = []
    try:
        manifest = load_manifest(stage_dir)
    except CorruptManifest as exc:
        manifest = None
        notes.append(f"{exc}: the stage starts over")
    manifest = manifest or Manifest(
        stage=stage.name,
        schema=str(stage.record_type.arrow_schema()),
        config_fingerprint=config.fingerprint(),
        package_versions=package_versions(),
        prompt_hashes=template_hashes(config.domains, config.domains_dir),
    )
    notes += reconcile_with_disk(stage_dir, manifest) if stage_dir.exists() else []
    manifest.config_fingerprint = config.fingerprint()
    return manifest, notes


def upstream_digests(run_dir: Path) -> Callable[[str], str | None]:
    """`{stage}/{prefix}` -> digest of those committed shards now; each manifest read once."""
    manifests: dict[str, Manifest | None] = {}

    def digest(source: str) -> str | None:
        stage, prefix = source.split("/", 1)
        if stage not in manifests:
            manifests[stage] = load_manifest(run_dir / stage)
        manifest = manifests[stage]
        return None if manifest is None else inputs_digest(manifest, prefix)

    return digest


def stale_reason(
    entry: ShardEntry, spec: ShardSpec | None, digest: Callable[[str], str | None]
) -> str | None:
    """Why a committed shard no longer fits the plan and its inputs, or None if it does."""
    if spec is None:
        return "no longer planned, discarded"
    if (entry.start, entry.stop) != (spec.start, spec.stop):
        return f"planned range is now [{spec.start}, {spec.stop}), will be recomputed"
    for source, recorded in sorted(entry.inputs.items()):
        if digest(source) != recorded:
            return f"its input {source} changed, will be recomputed"
    return None


def drop_stale(
    config: JobConfig, stage: Stage, manifest: Manifest, specs: list[ShardSpec]
) -> list[str]:
    planned = {spec.name: spec for spec in specs}
    digest = upstream_digests(config.run_dir)
    notes = []
    for name, entry in list(manifest.shards.items()):
        reason = stale_reason(entry, planned.get(name), digest)
        if reason is not None:
            notes.append(f"{stage.name}/{entry.file}: {reason}")
            del manifest.shards[name]
            remove(config.run_dir / stage.name / entry.file)
    return notes


def shard_result(ref: ray.ObjectRef) -> ShardEntry:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, STOPPING_ERRORS):
            raise RunStopped(str(exc.cause)) from None
        raise


def run_stage(config: JobConfig, stage: Stage, pool: WorkerPool, progress: bool) -> StageSummary:
    started = time.perf_counter()
    stage_dir = config.run_dir / stage.name
    manifest, notes = open_manifest(config, stage)
    specs = stage.plan(config)
    notes += drop_stale(config, stage, manifest, specs)
    todo = [s for s in specs if s.name not in manifest.shards]
    if stage.needs_llm:
        actors = pool.get() if todo else []
        pending = [actors[i % len(actors)].run_shard.remote(s) for i, s in enumerate(todo)]
    else:
        pool.release()
        pending = [run_cpu_shard.remote(config, s) for s in todo]
    names = {ref: spec.name for ref, spec in zip(pending, todo, strict=True)}
    bar = tqdm(
        total=len(specs),
        initial=len(specs) - len(todo),
        desc=f"{stage.name:>9}",
        unit="shard",
        disable=not progress,
    )
    last_save = 0.0
    stopping = False
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            manifest.shards[names[done[0]]] = shard_result(done[0])
            bar.update(1)
            bar.set_postfix(rows=manifest.rows)
            if time.perf_counter() - last_save > MANIFEST_SAVE_INTERVAL_S:
                save_manifest(stage_dir, manifest)
                last_save = time.perf_counter()
        # A worker lost mid-write (its node died) leaves a temp file; its shard was retried.
        remove_temp_files(stage_dir)
    except BaseException:
        stopping = True
        for ref in pending:
            ray.cancel(ref)
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
        stage.name, manifest, len(specs), len(todo), time.perf_counter() - started, notes
    )


def run_job(
    config: JobConfig, *, progress: bool = True, force_new_config: bool = False
) -> RunSummary:
    """Run (or resume) every stage. Raises `RunConfigMismatch` before anything runs, and
    `RunStopped` when the model is down or the run folder cannot be written."""
    started = time.perf_counter()
    validate_job(config)
    try:
        prepare_run_dir(config, force_new_config)
        init_ray(config)
        pool = WorkerPool(config)
        stages = []
        try:
            for stage in STAGES:
                stages.append(run_stage(config, stage, pool, progress))
        finally:
            pool.release()
        summary = RunSummary(
            run_dir=str(config.run_dir),
            config_fingerprint=config.fingerprint(),
            wall_seconds=time.perf_counter() - started,
            stages=stages,
            consistency=summarize_judgments(config.run_dir, config.stages.judge),
        )
        write_summary(config.run_dir, summary)
    except OutputWriteError as exc:
        raise RunStopped(str(exc)) from None
    return summary
