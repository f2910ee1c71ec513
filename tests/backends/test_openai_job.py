"""A whole job on the `openai` backend, against the fault-injecting server on 127.0.0.1.

The same job config as the model-free pipeline tests, switched to `backend: openai` and
nothing else: with 20% of calls failing, every record is still written and the retries
show in the run summary. In batch mode, a job killed between submit and collect resumes
without submitting a batch twice.
"""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest
import ray

from fspo_data import cli
from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.shards import load_manifest
from fspo_data.pipeline.orchestrator import run_job
from fspo_data.stages import STAGES
from tests.backends.fake_openai_server import FakeOpenAIServer, FaultScript
from tests.conftest import TESTS_DIR
from tests.reliability.conftest import (
    assert_run_is_whole,
    kill_session,
    openai_config,
    run_cli,
    start_job,
    write_config,
)

pytestmark = pytest.mark.slow
FAULTS = ("429", "500", "truncated", "empty")


def test_job_completes_with_every_record_despite_20_percent_faults(tmp_path, monkeypatch):
    monkeypatch.setenv("FSPO_TEST_KEY", "sk-test-not-a-real-key")
    base = load_config(TESTS_DIR / "data" / "instant.yaml")
    # review: templated users and questions, so the server's echo texts only fill candidates
    # and the judge reads its fixed logprobs.
    with FakeOpenAIServer(FaultScript(rate=0.2, kinds=FAULTS, seed=11)) as server:
        data = base.model_dump() | {"run_dir": tmp_path, "domains": ["review"]}
        data["counts"]["shots"] = {"review": 2}  # shots may name only the job's domains
        data["model"] |= {
            "backend": "openai",
            "openai": {
                "base_url": server.base_url,
                "model": server.model,
                "api_key_env": "FSPO_TEST_KEY",
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05,
                "max_retries": 10,
            },
        }
        config = JobConfig.model_validate(data)
        try:
            summary = run_job(config, progress=False)
        finally:
            ray.shutdown()
        faults = server.counters.total_faults
    stages = {s.stage: s for s in summary.stages}
    assert faults > 0
    assert sum(s.counters.get("retries", 0) for s in stages.values()) == faults
    assert all(s.counters.get(f"{s.stage}_failed", 0) == 0 for s in stages.values())
    questions = config.counts.questions
    assert stages["responses"].rows == questions * config.counts.candidates_per_question
    assert stages["judge"].rows == config.counts.users * config.counts.pairs_per_user
    for stage in stages.values():
        for path in (tmp_path / stage.stage).glob("*.parquet"):
            pq.read_table(path)


def test_batch_job_killed_between_submit_and_collect_resumes_without_paying_twice(tmp_path, capsys):
    """SIGKILL while the first batch runs (held in_progress by the server), then resume: the
    journal leads the resumed driver to that batch, so no batch file is submitted twice."""
    with FakeOpenAIServer() as server:
        config = openai_config(
            tmp_path / "run", server.base_url, request_mode="batch", batch_poll_interval_s=0.05
        )
        config_path = write_config(tmp_path / "job.yaml", config)
        server.hold_batches.set()
        job = start_job(["run", str(config_path), "--quiet"])
        try:
            # A status check after the submit: the batch id is journaled (written before polling).
            while not (server.counters.batch_creates and server.counters.batch_polls):
                assert job.poll() is None, job.communicate()[1]
                time.sleep(0.05)
        finally:
            kill_session(job)
        killed_during = list(server.counters.batch_creates)
        # The batch's wait is not silent: `status` shows its last progress line.
        assert cli.main(["status", str(config.run_dir)]) == 0
        waiting = [line for line in capsys.readouterr().out.splitlines() if "openai batch" in line]
        assert len(waiting) == 1 and "requests done" in waiting[0], waiting
        server.hold_batches.clear()
        code, err = run_cli("run", str(config_path), "--quiet")
        creates, synchronous = server.counters.batch_creates, server.counters.calls

    assert code == 0, err
    assert killed_during == creates[:1]
    assert len(creates) == len(set(creates)) > 1  # each batch file submitted once
    assert synchronous == 0
    assert_run_is_whole(config.run_dir, config)
    journals = list((config.run_dir / "batches").glob("*.json"))
    assert len(journals) == len(creates)
    # The resumed run found its first batch in the journal: every other one it submitted.
    counted = sum(
        entry.counters.get("batches", 0)
        for stage in STAGES
        for entry in load_manifest(config.run_dir / stage.name).shards.values()
    )
    assert counted == len(creates) - 1
