"""SIGKILL a running job at seeded random points, resume it each time, and compare the result
with an uninterrupted run of the same config: same record ids in every stage, no duplicates,
every Parquet file readable, nothing temporary left."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from fspo_data.core.config import JobConfig, load_config
from fspo_data.stages import STAGES, plan_shards
from fspo_data.stages.base import Stage
from tests.conftest import TESTS_DIR
from tests.reliability.conftest import (
    assert_run_is_whole,
    instant_config,
    kill_at_random_points,
    run_cli,
    write_config,
)


def check_kill_and_resume(
    tmp_path: Path,
    config: JobConfig,
    kills: int,
    seed: int,
    max_delay_s: float,
    stages: Sequence[Stage] | None = None,
) -> None:
    config_path = write_config(tmp_path / "job.yaml", config)
    reference_dir = tmp_path / "reference"
    code, err = run_cli("run", str(config_path), "--quiet", "--run-dir", str(reference_dir))
    assert code == 0, err
    hits = kill_at_random_points(config, config_path, kills, seed, max_delay_s, stages=stages)
    code, err = run_cli("run", str(config_path), "--quiet")
    assert code == 0, err
    assert hits >= kills - 1, f"only {hits} of {kills} kills hit a running job"
    expected = assert_run_is_whole(reference_dir, config)
    found = assert_run_is_whole(config.run_dir, config)
    for stage, ids in expected.items():
        assert sorted(found[stage]) == sorted(ids), stage


@pytest.mark.slow
def test_instant_job_survives_five_kills(tmp_path):
    # 120 shards: enough that a kill a moment after the first new files finds work left.
    base = instant_config(tmp_path / "run")
    counts = base.counts.model_dump() | {"users": 30, "questions": 10}
    config = instant_config(tmp_path / "run", counts=counts)
    check_kill_and_resume(tmp_path, config, kills=5, seed=1, max_delay_s=0.5)


@pytest.mark.model
@pytest.mark.slow
def test_model_job_survives_three_kills(tmp_path):
    """The real local model (vLLM on CPU), on a job smaller than tiny.yaml: 12 shards.

    Three kills, each costing an engine start (~30 s on 2 cores), aimed at the model stages
    with more than one shard: a stage without the model, or with one shard, can finish
    between the first new file and the kill, and the kill then finds no job.
    """
    tiny = load_config(TESTS_DIR / "data" / "tiny.yaml").model_dump(mode="json")
    tiny["counts"] |= {"users": 4, "questions": 3, "pairs_per_user": 2}
    tiny["sharding"] = {"users_per_shard": 2, "questions_per_shard": 1}
    tiny["stages"]["judge"] = {"refine_rounds": 0}
    tiny["stages"]["responses"] = {"max_tokens": 16}
    config = JobConfig.model_validate(tiny | {"run_dir": str(tmp_path / "run")})
    stages = [s for s in STAGES if s.needs_llm and len(plan_shards(s, config)) > 1]
    check_kill_and_resume(tmp_path, config, kills=3, seed=2, max_delay_s=1.0, stages=stages)
