"""The gold stage: which pairs are gold under each domain's rule, and what a judge that knows
every answer and one that only ever picks slot A score (no Ray, no disk)."""

from __future__ import annotations

import numpy as np
import pytest

from fspo_data.core.chat import ChatRequest, Completion
from fspo_data.core.config import JobConfig, JudgeConfig, StagesConfig
from fspo_data.core.records import Persona, Question, Response, Trait
from fspo_data.domains import load_domain
from fspo_data.pipeline.gold import figures_of
from fspo_data.stages import gold
from fspo_data.stages.base import ShardSpec, StageContext
from fspo_data.stages.pairs import shard_inputs
from tests.conftest import ScriptedBackend, tables

VIEWS = {
    "review": ["positive and concise", "negative and concise", "negative and verbose"],
    "elix": ["an elementary school student", "a high school student", "an expert in the field"],
    "roleplay": ["a chef", "a farmer", "a poet"],
}
USER_TRAITS = {
    "review": ("review_preference", ["positive", "negative and verbose", "concise", "verbose"]),
    "elix": (
        "education_level",
        ["an elementary school student", "an expert in the field", "a college student"],
    ),
    "roleplay": ("interest", ["cooking", "poetry", "cars"]),
}


def shard(domain: str) -> tuple[ShardSpec, dict]:
    trait, values = USER_TRAITS[domain]
    personas = [
        Persona(
            persona_uuid=f"u{i}",
            domain=domain,
            index=i,
            traits=[Trait(name=trait, value=value)],
            persona_description=f"User {i} likes {value}.",
        )
        for i, value in enumerate(values)
    ]
    questions = [
        Question(
            question_uuid=f"q{i}",
            domain=domain,
            index=i,
            question=f"Question {i}?",
            selected_trait=trait,
            trait_varied="",
            question_type="x",
        )
        for i in range(3)
    ]
    responses = [
        Response(
            response_uuid=f"q{q}-r{c}",
            question_uuid=f"q{q}",
            domain=domain,
            view=view,
            response=f"An answer to {q} written for {view}.",
            model="m",
            completion_tokens=9,
        )
        for q in range(3)
        for c, view in enumerate(VIEWS[domain])
    ]
    spec = ShardSpec(stage="gold", domain=domain, index=0, start=0, stop=len(personas))
    return spec, tables(personas=personas, questions=questions, responses=responses)


def config(mode: str = "calibrated", per_user: int = 3) -> JobConfig:
    judge = JudgeConfig(mode=mode, gold_pairs_per_user=per_user)
    return JobConfig(run_dir="unused", stages=StagesConfig(judge=judge))


def letters(slot_a: float) -> Completion:
    """A first token whose log-probabilities favour slot A by `slot_a` nats."""
    return Completion(text="A" if slot_a > 0 else "B", first_token_logprobs={"A": 0, "B": -slot_a})


def oracle(probes: list[gold.GoldProbe], inputs) -> ScriptedBackend:
    """A judge that knows every gold answer: it finds the right text in the prompt and says
    which slot holds it."""
    answers = {}
    for probe in probes:
        x, y = inputs.texts(probe.pair)
        right, wrong = (x, y) if probe.answer_x else (y, x)
        answers[(probe.description, right, wrong)] = True

    def judge(request: ChatRequest) -> Completion:
        prompt = "\n".join(m.content for m in request.messages)
        for description, right, wrong in answers:
            if description in prompt and right in prompt and wrong in prompt:
                return letters(3.0 if prompt.index(right) < prompt.index(wrong) else -3.0)
        raise AssertionError("the oracle was asked about a pair that is no gold pair")

    return ScriptedBackend(judge)


