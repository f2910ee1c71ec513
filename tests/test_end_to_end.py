"""The whole pipeline through Ray and the real local model, on the tiny config."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import ray

from fspo_data.core.config import load_config
from fspo_data.core.fspo_format import format_prompt
from fspo_data.core.records import Episode, Judgment
from fspo_data.core.shards import load_manifest
from fspo_data.domains import load_domain
from fspo_data.pipeline.orchestrator import run_job
from fspo_data.stages import STAGES, STAGES_BY_NAME, plan_shards
from fspo_data.stages.base import records_from_table
from tests.conftest import TESTS_DIR

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = load_config(TESTS_DIR / "data" / "tiny.yaml")
    config = config.model_copy(update={"run_dir": tmp_path_factory.mktemp("tiny")})
    try:
        summary = run_job(config, progress=False)
        yield config, summary
    finally:
        ray.shutdown()


def _table(run_dir, stage):
    """The stage's committed rows; an empty table of its schema when it planned no shard
    (the rationale stage is off in the tiny config)."""
    manifest = load_manifest(run_dir / stage)
    files = [run_dir / stage / e.file for e in manifest.shards.values()]
    if not files:
        return STAGES_BY_NAME[stage].record_type.arrow_schema().empty_table(), manifest
    return pq.read_table(files), manifest


def test_every_stage_commits_its_planned_shards_with_matching_row_counts(tiny_run):
    config, summary = tiny_run
    for stage in STAGES:
        manifest = load_manifest(config.run_dir / stage.name)
        assert len(manifest.shards) == len(plan_shards(stage, config)), stage.name
        for entry in manifest.shards.values():
            assert pq.read_metadata(config.run_dir / stage.name / entry.file).num_rows == entry.rows
        table, _ = _table(config.run_dir, stage.name)
        ids = table.column(stage.record_type.id_field).to_pylist()
        assert len(ids) == len(set(ids)), f"duplicate ids in {stage.name}"
        assert table.schema.equals(stage.record_type.arrow_schema())
    assert summary.consistency["overall"].pairs_judged > 0
    assert (config.run_dir / "summary.json").exists() and (config.run_dir / "config.yaml").exists()


def test_episodes_come_from_one_user_and_match_the_prompt_format(tiny_run):
    config, _ = tiny_run
    judgments = {
        j.judgment_uuid: j for j in records_from_table(_table(config.run_dir, "judge")[0], Judgment)
    }
    episodes = records_from_table(_table(config.run_dir, "episodes")[0], Episode)
    assert episodes, "the tiny run should produce at least one episode"
    for e in episodes:
        pairs = [judgments[s.judgment_uuid] for s in e.shots] + [judgments[e.query_judgment_uuid]]
        assert {j.persona_uuid for j in pairs} == {e.persona_uuid}
        assert all(j.kept for j in pairs)
        assert e.chosen != e.rejected and e.query_chosen != e.query_rejected
        assert e.prompt == format_prompt(e.shots, e.query_question)
        assert len(e.shots) == load_domain(e.domain).shots(config.counts)


def test_rerun_resumes_without_recomputing_or_duplicating(tiny_run):
    config, _ = tiny_run
    before = {
        s.name: _table(config.run_dir, s.name)[0].column(s.record_type.id_field).to_pylist()
        for s in STAGES
    }
    summary = run_job(config, progress=False)
    assert all(s.shards_run_now == 0 for s in summary.stages)
    after = {
        s.name: _table(config.run_dir, s.name)[0].column(s.record_type.id_field).to_pylist()
        for s in STAGES
    }
    assert before == after
