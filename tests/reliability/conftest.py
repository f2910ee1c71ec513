"""Helpers for the reliability tests: jobs as subprocesses, run-folder checks, configs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.config_files import dump_config
from fspo_data.core.shards import file_sha256, load_manifest
from fspo_data.stages import STAGES, plan_shards
from fspo_data.stages.base import Stage
from tests.conftest import TESTS_DIR

FSPO_DATA = Path(sys.executable).parent / "fspo-data"


def instant_config(run_dir: Path, **updates: object) -> JobConfig:
    """tests/data/instant.yaml in `run_dir`, with top-level sections replaced by `updates`."""
    base = load_config(TESTS_DIR / "data" / "instant.yaml").model_dump(mode="json")
    return JobConfig.model_validate(base | {"run_dir": str(run_dir)} | updates)


def write_config(path: Path, config: JobConfig) -> Path:
    path.write_text(dump_config(config))
    return path


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for a module's in-process jobs (run_job starts it on first use)."""
    yield
    ray.shutdown()


def stage_ids(run_dir: Path) -> dict[str, list[str]]:
    """Every stage's record ids, read from the committed shards the manifests list."""
    ids = {}
    for stage in STAGES:
        manifest = load_manifest(run_dir / stage.name)
        files = [] if manifest is None else [e.file for e in manifest.shards.values()]
        ids[stage.name] = [
            record_id
            for file in sorted(files)
            for record_id in pq.read_table(run_dir / stage.name / file)
            .column(stage.record_type.id_field)
            .to_pylist()
        ]
    return ids


def openai_config(run_dir: Path, base_url: str, **settings: object) -> JobConfig:
    """instant.yaml on the `openai` backend at `base_url`, review domain only (templated users
    and questions: the endpoint writes candidates and judges), one replica so shards call the
    endpoint one after another, and a retry budget and an outage wait of a fraction of a
    second."""
    base = instant_config(run_dir).model_dump(mode="json")
    openai = {
        "base_url": base_url,
        "model": "fake-model",
        "api_key_env": "FSPO_TEST_NO_KEY",  # unset: the placeholder key is sent
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "max_retries": 2,
        "outage_wait_s": 0.2,
    }
    model = base["model"] | {"backend": "openai", "replicas": 1, "openai": openai | settings}
    counts = base["counts"] | {"shots": {"review": 2}}  # shots may name only the job's domains
    return instant_config(run_dir, domains=["review"], counts=counts, model=model)


def committed_shards(run_dir: Path) -> dict[str, set[str]]:
    """What a run, finished or stopped, must leave: every shard a manifest lists is on disk and
    whole (bytes, hash, rows), and every Parquet file reads. Returns committed names per stage.

    A stopped run may also hold whole shard files committed after its last manifest save;
    resume discards them (they are not listed), so they are only checked to read.
    """
    committed = {}
    for stage in STAGES:
        stage_dir = run_dir / stage.name
        manifest = load_manifest(stage_dir)
        for entry in manifest.shards.values() if manifest else []:
            path = stage_dir / entry.file
            assert path.stat().st_size == entry.bytes, path
            assert file_sha256(path) == entry.sha256, path
            assert pq.read_table(path).num_rows == entry.rows, path
        for path in stage_dir.glob("*.parquet") if stage_dir.exists() else []:
            pq.read_table(path)
        committed[stage.name] = set(manifest.shards) if manifest else set()
    return committed


def assert_run_is_whole(run_dir: Path, config: JobConfig) -> dict[str, list[str]]:
    """Every planned shard committed and matching its file, every Parquet file readable,
    nothing uncommitted or temporary left, no duplicate id; returns the ids per stage."""
    committed = committed_shards(run_dir)
    for stage in STAGES:
        stage_dir = run_dir / stage.name
        planned = {spec.name for spec in plan_shards(stage, config)}
        assert committed[stage.name] == planned, stage.name
        on_disk = {p.name for p in stage_dir.glob("*.parquet")} if stage_dir.exists() else set()
        assert on_disk == {f"{name}.parquet" for name in committed[stage.name]}, stage.name
    leftovers = [p for p in run_dir.rglob(".*.tmp-*")]
    assert not leftovers, leftovers
    ids = stage_ids(run_dir)
    for stage, stage_ids_ in ids.items():
        assert len(stage_ids_) == len(set(stage_ids_)), f"duplicate ids in {stage}"
    return ids


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    """`fspo-data ARGS` in a subprocess; its exit code and stderr."""
    job = start_job(list(args), env)
    try:
        _, err = job.communicate(timeout=timeout)
    finally:
        kill_session(job)
    return job.returncode, err


def start_job(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`fspo-data ARGS` in its own session, so the job and its Ray processes can be killed."""
    return subprocess.Popen(
        [str(FSPO_DATA), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"RAY_AUTH_MODE": "disabled"} | (env or {}),
        start_new_session=True,
    )


def session_pids(session: int) -> list[int]:
    """Live (not zombie) processes of a session, from /proc/PID/stat."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        state, sid = fields[0], int(fields[3])
        if sid == session and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def kill_session(job: subprocess.Popen[str]) -> None:
    """SIGKILL the job's driver and then every process of its session (raylet, GCS, workers).

    Ray's agents outlive a killed driver; killing the session by pid reaps what this test
    started and nothing else.
    """
    if job.poll() is None:
        job.kill()
    for pid in session_pids(job.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    job.wait()
    deadline = time.monotonic() + 10
    while session_pids(job.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def new_shard_files(folder: Path, since: float) -> int:
    """Shard files under `folder` written (renamed into place) after `since`."""
    count = 0
    for path in folder.glob("**/*.parquet"):
        try:
            count += path.stat().st_mtime >= since
        except FileNotFoundError:
            continue  # discarded by the job meanwhile
    return count


def stage_done(config: JobConfig, stage: Stage) -> bool:
    manifest = load_manifest(config.run_dir / stage.name)
    return manifest is not None and len(manifest.shards) == len(plan_shards(stage, config))


def kill_at_random_points(
    config: JobConfig,
    config_path: Path,
    kills: int,
    seed: int,
    max_delay_s: float,
    attempt_timeout_s: float = 300,
    stages: Sequence[Stage] | None = None,
) -> int:
    """Start the job and SIGKILL it, `kills` times, then leave it killed.

    Kill points are spread over `stages` (default: every stage with work): attempt i waits
    for its first new shard file in a seeded stage (stages sorted, so later attempts reach
    later stages; any stage once that one is done), so the engine is up and working, then a
    seeded delay lands the kill anywhere in a shard's computation, write or commit. Returns
    how many kills hit a live job: a kill aimed at a stage whose remaining work takes less
    than the delay finds the job finished.
    """
    rng = random.Random(seed)
    stages = [stage for stage in stages or STAGES if plan_shards(stage, config)]
    targets = sorted(rng.choices(range(len(stages)), k=kills))
    hits = 0
    for index in targets:
        delay = rng.uniform(0.0, max_delay_s)
        stage = stages[index]
        watched = config.run_dir if stage_done(config, stage) else config.run_dir / stage.name
        started = time.time()
        job = start_job(["run", str(config_path), "--quiet"])
        try:
            while job.poll() is None and not new_shard_files(watched, started):
                assert time.time() - started < attempt_timeout_s, "the job made no progress"
                time.sleep(0.05)
            time.sleep(delay)
            hits += job.poll() is None
        finally:
            kill_session(job)
    return hits
