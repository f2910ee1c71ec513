"""No record is lost to an outage that starts mid-shard: calls that fail for want of the
endpoint are asked again once it is back, or their shard stays uncommitted and the run stops
to be resumed; either way the finished run holds exactly the records of an uninterrupted one.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fspo_data import cli
from fspo_data.core.config import JobConfig
from fspo_data.core.shards import load_manifest
from fspo_data.stages import STAGES, STAGES_BY_NAME, plan_shards
from tests.backends.fake_openai_server import FakeOpenAIServer, Fault
from tests.reliability.conftest import (
    assert_run_is_whole,
    committed_shards,
    openai_config,
    run_cli,
    write_config,
)
from tests.reliability.test_faults import calls_before, shard_requests

# An outage as real ones look: a restarting engine answers 503, a dying one drops the line.
OUTAGE_FAULTS: tuple[Fault, ...] = ("503", "drop")


class OutageServer(FakeOpenAIServer):
    """The fake endpoint, down for calls number `down_from` to `up_from` (excluded; None:
    until the test says so). Counting calls, not watching the clock, lands the outage at a
    chosen point inside a shard whatever the machine's speed."""

    down_from: int | None = None
    up_from: int | None = None

    def _pick_fault(self, index: int) -> Fault | None:
        down = self.down_from is not None and index >= self.down_from
        if down and (self.up_from is None or index < self.up_from):
            return OUTAGE_FAULTS[index % len(OUTAGE_FAULTS)]
        return super()._pick_fault(index)


@dataclass
class Reference:
    server: OutageServer
    config: JobConfig  # openai_config at the server, run_dir to be replaced per test
    run_dir: Path
    ids: dict[str, list[str]]


_runs = itertools.count()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, local_ray: None) -> Iterator[Reference]:
    """One uninterrupted run on the scripted endpoint: the ids every test must end with."""
    folder = tmp_path_factory.mktemp("outage")
    with OutageServer() as server:
        config = openai_config(folder / "reference", server.base_url)
        config_path = write_config(folder / "job.yaml", config)
        assert cli.main(["run", str(config_path), "--quiet"]) == 0
        assert server.counters.total_faults == 0
        yield Reference(server, config, config.run_dir, assert_run_is_whole(config.run_dir, config))


def job(reference: Reference, tmp_path: Path) -> tuple[JobConfig, Path]:
    config = reference.config.model_copy(update={"run_dir": tmp_path / f"run{next(_runs)}"})
    return config, write_config(tmp_path / "job.yaml", config)


def mid_judge_shard(reference: Reference) -> tuple[str, int]:
    """The second judge shard, and the number of the call halfway through it in a new run."""
    shard = plan_shards(STAGES_BY_NAME["judge"], reference.config)[1].name
    halfway = shard_requests(reference.run_dir, "judge")[shard] // 2
    start = calls_before(reference.run_dir, "judge", shard) + halfway
    return shard, reference.server.counters.calls + start


def assert_same_records(run_dir: Path, reference: Reference) -> None:
    found = assert_run_is_whole(run_dir, reference.config.model_copy(update={"run_dir": run_dir}))
    for stage in STAGES:
        assert sorted(found[stage.name]) == sorted(reference.ids[stage.name]), stage.name


@pytest.mark.slow
def test_an_outage_that_ends_mid_shard_is_waited_out_and_loses_nothing(reference, tmp_path):
    config, config_path = job(reference, tmp_path)
    shard, start = mid_judge_shard(reference)
    server = reference.server
    faults_before = server.counters.total_faults
    # 120 calls down: more than the whole retry budget (3 calls each) of every request in
    # flight (16 at most), so some fail for good unless waited for; and over before the
    # rounds of the outage wait are.
    server.down_from, server.up_from = start, start + 120
    try:
        assert cli.main(["run", str(config_path), "--quiet"]) == 0
    finally:
        server.down_from = server.up_from = None
    assert server.counters.total_faults - faults_before == 120
    assert_same_records(config.run_dir, reference)
    counters = load_manifest(config.run_dir / "judge").shards[shard].counters
    assert counters["outage_retried"] > 0  # some calls outlived their retries...
    assert counters.get("judge_failed", 0) == 0  # ...and none was dropped


@pytest.mark.slow
def test_an_outage_past_the_wait_stops_the_run_with_the_shard_uncommitted(reference, tmp_path):
    config, config_path = job(reference, tmp_path)
    shard, start = mid_judge_shard(reference)
    server = reference.server
    server.down_from = start  # down until the test brings it back
    try:
        code, err = run_cli("run", str(config_path), "--quiet")
    finally:
        server.down_from = None
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"judge/{shard} is not committed" in err, err
    resume = re.search(r"run `(fspo-data run [^`]+)` to resume", err)
    assert resume, err
    judge = committed_shards(config.run_dir)["judge"]
    assert shard not in judge and len(judge) == 1  # the first; the half-answered one is not

    assert cli.main(shlex.split(resume.group(1))[1:]) == 0  # the endpoint is back
    assert_same_records(config.run_dir, reference)
