import math
import re
from collections import Counter

import polars as pl
import pytest

from fspo_data import judging
from fspo_data.core.batch import letter_margin
from fspo_data.core.chat import ChatRequest, Completion
from fspo_data.core.config import JobConfig, JudgeConfig
from fspo_data.core.records import Judgment, Persona, Question, Response, Trait, to_table
from fspo_data.domains import load_domain
from fspo_data.pipeline.consistency import consistency
from fspo_data.stages import judge, pairs
from fspo_data.stages.base import ShardSpec, StageContext
from tests.conftest import ScriptedBackend, tables

STRICT = JudgeConfig(mode="strict")
CALIBRATED = JudgeConfig(mode="calibrated", min_margin=0.1)


# The four combinations of (which order) x (which slot the judge picks), strict mode.
@pytest.mark.parametrize(
    ("margin_first", "margin_second", "kept", "prefers_x"),
    [
        (+1.0, -1.0, True, True),  # x wins in slot A, then x wins in slot B
        (-1.0, +1.0, True, False),  # y wins in slot B, then y wins in slot A
        (+1.0, +1.0, False, True),  # slot A wins both times: order flip, dropped
        (-1.0, -1.0, False, True),  # slot B wins both times: order flip, dropped
    ],
)
def test_strict_unswaps_second_order(margin_first, margin_second, kept, prefers_x):
    verdict = judging.reconcile(margin_first, margin_second, STRICT)
    assert verdict.kept is kept
    if kept:
        assert verdict.prefers_x is prefers_x
        assert verdict.debiased_margin == pytest.approx((margin_first - margin_second) / 2)
    else:
        assert verdict.drop_reason == "order_flip"


def test_calibrated_cancels_constant_position_bias():
    bias, preference = 2.0, 0.3  # a judge that favours slot A by 2 nats, x by 0.3
    verdict = judging.reconcile(preference + bias, -preference + bias, CALIBRATED)
    assert verdict.kept and verdict.prefers_x
    assert verdict.debiased_margin == pytest.approx(preference)
    flipped = judging.reconcile(-preference + bias, preference + bias, CALIBRATED)
    assert flipped.kept and not flipped.prefers_x


def test_calibrated_drops_small_margins():
    verdict = judging.reconcile(2.05, 1.95, CALIBRATED)
    assert not verdict.kept and verdict.drop_reason == "low_margin"


def test_letter_margin_reads_logprobs_and_floors_missing_letter():
    assert letter_margin(Completion(first_token_logprobs={"A": -0.5, "B": -2.0})) == 1.5
    floored = letter_margin(Completion(first_token_logprobs={"A": -0.5, "The": -3.0}))
    assert floored == pytest.approx(2.5)
    assert letter_margin(Completion(first_token_logprobs={"The": -0.1})) is None
    failed = Completion(failure="bad_output", first_token_logprobs={"A": -1.0})
    assert letter_margin(failed) is None


def test_position_stats():
    stats = judging.position_stats([2.0, 1.0], [1.0, -1.0])
    assert stats["first_slot_win_rate"] == pytest.approx(3 / 4)
    assert stats["position_bias_nats"] == pytest.approx((1.5 + 0.0) / 2)


def make_questions(count: int) -> list[Question]:
    """Roleplay questions q0, q1, ... with the texts "q0?", "q1?", ..."""
    return [
        Question(
            question_uuid=f"q{i}",
            domain="roleplay",
            index=i,
            question=f"q{i}?",
            selected_trait="t",
            trait_varied="v",
            question_type="x",
        )
        for i in range(count)
    ]


def _responses(n_questions: int, per_question: int) -> list[Response]:
    return [
        Response(
            response_uuid=f"r{q}{c}",
            question_uuid=f"q{q}",
            domain="roleplay",
            view="v",
            response="GOOD" if c == 0 else f"meh {c}",
            model="m",
            completion_tokens=1,
        )
        for q in range(n_questions)
        for c in range(per_question)
    ]


def test_candidate_pairs_and_assignment_are_stable():
    responses = _responses(3, 3)
    pool = pairs.candidate_pairs(
        [r.question_uuid for r in responses], [r.response_uuid for r in responses]
    )
    assert len(pool) == 9 and all(p.x < p.y for p in pool)
    whole = range(len(pool))
    first = pairs.assign_pairs("user-1", whole, 4, seed=0)
    assert first == pairs.assign_pairs("user-1", whole, 4, seed=0)
    assert len(set(first)) == 4 and first == sorted(first)
    assert pairs.assign_pairs("user-1", whole, 50, seed=0) == list(range(9))
    # Pinned: one block is the whole pool, drawn exactly as before blocks existed.
    assert first == [0, 1, 2, 8]


