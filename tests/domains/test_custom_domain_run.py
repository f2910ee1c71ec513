"""A domain that is only files in a temporary folder runs end to end, on the instant double."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import ray

from fspo_data.backends.instant import InstantBenchmarkDouble
from fspo_data.core.config import JobConfig
from fspo_data.core.records import Episode, Question, Response
from fspo_data.core.shards import load_manifest, read_committed
from fspo_data.domains import load_domain
from fspo_data.pipeline.orchestrator import run_job
from fspo_data.prompts import file_hash
from fspo_data.stages.base import records_from_table
from fspo_data.stages.responses import response_request
from tests.domains.test_domains import EXAMPLE
from tests.reliability.conftest import instant_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def poetry_run(tmp_path_factory: pytest.TempPathFactory) -> JobConfig:
    domains_dir = tmp_path_factory.mktemp("domains")
    shutil.copytree(EXAMPLE, domains_dir / "poetry")
    config = instant_config(
        tmp_path_factory.mktemp("run"),
        domains=["poetry"],
        domains_dir=str(domains_dir),
        counts={"users": 6, "questions": 5, "candidates_per_question": 3, "pairs_per_user": 8},
    )
    try:
        run_job(config, progress=False)
        yield config
    finally:
        ray.shutdown()


def test_the_custom_domain_makes_episodes_with_its_default_shots(poetry_run: JobConfig) -> None:
    episodes = records_from_table(read_committed(poetry_run.run_dir, "episodes")[0], Episode)
    assert episodes and {e.domain for e in episodes} == {"poetry"}
    assert {len(e.shots) for e in episodes} == {2}  # default_shots of its domain.yaml
    questions = records_from_table(read_committed(poetry_run.run_dir, "questions")[0], Question)
    topics = {"the sea", "autumn leaves", "a city at night", "an old dog", "the first snow"}
    assert {q.trait_varied for q in questions} == topics


def test_candidates_came_from_the_domains_own_template(poetry_run: JobConfig) -> None:
    """The double's answer is a hash of the messages it was sent: a stored candidate equals
    its answer to the request rendered from the domain's response_poetry.txt."""
    domain = load_domain("poetry", poetry_run.domains_dir)
    questions = {
        q.question_uuid: q
        for q in records_from_table(read_committed(poetry_run.run_dir, "questions")[0], Question)
    }
    responses = records_from_table(read_committed(poetry_run.run_dir, "responses")[0], Response)
    assert {r.view for r in responses} == {"rhyming", "free verse", "haiku"}
    double = InstantBenchmarkDouble(poetry_run.model)
    for response in responses:
        request = response_request(
            domain, questions[response.question_uuid], response.view, poetry_run.stages.responses
        )
        assert request.messages[0].content.startswith("You are a poet who writes only")
        assert double.complete([request])[0].text.strip() == response.response


def test_the_manifests_record_the_domains_templates(poetry_run: JobConfig) -> None:
    """Each stage's manifest lists the templates that stage rendered, the domain's own ones
    as `domain/name`."""
    own = Path(poetry_run.domains_dir) / "poetry" / "prompts"
    responses = load_manifest(poetry_run.run_dir / "responses").prompt_hashes
    assert responses == {"poetry/response_poetry": file_hash(own / "response_poetry.txt")}
    questions = load_manifest(poetry_run.run_dir / "questions").prompt_hashes
    assert questions == {"poetry/question_poetry": file_hash(own / "question_poetry.txt")}
    # The judge declares both layouts' templates (stages.judge.layout picks one).
    judge_prompts = load_manifest(poetry_run.run_dir / "judge").prompt_hashes
    assert set(judge_prompts) == {"judge", "judge_pair_first"}
