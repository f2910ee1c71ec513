"""Judge prompt layouts: requests in prefix order, answers matched back to their user and pair,
and the plan's estimate of what the prefix cache serves."""

import hashlib
import math
import random
import re
from collections import Counter
from typing import get_args

import pytest

from fspo_data import judging
from fspo_data.core.chat import ChatRequest, Completion
from fspo_data.core.config import JobConfig, JudgeConfig
from fspo_data.core.records import Judgment, Persona, Response, to_table
from fspo_data.pipeline.plan import job_loads
from fspo_data.prompts import render
from fspo_data.stages import judge
from fspo_data.stages.base import ShardSpec, StageContext
from tests.conftest import ScriptedBackend, tables
from tests.stages.test_judge import make_questions

LAYOUTS = list(judging.LAYOUTS)
USER = re.compile(r"You are this user: (user\d+)")
SLOTS = re.compile(r"Response A:\n(.*)\n\nResponse B:\n(.*?)\n", re.S)


def preference(user: str, a: str, b: str) -> float:
    """A margin that depends on who judges and what is in each slot, in [-1, 1]."""
    digest = hashlib.sha256(f"{user}|{a}|{b}".encode()).digest()
    return (digest[0] - 127.5) / 127.5


def judge_by_user_and_slots(request: ChatRequest) -> Completion:
    text = "\n".join(m.content for m in request.messages)
    user = USER.search(text).group(1)
    a, b = SLOTS.search(text).groups()
    return Completion(first_token_logprobs={"A": 0.0, "B": -preference(user, a, b)})


def shard(refine_rounds: int = 1, **judge_settings: object):
    config = JobConfig(
        run_dir="x",
        counts={"users": 5, "pairs_per_user": 4, "shots": {"roleplay": 2}},
        stages={"judge": {"refine_rounds": refine_rounds, "min_margin": 0.3, **judge_settings}},
    )
    personas = [
        Persona(
            persona_uuid=f"u{i}",
            domain="roleplay",
            index=i,
            traits=[],
            persona_description=f"user{i}",
        )  # fmt: skip
        for i in range(5)
    ]
    questions = make_questions(2)
    responses = [
        Response(
            response_uuid=f"r{q}{v}",
            question_uuid=f"q{q}",
            domain="roleplay",
            view=f"V{v}",
            response=f"answer {v} to q{q}",
            model="m",
            completion_tokens=1,
        )  # fmt: skip
        for q in range(2)
        for v in range(3)
    ]
    inputs = tables(personas=personas, questions=questions, responses=responses)
    spec = ShardSpec(stage="judge", domain="roleplay", index=0, start=0, stop=5)
    return spec, inputs, config, {r.response_uuid: r.response for r in responses}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_margins_come_back_to_their_user_and_pair_in_both_orders(layout):
    spec, inputs, config, texts = shard(layout=layout)
    backend = ScriptedBackend(judge_by_user_and_slots)
    output = judge.run(spec, inputs, StageContext(config=config, backend=backend))
    assert output.counters["refine_rounds_run"] == 1, "the relabel pass should run too"
    assert len(output.records) == 5 * 4
    for j in output.records:
        user = f"user{j.persona_uuid[1:]}"
        x, y = texts[j.response_x_uuid], texts[j.response_y_uuid]
        assert j.margin_first == pytest.approx(preference(user, x, y))
        assert j.margin_second == pytest.approx(preference(user, y, x))


def runs_of(keys: list[object]) -> list[object]:
    """`keys` with consecutive repeats collapsed."""
    return [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]


