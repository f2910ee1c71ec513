"""Texts cut at max_tokens are asked once more with a larger budget, or dropped and counted:
no stage writes a cut text as if whole."""

from dataclasses import replace

from fspo_data.core.chat import ChatRequest, Completion
from fspo_data.core.config import JobConfig
from fspo_data.stages import personas, questions, responses
from fspo_data.stages.base import ShardSpec, StageContext
from tests.conftest import ScriptedBackend, echo_text, tables
from tests.stages.test_generation_stages import QUESTION


def cut_unless(enough_tokens: int):
    """A model whose every text needs `enough_tokens`: cut ('length') under that budget."""

    def script(request: ChatRequest) -> Completion:
        whole = echo_text(request)
        if request.max_tokens >= enough_tokens:
            return replace(whole, finish_reason="stop")
        return replace(whole, text=whole.text[:9], finish_reason="length")

    return script


def responses_run(config: JobConfig, script) -> tuple[object, ScriptedBackend]:
    backend = ScriptedBackend(script)
    spec = ShardSpec(stage="responses", domain="roleplay", index=0, start=0, stop=1)
    output = responses.run(spec, tables(questions=[QUESTION]), StageContext(config, backend))
    return output, backend


def test_a_cut_candidate_is_regenerated_once_with_twice_the_budget(tmp_path):
    config = JobConfig(run_dir=tmp_path, counts={"candidates_per_question": 2})
    budget = config.stages.responses.max_tokens
    output, backend = responses_run(config, cut_unless(2 * budget))
    assert len(output.records) == 2
    assert all(len(r.response) > 9 for r in output.records)  # the whole texts
    retried = [r for r in backend.requests if r.max_tokens == 2 * budget]
    firsts = [r for r in backend.requests if r.max_tokens == budget]
    assert sorted(r.seed for r in retried) == sorted(r.seed for r in firsts)
    assert output.counters["responses_regenerated_truncated"] == 2
    # The view listing (64 tokens) was cut too and its retry at 128 came back whole.
    assert output.counters["views_regenerated_truncated"] == 1
    assert output.counters["views_fallback"] == 0
    assert output.counters["responses_dropped_truncated"] == 0


def test_a_candidate_cut_twice_is_dropped_and_counted(tmp_path):
    config = JobConfig(run_dir=tmp_path, counts={"candidates_per_question": 2})
    output, backend = responses_run(config, cut_unless(10**6))
    assert output.records == []
    assert output.counters["responses_regenerated_truncated"] == 2
    assert output.counters["responses_dropped_truncated"] == 2
    assert output.counters["responses_dropped_empty"] == 0
    # A view listing cut twice is not read: the fallback views stand in for it.
    assert output.counters["views_dropped_truncated"] == 1
    assert output.counters["views_fallback"] == 2


def test_the_larger_budget_is_capped_by_the_context_length(tmp_path):
    config = JobConfig(
        run_dir=tmp_path,
        counts={"candidates_per_question": 2},
        model={"max_model_len": 100},
        stages={"truncation": {"retry_factor": 3.0}},
    )

    def script(request: ChatRequest) -> Completion:
        return replace(cut_unless(10**6)(request), prompt_tokens=20)

    _, backend = responses_run(config, script)
    # 64 tokens x 3 = 192 > 100 - 20 prompt tokens: the retry asks for 80.
    assert sorted({r.max_tokens for r in backend.requests}) == [64, 80]
    no_room = config.model_copy(
        update={"model": config.model.model_copy(update={"max_model_len": 84})}
    )
    output, backend = responses_run(no_room, script)
    assert {r.max_tokens for r in backend.requests} == {64}  # 84 - 20 leaves no larger budget
    assert output.counters["responses_dropped_truncated"] == 2
    assert output.counters.get("responses_regenerated_truncated") == 0  # present, at 0


def test_cut_questions_and_descriptions_are_never_written(tmp_path):
    config = JobConfig(run_dir=tmp_path, counts={"users": 2, "questions": 2})
    context = StageContext(config, ScriptedBackend(cut_unless(10**6)))
    spec = ShardSpec(stage="questions", domain="roleplay", index=0, start=0, stop=2)
    output = questions.run(spec, {}, context)
    assert output.records == []
    attempts = config.stages.persona_checks.max_attempts
    assert output.counters["questions_dropped_truncated"] == 2 * attempts
    assert output.counters["questions_regenerated_truncated"] == 2 * attempts
    spec = ShardSpec(stage="personas", domain="roleplay", index=0, start=0, stop=2)
    output = personas.run(spec, {}, context)
    assert output.records == []
    assert output.counters["personas_dropped_truncated"] == 2 * attempts
    assert output.counters["personas_dropped_after_attempts"] == 2


def test_a_description_whole_on_its_second_budget_is_kept(tmp_path):
    config = JobConfig(run_dir=tmp_path, counts={"users": 2})
    budget = config.stages.personas.max_tokens
    context = StageContext(config, ScriptedBackend(cut_unless(2 * budget)))
    spec = ShardSpec(stage="personas", domain="roleplay", index=0, start=0, stop=2)
    output = personas.run(spec, {}, context)
    assert len(output.records) == 2
    assert output.counters["personas_regenerated_truncated"] == 2
    assert output.counters.get("personas_dropped_truncated") == 0  # present, at 0
