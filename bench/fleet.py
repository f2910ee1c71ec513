"""Scheduling efficiency of the engine fleet: N timed replicas, one slow, one lost mid-stage.

Each replica is a timed double of a GPU engine (`TimedReplicaDouble`, defined here and used
nowhere else): it answers like the instant benchmark double, after sleeping for the tokens
of the requests it gets at its prefill and decode tokens/s. Replica 0 is `--slow` times
slower; replica 1 is killed once a third of the judge shards are committed (Ray restarts it
after `--load-s`, the engine's reload). The LLM stages of a roleplay job (personas,
questions, responses, gold, judge with one refinement round) run through the real stage code and
the real shard reads and writes, twice on the same replicas' settings:

- `static`: the old dispatch, reconstructed here (`run_stage_static`): every shard dealt to
  `actors[i % n]` before any starts; a lost actor's shards retried by Ray on it once it has
  restarted (`max_task_retries`, as the old actors had).
- `dynamic`: the orchestrator's `run_stage` (pipeline/dispatch.py).

Scheduling efficiency = (engine busy seconds / replicas) / wall seconds, engine busy seconds
being the committed shards' `engine_ms` (work lost with a killed replica is not busy). Wall
runs from the first shard dispatched (replicas already loaded) to the last committed.
`barrier idle` is what the barrier between stages costs in the dynamic run: replica-seconds
from a replica's last shard of a stage to the next stage's start, over replicas, as a share
of wall; starting shards as soon as their inputs are committed could win at most that.

    python bench/fleet.py --replicas 8
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from fspo_data.backends.instant import InstantBenchmarkDouble
from fspo_data.core.chat import BackendStats, ChatRequest, Completion
from fspo_data.core.config import JobConfig
from fspo_data.core.shards import Manifest, ShardEntry, load_manifest, save_manifest
from fspo_data.pipeline.orchestrator import run_stage, shard_result
from fspo_data.pipeline.resume import open_manifest
from fspo_data.pipeline.tally import CallTally
from fspo_data.pipeline.workers import EnginePools, ShardWorker, actor_options
from fspo_data.stages import STAGES, plan_shards
from fspo_data.stages.base import StageContext

CHARS_PER_TOKEN = 4.0
LLM_STAGES = [stage for stage in STAGES if stage.needs_llm and stage.name != "rationales"]
SLOW, LOST = 0, 1  # replica indexes


@dataclass(frozen=True)
class ReplicaSpeed:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


class TimedReplicaDouble:
    """A GPU engine's timing without one: the instant double's answers, after a sleep of
    prompt tokens / prefill rate + generated tokens / decode rate."""

    def __init__(self, config: JobConfig, speed: ReplicaSpeed) -> None:
        self.inner = InstantBenchmarkDouble(config.model)
        self.model_name, self.speed = self.inner.model_name, speed
        self._stats = BackendStats()

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        started = time.perf_counter()
        completions = self.inner.complete(requests)
        for request, completion in zip(requests, completions, strict=True):
            chars = sum(len(m.content) for m in request.messages)
            completion.prompt_tokens = math.ceil(chars / CHARS_PER_TOKEN)
        prompt = sum(c.prompt_tokens for c in completions)
        generated = sum(c.completion_tokens for c in completions)
        time.sleep(
            prompt / self.speed.prefill_tokens_per_s + generated / self.speed.decode_tokens_per_s
        )
        self._stats.add(completions, time.perf_counter() - started)
        return completions

    def stats(self) -> BackendStats:
        return self._stats.model_copy()


class FleetReplica(ShardWorker):
    """`ShardWorker` on a timed double; stamps each shard with its replica and times."""

    def __init__(self, config: JobConfig, index: int, speed: ReplicaSpeed, load_s: float) -> None:
        time.sleep(load_s)  # the engine loading (again, after a restart)
        self.index = index
        self.tally = CallTally(TimedReplicaDouble(config, speed))
        self.ctx = StageContext(config=config, backend=self.tally)

    def run_shard(self, spec: Any, peers: dict[str, list] | None = None) -> ShardEntry:
        started = time.time()
        entry = super().run_shard(spec, peers)
        entry.counters |= {
            "fleet_replica": self.index,
            "fleet_start_ms": round(started * 1000),
            "fleet_stop_ms": round(time.time() * 1000),
        }
        return entry


def bench_config(
    run_dir: Path, replicas: int, users: int, users_per_shard: int, pairs_per_user: int
) -> JobConfig:
    """A roleplay job shaped like configs/million.yaml (pair_first, one refinement round),
    scaled down; gold pairs off (the double's judge would fail the gate)."""
    return JobConfig.model_validate(
        {
            "run_dir": run_dir,
            "seed": 0,
            "domains": ["roleplay"],
            "counts": {
                "users": users,
                "questions": 8 * replicas,
                "candidates_per_question": 4,
                "pairs_per_user": pairs_per_user,
                "shots": {"roleplay": 8},
            },
            "sharding": {"users_per_shard": users_per_shard, "questions_per_shard": 2},
            "model": {
                "backend": "instant-benchmark-double",
                "replicas": replicas,
                "cpus_per_replica": 1,
            },
            "stages": {"judge": {"layout": "pair_first", "refine_rounds": 1}},
            "ray": {"num_cpus": replicas + 2},
        }
    )


def run_stage_static(config: JobConfig, stage: Any, actors: list) -> None:
    """The dispatch before dynamic dispatch, for comparison: shard i to actors[i % n], all at
    once; results committed as they come."""
    manifest, _ = open_manifest(config, stage)
    todo = [s for s in plan_shards(stage, config) if s.name not in manifest.shards]
    pending = {actors[i % len(actors)].run_shard.remote(s): s for i, s in enumerate(todo)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        manifest.shards[pending.pop(done[0]).name] = shard_result(done[0])
    save_manifest(config.run_dir / stage.name, manifest)


def kill_when(config: JobConfig, actor: Any, stage: str, shards: int) -> threading.Thread:
    """Kill `actor` (Ray restarts it) once `shards` shard files of `stage` are written."""

    def watch() -> None:
        folder = config.run_dir / stage
        while len(list(folder.glob("*.parquet")) if folder.exists() else []) < shards:
            time.sleep(0.05)
        ray.kill(actor, no_restart=False)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def run_mode(mode: str, config: JobConfig, speeds: list[ReplicaSpeed], load_s: float) -> dict:
    options = actor_options(config.model)
    if mode == "static":
        options["max_task_retries"] = 2  # the old actors: Ray retried their shards on them
    actor_class = ray.remote(FleetReplica).options(**options)
    actors = [actor_class.remote(config, i, s, load_s) for i, s in enumerate(speeds)]
    ray.get([a.ready.remote() for a in actors])
    judge_shards = len(plan_shards(next(s for s in STAGES if s.name == "judge"), config))
    kill_when(config, actors[LOST], "judge", judge_shards // 3)
    started = time.time()
    stage_spans = []
    for stage in LLM_STAGES:
        stage_started = time.time()
        if mode == "static":
            run_stage_static(config, stage, actors)
        else:
            run_stage(config, stage, EnginePools.given(config, actors), progress=False)
        stage_spans.append((stage.name, stage_started, time.time()))
    wall = time.time() - started
    for actor in actors:
        ray.kill(actor)
    entries = [
        entry
        for stage in LLM_STAGES
        for entry in (
            load_manifest(config.run_dir / stage.name) or Manifest(stage="")
        ).shards.values()
    ]
    return summarize(mode, entries, stage_spans, wall, len(speeds))


def stage_figures(name: str, start: float, stop: float, entries: list[ShardEntry], n: int) -> dict:
    """One stage's shards, and its efficiency and held share over its own span, with the
    seconds each replica held a shard of it (a lost or idle replica shows)."""
    mine = [e for e in entries if start * 1000 <= e.counters["fleet_start_ms"] <= stop * 1000]
    held = [0.0] * n
    for e in mine:
        held[e.counters["fleet_replica"]] += (
            e.counters["fleet_stop_ms"] - e.counters["fleet_start_ms"]
        ) / 1000
    span = stop - start
    return {
        "stage": name,
        "span_s": span,
        "shards": len(mine),
        "efficiency": sum(e.counters.get("engine_ms", 0) for e in mine) / 1000 / n / span,
        "held": sum(held) / n / span,
        "held_s": held,
    }


def summarize(
    mode: str, entries: list[ShardEntry], spans: list[tuple[str, float, float]], wall: float, n: int
) -> dict:
    busy = sum(e.counters.get("engine_ms", 0) for e in entries) / 1000
    held = sum(e.counters["fleet_stop_ms"] - e.counters["fleet_start_ms"] for e in entries) / 1000
    shards = [0] * n
    for e in entries:
        shards[e.counters["fleet_replica"]] += 1
    # Barrier idle: each replica, from its last shard of a stage to the next stage's start.
    idle = 0.0
    for (_, start, stop), (_, next_start, _) in zip(spans, spans[1:], strict=False):
        for replica in range(n):
            ends = [
                e.counters["fleet_stop_ms"] / 1000
                for e in entries
                if e.counters["fleet_replica"] == replica
                and start * 1000 <= e.counters["fleet_start_ms"] <= stop * 1000
            ]
            idle += next_start - max(ends, default=start)
    # Between a replica's consecutive shards of a stage: the driver's round trip, restarts.
    gaps = []
    for replica in range(n):
        for _, start, stop in spans:
            times = sorted(
                (e.counters["fleet_start_ms"], e.counters["fleet_stop_ms"])
                for e in entries
                if e.counters["fleet_replica"] == replica
                and start * 1000 <= e.counters["fleet_start_ms"] <= stop * 1000
            )
            gaps += [b[0] - a[1] for a, b in zip(times, times[1:], strict=False)]
    return {
        "stages": [stage_figures(name, start, stop, entries, n) for name, start, stop in spans],
        "gap_ms": sorted(gaps)[len(gaps) // 2] if gaps else 0,
        "mode": mode,
        "wall_s": wall,
        "busy_s": busy,
        "efficiency": busy / n / wall,
        "held": held / n / wall,
        "barrier_idle": idle / n / wall,
        "shards": shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--users", type=int, default=480)
    parser.add_argument("--users-per-shard", type=int, default=10)
    parser.add_argument("--pairs-per-user", type=int, default=10)
    parser.add_argument("--prefill", type=float, default=5000.0, help="prompt tokens/s")
    parser.add_argument("--decode", type=float, default=1000.0, help="generated tokens/s")
    parser.add_argument("--speedup", type=float, default=1.0, help="time compression")
    parser.add_argument("--slow", type=float, default=3.0, help="replica 0's slowdown")
    parser.add_argument("--load-s", type=float, default=2.0, help="engine (re)load seconds")
    args = parser.parse_args()

    fast = ReplicaSpeed(args.prefill * args.speedup, args.decode * args.speedup)
    slow = ReplicaSpeed(fast.prefill_tokens_per_s / args.slow, fast.decode_tokens_per_s / args.slow)
    speeds = [slow if i == SLOW else fast for i in range(args.replicas)]
    root = Path(tempfile.mkdtemp(prefix="fspo-fleet-"))
    ray.init(num_cpus=args.replicas + 2, include_dashboard=False, log_to_driver=False)
    try:
        results = []
        for mode in ("static", "dynamic"):
            config = bench_config(
                root / mode, args.replicas, args.users, args.users_per_shard, args.pairs_per_user
            )
            results.append(run_mode(mode, config, speeds, args.load_s))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    shards = {s.name: len(plan_shards(s, config)) for s in LLM_STAGES}
    print(
        f"{args.replicas} replicas (replica {SLOW} {args.slow:g}x slower, replica {LOST} "
        f"killed after a third of the judge shards, {args.load_s:g} s reload); shards: "
        + ", ".join(f"{name} {n}" for name, n in shards.items())
    )
    print(
        f"{'dispatch':>8} {'wall s':>7} {'busy s':>7} {'efficiency':>10} {'held':>5} "
        f"{'barrier idle':>12} {'gap ms':>6}  shards per replica"
    )
    for r in results:
        print(
            f"{r['mode']:>8} {r['wall_s']:7.1f} {r['busy_s']:7.1f} {r['efficiency']:10.3f} "
            f"{r['held']:5.3f} {r['barrier_idle']:12.3f} {r['gap_ms']:6d}  {r['shards']}"
        )
    print(f"dynamic by stage:\n{'stage':>9} {'span s':>7} {'shards':>6} {'efficiency':>10} "
          f"{'held':>5}  seconds each replica held a shard")  # fmt: skip
    for st in results[-1]["stages"]:
        held_s = ", ".join(f"{s:.0f}" for s in st["held_s"])
        print(
            f"{st['stage']:>9} {st['span_s']:7.1f} {st['shards']:6d} {st['efficiency']:10.3f} "
            f"{st['held']:5.3f}  [{held_s}]"
        )


if __name__ == "__main__":
    main()