def biased_judge_preferring_good(request: ChatRequest) -> Completion:
    """Prefers the response containing GOOD by 0.5 nats, on top of a +2 nat bias to slot A."""
    text = request.messages[-1].content
    a_is_good = "Response A:\nGOOD" in text
    margin = 2.0 + (0.5 if a_is_good else -0.5)
    return Completion(first_token_logprobs={"A": 0.0, "B": -margin})


def test_judge_shard_unswaps_and_picks_the_good_response_in_both_slots(tmp_path):
    config = JobConfig(
        run_dir=tmp_path,
        counts={"users": 2, "pairs_per_user": 6, "shots": {"roleplay": 2}},
        stages={"judge": {"refine_rounds": 0}},
    )
    persona = Persona(
        persona_uuid="u0",
        domain="roleplay",
        index=0,
        traits=[],
        persona_description="likes GOOD things",
    )
    questions = make_questions(2)
    inputs = tables(personas=[persona], questions=questions, responses=_responses(2, 3))
    backend = ScriptedBackend(biased_judge_preferring_good)
    spec = ShardSpec(stage="judge", domain="roleplay", index=0, start=0, stop=1)
    output = judge.run(spec, inputs, StageContext(config=config, backend=backend))
    with_good = [j for j in output.records if "GOOD" in (j.chosen + j.rejected)]
    assert with_good, "the fixture should put GOOD in some pairs"
    assert all(j.chosen == "GOOD" for j in with_good if j.kept)
    assert all(j.kept for j in with_good)
    assert output.counters["pairs_judged"] == 6
    # Both orders are asked, one after the other, persona first for the prefix cache.
    assert len(backend.requests) == 12
    assert backend.requests[0].messages[0].content.startswith("You are this user: likes GOOD")
    assert isinstance(output.counters, Counter)


STATED = re.compile(r"point of view of (\w+) to answers from the point of view of (\w+)")


def judge_following_stated_preferences(request: ChatRequest) -> Completion:
    """A deterministic judge double: +3 nats for a stated preference, else a 0.01 lean to the
    alphabetically first view; always +2 nats of bias towards slot A."""
    system, user = request.messages[0].content, request.messages[1].content
    view_a = re.search(r"Response A:\ntext by (\w+)", user).group(1)
    view_b = re.search(r"Response B:\ntext by (\w+)", user).group(1)
    prefers = set(STATED.findall(system))
    if (view_a, view_b) in prefers:
        margin = 3.0
    elif (view_b, view_a) in prefers:
        margin = -3.0
    else:
        margin = 0.01 if view_a < view_b else -0.01
    return Completion(first_token_logprobs={"A": 0.0, "B": -(margin + 2.0)})


def _views_run(tmp_path, refine_rounds: int):
    config = JobConfig(
        run_dir=tmp_path,
        counts={"users": 1, "pairs_per_user": 6, "shots": {"roleplay": 2}},
        stages={"judge": {"refine_rounds": refine_rounds, "min_margin": 0.05}},
    )
    persona = Persona(
        persona_uuid="u0", domain="roleplay", index=0, traits=[], persona_description="A user."
    )
    questions = make_questions(2)
    responses = [
        Response(
            response_uuid=f"r{q}{v}",
            question_uuid=f"q{q}",
            domain="roleplay",
            view=v,
            response=f"text by {v}",
            model="m",
            completion_tokens=1,
        )
        for q in range(2)
        for v in ("V0", "V1", "V2")
    ]
    inputs = tables(personas=[persona], questions=questions, responses=responses)
    spec = ShardSpec(stage="judge", domain="roleplay", index=0, start=0, stop=1)
    backend = ScriptedBackend(judge_following_stated_preferences)
    context = StageContext(config=config, backend=backend)
    return judge.run(spec, inputs, context), backend, config, inputs


def test_verdict_entropy_is_the_binary_entropy_of_the_sigmoid_of_the_margin():
    margins = [0.0, 0.5, -0.5, 3.0, 40.0, 800.0]
    entropy = pl.select(judging.verdict_entropy(pl.lit(pl.Series(margins)))).to_series()
    for margin, h in zip(margins, entropy.to_list(), strict=True):
        p = 1 / (1 + math.exp(-abs(margin)))
        expected = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if p < 1 else 0.0
        assert h == pytest.approx(expected, abs=1e-12), margin
    assert entropy[0] == pytest.approx(math.log(2))  # a zero margin is a coin flip
    assert entropy[1] == entropy[2]  # the sign names the response, not the certainty