def test_requests_are_grouped_by_what_the_layout_puts_first():
    def first_pass(layout: str) -> list[ChatRequest]:
        spec, inputs, config, _ = shard(refine_rounds=0, layout=layout)
        backend = ScriptedBackend(judge_by_user_and_slots)
        judge.run(spec, inputs, StageContext(config=config, backend=backend))
        return backend.requests

    # persona_first: a user's calls together (the description is the cached prefix).
    users = [USER.search(r.messages[0].content).group(1) for r in first_pass("persona_first")]
    assert len(runs_of(users)) == 5 == len(set(users))
    # pair_first: a pair in one order together over users; a question's pairs together.
    requests = first_pass("pair_first")
    pair_orders = [SLOTS.search(r.messages[1].content).groups() for r in requests]
    assert len(runs_of(pair_orders)) == len(set(pair_orders)) < len(pair_orders)
    questions = [re.search(r"Question: (q\d)", r.messages[1].content).group(1) for r in requests]
    assert len(runs_of(questions)) == 2
    # ... which is not the order of the jobs (user by user): the answers were reordered.
    users = [USER.search(r.messages[1].content).group(1) for r in requests]
    assert len(runs_of(users)) > 5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_judge_both_orders_maps_votes_back_whatever_order_the_pairs_come_in(layout):
    settings = JudgeConfig(layout=layout, samples_per_order=3, sample_temperature=0.7)
    pairs = [
        judging.PairToJudge(f"user{u}", f"q{q}?", f"x{q}", f"y{q}", seed=10 * u + q)
        for u in range(3)
        for q in range(4)
    ]
    random.Random(0).shuffle(pairs)

    def vote(request: ChatRequest) -> Completion:
        text = "\n".join(m.content for m in request.messages)
        user = USER.search(text).group(1)
        return Completion(text="A" if preference(user, *SLOTS.search(text).groups()) > 0 else "B")

    first, second = judging.judge_both_orders(
        ScriptedBackend(vote), pairs, settings, Counter(), "judge"
    )
    unanimous = math.log(3.5 / 0.5)
    for pair, m_first, m_second in zip(pairs, first, second, strict=True):
        assert m_first == pytest.approx(
            math.copysign(unanimous, preference(pair.persona, pair.x, pair.y))
        )
        assert m_second == pytest.approx(
            math.copysign(unanimous, preference(pair.persona, pair.y, pair.x))
        )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_resumed_judge_shard_gives_the_same_labels(layout):
    spec, inputs, config, _ = shard(layout=layout)
    runs = [
        judge.run(
            spec,
            inputs,
            StageContext(config=config, backend=ScriptedBackend(judge_by_user_and_slots)),
        )
        for _ in range(2)
    ]
    assert to_table(runs[0].records, Judgment).equals(to_table(runs[1].records, Judgment))


def test_pair_first_template_puts_the_pair_before_the_user():
    values = {"persona": "P", "question": "Q", "response_a": "RA", "response_b": "RB"}
    (request,) = judging.judge_requests(*values.values(), JudgeConfig(layout="pair_first"), seed=1)
    assert request.messages == render("judge_pair_first", **values)
    user = request.messages[1].content
    assert user.index("Q") < user.index("RA") < user.index("RB") < user.index("P")
    # The prefix a pair-order's calls share ends where the user's description begins.
    prefix = judging.shared_prefix("pair_first", values)
    assert prefix.endswith("You are this user: ") and "RB" in prefix
    persona_prefix = judging.shared_prefix("persona_first", values)
    assert "P" in persona_prefix and "RA" not in persona_prefix


def test_pair_first_asks_before_the_user_and_ends_on_the_answer_cue():
    # Everything that is not the user's own text, the instruction included, is in the prefix
    # every user of a pair-order shares; after the description only a short fixed cue.
    values = {"persona": "PERSONA", "question": "Q", "response_a": "RA", "response_b": "RB"}
    system, user = judging.judge_messages("pair_first", **values)
    before, after = user.content.split("PERSONA")
    assert "Answer with one letter, A or B." in before and "prefer" in before
    assert "Answer with one letter" not in after
    assert len(after) <= 40 and after.rstrip().endswith("A or B:")
    prefix = judging.shared_prefix("pair_first", values)
    assert prefix == "\n".join([system.content, before])
    assert "Answer with one letter, A or B." in prefix
    # persona_first keeps its own order: the user first, the instruction last.
    _, persona_user = judging.judge_messages("persona_first", **values)
    assert persona_user.content.endswith(
        "Which response do you prefer? Answer with one letter, A or B."
    )


def test_pair_first_calls_differ_only_in_the_users_text_in_both_passes():
    # The relabel pass appends stated preferences to the description: they stay after the
    # shared prefix, so a pair-order's calls are alike up to "You are this user: " in both passes.
    spec, inputs, config, _ = shard(layout="pair_first")
    backend = ScriptedBackend(judge_by_user_and_slots)
    output = judge.run(spec, inputs, StageContext(config=config, backend=backend))
    assert output.counters["stated_preferences_added"] > 0
    heads: dict[tuple[str, str], set[str]] = {}
    tails = set()
    for request in backend.requests:
        text = "\n".join(m.content for m in request.messages)
        head, persona = text.split("You are this user: ")
        heads.setdefault(SLOTS.search(text).groups(), set()).add(head)
        tails.add(persona.split("\n\n", 1)[1])
    assert all(len(h) == 1 for h in heads.values()) and len(heads) > 1
    assert len(tails) == 1, "only one fixed cue after the description"
    stated = [r for r in backend.requests if "I prefer" in r.messages[1].content]
    assert stated, "the relabel pass should carry stated preferences"


