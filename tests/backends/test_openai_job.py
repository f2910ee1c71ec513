"""A whole job on the `openai` backend, against the fault-injecting server on 127.0.0.1.

The same job config as the model-free pipeline tests, switched to `backend: openai` and
nothing else: with 20% of calls failing, every record is still written and the retries
show in the run summary.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import ray

from fspo_data.core.config import JobConfig, load_config
from fspo_data.pipeline.orchestrator import run_job
from tests.backends.fake_openai_server import FakeOpenAIServer, FaultScript
from tests.conftest import TESTS_DIR

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
