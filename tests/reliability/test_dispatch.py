"""Dynamic dispatch (pipeline/dispatch.py): a free replica takes the next shard, so a straggler
delays only the shards it holds, and a lost replica's shard goes back to the queue instead of
waiting for that replica's restart.

The replicas are `GatedReplica` actors on the instant double that hold a shard until the
run has made given progress (shard files written), so nothing here waits on a clock.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray

from fspo_data.core.config import JobConfig
from fspo_data.core.shards import load_manifest
from fspo_data.pipeline.dispatch import SHARDS_IN_FLIGHT_PER_REPLICA
from fspo_data.pipeline.orchestrator import init_ray, run_stage
from fspo_data.pipeline.workers import EnginePools, ShardWorker, actor_options
from fspo_data.stages import STAGES_BY_NAME, plan_shards
from fspo_data.stages.base import ShardSpec
from tests.reliability.conftest import instant_config, local_ray  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow  # a local Ray and 3 engine actors: ~25 s each

PERSONAS = STAGES_BY_NAME["personas"]
REPLICAS = 3
PROGRESS_TIMEOUT_S = 60


def shard_files(config: JobConfig) -> int:
    folder = config.run_dir / PERSONAS.name
    return len(list(folder.glob("*.parquet"))) if folder.exists() else 0


def wait_for_shards(config: JobConfig, count: int) -> None:
    """Until `count` persona shard files are written; an error (failing its shard) if never."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while shard_files(config) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} persona shards never written")
        time.sleep(0.02)


def wait_for_mark(mark: Path) -> None:
    """Until `mark` exists; an error (failing its shard) if never."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while not mark.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{mark.name} never written")
        time.sleep(0.02)


class GatedReplica(ShardWorker):
    """Replica `index`; role 'slow' holds its first shard until every shard but the two it holds
    (`SHARDS_IN_FLIGHT_PER_REPLICA`) is written,
    'lost' never finishes its first (the test kills it) and, restarted, comes back only once
    every shard is written: a shard Ray retried on it would never finish;
    'returns' never finishes its first either but, restarted, runs shards at once, marking that
    it did; 'patient' holds each shard until the restarted replica has run one."""

    def __init__(self, config: JobConfig, index: int, role: str, marks: Path) -> None:
        super().__init__(config)
        self.index, self.role, self.held = index, role, False
        self.total = len(plan_shards(PERSONAS, config))
        self.started = marks / f"started-{index}"
        if role == "lost" and self.started.exists():
            try:
                wait_for_shards(config, self.total)
            except TimeoutError:
                (marks / "held-for-restart").touch()  # its shard waited for it
                raise

    def run_shard(self, spec: ShardSpec, peers: dict[str, list] | None = None) -> object:
        marks = self.started.parent
        if self.role == "returns" and self.started.exists():
            (marks / "ran-after-restart").touch()
        elif self.role == "returns":
            self.started.write_text(spec.name)
            wait_for_shards(self.ctx.config, self.total + 1)  # never: killed meanwhile
        if self.role == "patient":
            wait_for_mark(marks / "ran-after-restart")
        if self.role == "slow" and not self.held:
            self.held = True
            wait_for_shards(self.ctx.config, self.total - SHARDS_IN_FLIGHT_PER_REPLICA)
        if self.role == "lost" and not self.started.exists():
            self.started.write_text(spec.name)
            wait_for_shards(self.ctx.config, self.total + 1)  # never: killed meanwhile
        entry = super().run_shard(spec, peers)
        entry.counters["replica"] = self.index
        return entry


def start_replicas(config: JobConfig, roles: list[str], marks: Path) -> list:
    actor_class = ray.remote(GatedReplica).options(**actor_options(config.model))
    return [actor_class.remote(config, i, role, marks) for i, role in enumerate(roles)]


def shards_by_replica(config: JobConfig) -> dict[int, list[str]]:
    manifest = load_manifest(config.run_dir / PERSONAS.name)
    assert manifest is not None
    by_replica: dict[int, list[str]] = {}
    for name, entry in manifest.shards.items():
        by_replica.setdefault(entry.counters["replica"], []).append(name)
    return by_replica


def personas_config(run_dir: Path) -> JobConfig:
    """9 persona shards (3 domains x 3) on 3 replicas."""
    base = instant_config(run_dir)
    return instant_config(
        run_dir,
        model=base.model.model_dump() | {"replicas": REPLICAS},
        ray={"num_cpus": REPLICAS + 1},
    )


def run_killing_the_first_replica(marks: Path, roles: list[str]) -> tuple[JobConfig, EnginePools]:
    """The persona stage on replicas of `roles`, replica 0 killed (Ray restarts it,
    `max_restarts`) once it has started a shard; the stage run to its end."""
    config = personas_config(marks / "run")
    init_ray(config)
    actors = start_replicas(config, roles, marks)
    pool = EnginePools.given(config, actors)
    with ThreadPoolExecutor(max_workers=1) as job:
        future = job.submit(run_stage, config, PERSONAS, pool, False)
        wait_for_mark(marks / "started-0")
        ray.kill(actors[0], no_restart=False)
        future.result(timeout=2 * PROGRESS_TIMEOUT_S)
    return config, pool


def test_a_slow_replica_delays_only_its_own_shard(tmp_path, local_ray):  # noqa: F811
    config = personas_config(tmp_path / "run")
    init_ray(config)
    actors = start_replicas(config, ["slow", "fast", "fast"], tmp_path)
    run_stage(config, PERSONAS, EnginePools.given(config, actors), progress=False)

    by_replica = shards_by_replica(config)
    total = len(plan_shards(PERSONAS, config))
    # Round-robin would have dealt the slow replica 3 of the 9 and waited on them all.
    assert len(by_replica[0]) == SHARDS_IN_FLIGHT_PER_REPLICA
    assert len(by_replica[1]) + len(by_replica[2]) == total - SHARDS_IN_FLIGHT_PER_REPLICA
    assert sum(map(len, by_replica.values())) == total


def test_a_lost_replicas_shard_goes_back_to_the_queue(tmp_path, local_ray):  # noqa: F811
    config, pool = run_killing_the_first_replica(tmp_path, ["lost", "fast", "fast"])
    lost = (tmp_path / "started-0").read_text()
    by_replica = shards_by_replica(config)
    total = len(plan_shards(PERSONAS, config))
    assert sum(map(len, by_replica.values())) == total, "the run is not whole"
    # Recomputed by a replica that was up, not held for the lost one's restart.
    assert lost in by_replica[1] + by_replica[2]
    assert not (tmp_path / "held-for-restart").exists()
    pool.release()


def test_a_restarted_replica_takes_shards_again(tmp_path, local_ray):  # noqa: F811
    # The others hold their shards until the restarted replica has run one: without it back
    # (its first `ready` probe meets the process going down) they time out and the run fails.
    config, pool = run_killing_the_first_replica(tmp_path, ["returns", "patient", "patient"])
    by_replica = shards_by_replica(config)
    assert sum(map(len, by_replica.values())) == len(plan_shards(PERSONAS, config))
    assert by_replica.get(0), "the restarted replica took no shard"
    pool.release()