def test_refinement_states_preferences_relabels_and_lowers_label_entropy(tmp_path):
    output, backend, config, _ = _views_run(tmp_path, refine_rounds=2)
    records = output.records
    assert len(records) == 6 and all(j.kept and j.refined for j in records)
    assert output.counters["stated_preferences_added"] == 3
    assert output.counters["refine_rounds_run"] == 1  # round 2 found nothing left to settle
    assert len(backend.requests) == 2 * 6 * 2  # a first pass, then one relabel of every pair
    description = records[0].persona_description
    assert description.startswith("A user.\nI prefer answers from the point of view of")
    # Every final label follows the stated preference for its pair of views.
    stated = set(STATED.findall(description))
    assert all((j.chosen_view, j.rejected_view) in stated for j in records)
    stats = consistency(pl.from_arrow(to_table(records, Judgment)), 0, config.stages.judge)
    assert stats.label_entropy_before == pytest.approx(math.log(2), abs=1e-3)
    certain = 1 / (1 + math.exp(-3.0))  # every final debiased margin is 3 nats
    binary_entropy = -(certain * math.log(certain) + (1 - certain) * math.log(1 - certain))
    assert stats.label_entropy_after == pytest.approx(binary_entropy)
    assert stats.label_entropy_after < 0.2 < stats.label_entropy_before
    assert stats.users_refined == 1 and stats.position_bias_nats == pytest.approx(2.0)


def test_without_refinement_the_unsettled_pairs_are_dropped(tmp_path):
    output, backend, _, _ = _views_run(tmp_path, refine_rounds=0)
    assert len(backend.requests) == 12
    assert not any(j.kept for j in output.records)
    assert output.counters["pairs_dropped_low_margin"] == 6


def test_stated_preferences_never_contradict_the_description():
    domain = load_domain("roleplay")
    existing = "A user.\n" + domain.state_preference("V1", "V0")
    chosen = judging.choose_stated_preferences(
        existing,
        [("V0", "V1", 0.2), ("V0", "V2", 0.1), ("V0", "V2", 0.3), ("V2", "V2", 1.0)],
        domain,
        limit=5,
    )
    assert chosen == [domain.state_preference("V0", "V2")]


def test_vote_margin_is_a_smoothed_majority():
    votes = [Completion(text=t) for t in ("A", "A", "B", "x")]
    assert judging.vote_margin(votes) == pytest.approx(math.log(2.5 / 1.5))
    assert judging.vote_margin([Completion(text="?")]) is None
    settings = JudgeConfig(samples_per_order=3, sample_temperature=0.7)
    requests = judging.judge_requests("d", "q", "a", "b", settings, seed=10)
    assert [r.seed for r in requests] == [10, 11, 12]
    assert all(r.temperature == 0.7 and r.top_logprobs == 0 for r in requests)


def test_elix_pairs_are_easy_when_a_candidate_targets_the_users_level():
    domain = load_domain("elix")
    persona = Persona(
        persona_uuid="u",
        domain="elix",
        index=0,
        persona_description="d",
        traits=[Trait(name="education_level", value="a college student")],
    )
    assert (
        domain.pair_difficulty(persona.traits, "a college student", "an expert in the field")
        == "easy"
    )
    assert (
        domain.pair_difficulty(persona.traits, "a high school student", "an expert in the field")
        == "hard"
    )
    assert load_domain("roleplay").pair_difficulty(persona.traits, "a", "b") == ""


def test_pair_blocks_deal_consecutive_users_to_slices_of_the_pool():
    blocks = pairs.block_users(10, 3)
    assert blocks == [range(0, 4), range(4, 7), range(7, 10)]
    slices = [pairs.pool_block(i, 10, 3, 30) for i in range(10)]
    # Every user of a block draws from its block's slice, and the slices cut the whole pool.
    for b, users in enumerate(blocks):
        assert {slices[i].start for i in users} == {b * 10}
    assert sorted({(s.start, s.stop) for s in slices}) == [(0, 10), (10, 20), (20, 30)]
    drawn = pairs.assign_pairs("user-1", pairs.pool_block(8, 10, 3, 30), 4, seed=0)
    assert all(20 <= p < 30 for p in drawn) and len(drawn) == 4
    assert pairs.pool_block(8, 10, 1, 30) == range(30)
    assert pairs.users_by_block(range(3, 8), blocks) == [1, 3, 1]