@pytest.mark.parametrize("domain", ["review", "elix", "roleplay"])
@pytest.mark.parametrize("mode", ["strict", "calibrated"])
def test_a_judge_that_knows_every_answer_scores_one(domain: str, mode: str) -> None:
    spec, inputs = shard(domain)
    job = config(mode)
    probes = gold.gold_probes(shard_inputs(spec, inputs, job), load_domain(domain), job)
    assert probes
    backend = oracle(probes, shard_inputs(spec, inputs, job))
    output = gold.run(spec, inputs, StageContext(config=job, backend=backend))
    scores = [r.score for r in output.records]
    assert scores == [1.0] * len(probes)
    counters = output.counters
    figures = figures_of(
        counters["gold_pairs_judged"], counters["gold_pairs_kept"], counters["gold_pairs_right"]
    )
    assert figures.accuracy == 1.0


@pytest.mark.parametrize("mode", ["strict", "calibrated"])
def test_a_judge_that_always_picks_slot_a_scores_one_half(mode: str) -> None:
    # Strict mode drops every pair as an order flip, calibrated mode cancels the constant
    # bias to a zero margin and drops it as too small: either way every pair is an
    # abstention, worth 0.5.
    spec, inputs = shard("roleplay")
    job = config(mode)
    backend = ScriptedBackend(lambda _: letters(2.0))
    output = gold.run(spec, inputs, StageContext(config=job, backend=backend))
    assert output.records and {r.kept for r in output.records} == {False}
    reasons = {r.drop_reason for r in output.records}
    assert reasons == {"order_flip" if mode == "strict" else "low_margin"}
    assert np.mean([r.score for r in output.records]) == 0.5
    assert len(backend.requests) == 2 * len(output.records)


def test_review_gold_pairs_share_more_of_the_users_style() -> None:
    spec, inputs = shard("review")
    job = config(per_user=10)
    pairs_in = shard_inputs(spec, inputs, job)
    probes = gold.gold_probes(pairs_in, load_domain("review"), job)
    users = {p.persona_uuid: p.traits[0].value for p in pairs_in.personas}
    for probe in probes:
        style = set(users[probe.persona_uuid].split(" and "))
        view_x, view_y = pairs_in.views(probe.pair)
        right, wrong = (view_x, view_y) if probe.answer_x else (view_y, view_x)
        assert len(style & set(right.split(" and "))) > len(style & set(wrong.split(" and ")))
    # "positive": "positive and concise" beats both negative reviews, in each question.
    assert sum(p.persona_uuid == "u0" for p in probes) == 6


def test_elix_gold_pairs_hold_the_users_level_and_one_far_from_it() -> None:
    spec, inputs = shard("elix")
    job = config(per_user=10)
    pairs_in = shard_inputs(spec, inputs, job)
    levels = load_domain("elix").responses.views
    users = {p.persona_uuid: p.traits[0].value for p in pairs_in.personas}
    probes = gold.gold_probes(pairs_in, load_domain("elix"), job)
    for probe in probes:
        view_x, view_y = pairs_in.views(probe.pair)
        right, wrong = (view_x, view_y) if probe.answer_x else (view_y, view_x)
        assert right == users[probe.persona_uuid]
        assert abs(levels.index(wrong) - levels.index(right)) >= 2
    # A college student has no candidate at their level here: no gold pair for them.
    assert {p.persona_uuid for p in probes} == {"u0", "u1"}


def test_roleplay_probes_state_the_right_view_and_draw_it_at_random() -> None:
    spec, inputs = shard("roleplay")
    job = config(per_user=3)
    pairs_in = shard_inputs(spec, inputs, job)
    domain = load_domain("roleplay")
    probes = gold.gold_probes(pairs_in, domain, job)
    assert len(probes) == 3 * len(pairs_in.personas)
    for probe in probes:
        view_x, view_y = pairs_in.views(probe.pair)
        right, wrong = (view_x, view_y) if probe.answer_x else (view_y, view_x)
        assert probe.description.endswith(domain.state_preference(right, wrong))
    assert {p.answer_x for p in probes} == {True, False}
    assert probes == gold.gold_probes(pairs_in, domain, job)  # seeded


def test_no_gold_pairs_per_user_disables_the_stage() -> None:
    assert not gold.STAGE.enabled(config(per_user=0))
    assert gold.STAGE.enabled(config(per_user=1))
