"""Node loss on a local multi-node Ray cluster: a worker node SIGKILLed mid-stage (its raylet,
its engine actor, its task workers) costs time, not records. The engine actor restarts on a
replacement node, the shards queued on it are retried, and the finished run equals an
uninterrupted run of the same config on the same cluster."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray
from ray._private.node import Node
from ray.cluster_utils import Cluster

from fspo_data.core.config import JobConfig
from fspo_data.pipeline.orchestrator import init_ray, run_job
from fspo_data.stages import STAGES_BY_NAME, plan_shards
from tests.reliability.conftest import assert_run_is_whole, instant_config

pytestmark = pytest.mark.slow

# Ray notices a dead raylet only through the GCS health check (5 x 3 s by default): shortened
# so the lost node is declared dead, and its actor restarted, within a second or two.
FAST_NODE_FAILURE = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 200,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}
JOB_TIMEOUT_S = 120


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A head with no CPUs (it runs only the driver and the GCS) and two 1-CPU worker nodes,
    so each engine replica has a node of its own and a lost node leaves no spare CPU.

    `Cluster` writes its address where a bare `ray.init()` looks for one: under a Ray temp
    folder of its own, other Ray users on this machine do not join it by mistake. The
    folder is short because Ray's socket paths under it must fit in 107 characters.
    """
    ray.shutdown()  # another module's local Ray would shadow the cluster
    temp = Path(tempfile.mkdtemp(prefix="fspo-ray-"))
    monkeypatch.setenv("RAY_TMPDIR", str(temp))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": FAST_NODE_FAILURE},
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def cluster_config(run_dir: Path, address: str) -> JobConfig:
    """Two engine replicas (one per worker node); 12 judge shards, 6 queued on each."""
    base = instant_config(run_dir)
    return instant_config(
        run_dir,
        counts=base.counts.model_dump() | {"users": 12, "questions": 6},
        model=base.model.model_dump() | {"replicas": 2},
        ray={"address": address},
    )


def shard_files(config: JobConfig, stage: str) -> int:
    folder = config.run_dir / stage
    return len(list(folder.glob("*.parquet"))) if folder.exists() else 0


def engine_actor_restarts() -> int:
    """Restarts of the cluster's engine actors, from the GCS actor table (dead ones included).

    `ray.util.state` would need the dashboard, which these nodes do not start.
    """
    actors = ray._private.state.actors()
    return sum(a["NumRestarts"] for a in actors.values() if a["ActorClassName"] == "ShardWorker")


def lose_node(cluster: Cluster, node: Node) -> None:
    """SIGKILL a node's engine actors, then its raylet and daemons, as when a machine is lost.

    `remove_node` alone leaves the node's worker processes running until they notice their
    raylet is gone (up to a second): long enough for an actor on the instant double to
    finish its queue, and then nothing was lost mid-stage.
    """
    for actor in ray._private.state.actors().values():
        on_node = actor["Address"]["NodeID"] == node.node_id
        if actor["ActorClassName"] == "ShardWorker" and actor["State"] == "ALIVE" and on_node:
            os.kill(actor["Pid"], signal.SIGKILL)
    cluster.remove_node(node, allow_graceful=False)


def test_losing_a_worker_node_mid_stage_loses_and_duplicates_nothing(tmp_path, cluster):
    reference = cluster_config(tmp_path / "reference", cluster.address)
    init_ray(reference)
    run_job(reference, progress=False)
    expected = assert_run_is_whole(reference.run_dir, reference)
    assert engine_actor_restarts() == 0

    config = cluster_config(tmp_path / "run", cluster.address)
    judge_shards = len(plan_shards(STAGES_BY_NAME["judge"], config))
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        job = pool.submit(run_job, config, progress=False)
        started = time.monotonic()
        while not shard_files(config, "judge") and not job.done():
            assert time.monotonic() - started < JOB_TIMEOUT_S, "the judge stage never started"
            time.sleep(0.02)
        lose_node(cluster, next(iter(cluster.worker_nodes)))
        judged_at_kill = shard_files(config, "judge")
        # What a worker killed between writing and renaming leaves; the kill above lands
        # there only by chance, so one is planted: the finished run must not keep it.
        (config.run_dir / "judge" / ".roleplay-00000.parquet.tmp-999999").write_bytes(b"PAR1")
        cluster.add_node(num_cpus=1)
        job.result(timeout=JOB_TIMEOUT_S)
    finally:
        pool.shutdown(wait=False)  # a hung job must fail the test, not hang it

    assert 0 < judged_at_kill < judge_shards, "the node was not lost mid-stage"
    assert engine_actor_restarts() >= 1
    found = assert_run_is_whole(config.run_dir, config)
    for stage, ids in expected.items():
        assert sorted(found[stage]) == sorted(ids), stage
