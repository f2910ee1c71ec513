from fspo_data.core.chat import Completion
from fspo_data.core.config import JobConfig
from fspo_data.core.fspo_format import (
    format_completion,
    format_prompt,
    format_rat_completion,
    format_rat_prompt,
)
from fspo_data.core.records import Episode, RatEpisode, Shot
from fspo_data.stages import plan_shards, rationales
from fspo_data.stages.base import ShardSpec, StageContext
from tests.conftest import ScriptedBackend, tables


def _episode(uuid: str) -> Episode:
    shots = [Shot(judgment_uuid="j1", question="Q1?", chosen="good", rejected="bad")]
    return Episode(
        episode_uuid=uuid,
        persona_uuid="u",
        domain="roleplay",
        split="train",
        persona_description="d",
        traits=[],
        shots=shots,
        query_judgment_uuid="j2",
        query_question_uuid="q2",
        query_question="Final?",
        query_chosen="yes",
        query_rejected="no",
        confidence=1.0,
        prompt=format_prompt(shots, "Final?"),
        chosen=format_completion("yes"),
        rejected=format_completion("no"),
    )


def test_rationale_stage_writes_rat_prompt_and_targets(tmp_path):
    config = JobConfig(run_dir=tmp_path, stages={"rationales": {"enabled": True}})
    texts = iter(["The user likes   plain, good answers.", "short"])
    backend = ScriptedBackend(lambda r: Completion(text=next(texts)))
    spec = ShardSpec(stage="rationales", domain="roleplay", index=0, start=0, stop=1)
    inputs = tables(episodes=[_episode("e1"), _episode("e2")])
    output = rationales.run(spec, inputs, StageContext(config=config, backend=backend))
    (record,) = output.records
    assert isinstance(record, RatEpisode) and record.episode_uuid == "e1"
    assert output.counters["rationales_dropped_short"] == 1
    assert record.rationale == "The user likes plain, good answers."
    assert record.rat_prompt == format_rat_prompt(record.shots, "Final?")
    assert record.rat_chosen == format_rat_completion(record.rationale, "yes")
    assert record.rat_rejected == format_rat_completion(record.rationale, "no")
    assert "Preferred: good" in backend.requests[0].messages[-1].content


def test_rationale_stage_plans_nothing_unless_enabled(tmp_path):
    assert plan_shards(rationales.STAGE, JobConfig(run_dir=tmp_path)) == []
    enabled = JobConfig(run_dir=tmp_path, stages={"rationales": {"enabled": True}})
    assert plan_shards(rationales.STAGE, enabled)