def test_cache_groups_follow_the_pool_sharing():
    # Two users each draw 1 of 2 pairs: 1.5 distinct pairs expected, so 3 pair-orders.
    assert judging.cache_groups("pair_first", 2, 1, 2) == pytest.approx(3.0)
    # Everyone draws every pair: each pair-order once, whatever the number of users.
    assert judging.cache_groups("pair_first", 7, 3, 3) == pytest.approx(6.0)
    assert judging.cache_groups("persona_first", 7, 3, 3) == 7.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_plan_counts_each_shared_prefix_once_per_shard(layout):
    # 4 users in 2 shards of 2; 3 questions x 1 pair (2 candidates) = a pool of 3, every user
    # draws all 3 pairs: per shard 2 x 3 x 2 = 12 calls. Groups per shard: 2 users
    # (persona_first) or 3 pairs x 2 orders (pair_first). No refinement round.
    config = JobConfig(
        run_dir="x",
        counts={"users": 4, "questions": 3, "candidates_per_question": 2, "pairs_per_user": 3},
        sharding={"users_per_shard": 2},
        stages={"judge": {"layout": layout, "refine_rounds": 0}},
    )
    load = next(s for s in job_loads(config) if s.stage == "judge")
    assert load.calls == 24
    groups = {"persona_first": 2, "pair_first": 6}[layout]
    per_call = load.prompt_tokens // load.calls
    shared = load.cached_prompt_tokens / (2 * (12 - groups))
    assert shared == int(shared) and 0 < shared < per_call
    if layout == "pair_first":  # more users per shard share each pair-order more often
        bigger = config.model_copy(
            update={"sharding": config.sharding.model_copy(update={"users_per_shard": 4})}
        )
        cached = next(s for s in job_loads(bigger) if s.stage == "judge").cached_prompt_tokens
        assert cached == (24 - 6) * shared


def test_pair_blocks_keep_a_blocks_users_on_its_slice_of_the_pool():
    # 5 users in 2 blocks, u0-u2 and u3-u4; the pool (by question) is q0's 3 pairs, then q1's.
    spec, inputs, config, _ = shard(refine_rounds=0, layout="pair_first")
    counts = config.counts.model_copy(update={"pair_blocks": 2, "pairs_per_user": 3})
    config = config.model_copy(update={"counts": counts})
    output = judge.run(spec, inputs, StageContext(config=config, backend=ScriptedBackend(
        judge_by_user_and_slots)))  # fmt: skip
    drawn: dict[str, set[tuple[str, str]]] = {}
    for j in output.records:
        drawn.setdefault(j.persona_uuid, set()).add((j.response_x_uuid, j.response_y_uuid))
    q0 = {("r00", "r01"), ("r00", "r02"), ("r01", "r02")}
    q1 = {(f"r1{x[-1]}", f"r1{y[-1]}") for x, y in q0}
    assert drawn == {"u0": q0, "u1": q0, "u2": q0, "u3": q1, "u4": q1}


def test_plan_with_a_pair_block_per_shard_shares_each_pair_over_all_its_users():
    # 40 users, a pool of 40 pairs, 4 pairs each: ~4 users per pair over the job. One pool:
    # a shard of 10 users holds each pair-order ~once; 4 blocks of 10 users and 10 pairs, one
    # per shard: all ~4 users of a pair-order share its prefix in that shard.
    def cached_share(pair_blocks: int) -> float:
        config = JobConfig(
            run_dir="x",
            counts={"users": 40, "questions": 40, "candidates_per_question": 2,
                    "pairs_per_user": 4, "pair_blocks": pair_blocks},
            sharding={"users_per_shard": 10},
            stages={"judge": {"layout": "pair_first", "refine_rounds": 0}},
        )  # fmt: skip
        load = next(s for s in job_loads(config) if s.stage == "judge")
        return load.cached_prompt_tokens / load.prompt_tokens

    assert cached_share(4) > 2 * cached_share(1) > 0
    assert judging.cache_groups("pair_first", 10, 4, 10) == pytest.approx(20 * (1 - 0.6**10))


def test_every_configurable_layout_has_a_template():
    configurable = set(get_args(JudgeConfig.model_fields["layout"].annotation))
    assert configurable == set(judging.LAYOUTS)
    for layout in configurable:
        assert judging.judge_requests("p", "q", "a", "b", JudgeConfig(layout=layout), seed=0)
