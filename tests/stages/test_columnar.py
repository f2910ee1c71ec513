"""The column-wise paths of the judge and episode stages against their row-by-row definitions."""

from collections import Counter
from dataclasses import make_dataclass

import numpy as np
import pyarrow as pa
import pytest

from fspo_data import judging
from fspo_data.core.chat import ChatRequest, Completion
from fspo_data.core.config import JobConfig
from fspo_data.core.fspo_format import format_prompt
from fspo_data.core.records import (
    Episode,
    Judgment,
    Persona,
    RecordTable,
    derived_seed,
    id_key,
    id_of,
    seed_of,
    stable_id,
    to_table,
)
from fspo_data.domains import load_domain
from fspo_data.prompts import render
from fspo_data.stages import episodes, gold, judge, pairs, plan_shards
from fspo_data.stages.base import StageContext
from fspo_data.stages.pairs import CandidatePair, shard_inputs
from tests.conftest import ScriptedBackend
from tests.stages.test_episodes import _judgment, _persona
from tests.stages.test_gold import config as gold_config
from tests.stages.test_gold import shard as gold_shard
from tests.stages.test_judge import _views_run


@pytest.mark.parametrize(
    "values",
    [
        ("a user", "q?", "x", "y"),
        ("likes $money and {braces} and $$", "Why {0}?", "$response_b", "}{"),
        ("", "", "", ""),
    ],
)
def test_judge_messages_are_the_template_rendered(values):
    persona, question, first, second = values
    settings = judging.JudgeConfig()
    (request,) = judging.judge_requests(persona, question, first, second, settings, seed=1)
    expected = render(
        "judge", persona=persona, question=question, response_a=first, response_b=second
    )
    assert request.messages == expected


def test_reconcile_all_matches_reconcile_pair_by_pair():
    first = [1.0, -1.0, 1.0, -1.0, 0.0, 0.3, 2.05, float("nan")]
    second = [-1.0, 1.0, 1.0, -1.0, -1.0, 0.3, 1.95, 1.0]
    for settings in (judging.JudgeConfig(mode="strict"), judging.JudgeConfig(min_margin=0.1)):
        verdicts = judging.reconcile_all(pa.array(first).to_numpy(), pa.array(second).to_numpy(),
                                       settings)  # fmt: skip
        assert verdicts.drop_reason[-1] == "no_verdict" and not verdicts.kept[-1]
        for i, (f, s) in enumerate(zip(first[:-1], second[:-1], strict=True)):
            one = judging.reconcile(f, s, settings)
            assert (one.kept, one.drop_reason, one.prefers_x) == (
                verdicts.kept[i],
                verdicts.drop_reason[i],
                verdicts.prefers_x[i],
            )


def test_pairs_without_a_letter_are_counted_not_written(tmp_path):
    *_, inputs = _views_run(tmp_path, refine_rounds=0)
    config = JobConfig(
        run_dir=tmp_path,
        counts={"users": 1, "pairs_per_user": 6, "shots": {"roleplay": 2}},
        stages={"judge": {"refine_rounds": 0}},
    )

    def no_letters(request: ChatRequest) -> Completion:
        return Completion(first_token_logprobs={"The": -0.1})

    spec = plan_shards(judge.STAGE, config)[0]
    context = StageContext(config=config, backend=ScriptedBackend(no_letters))
    output = judge.run(spec, inputs, context)
    assert len(output.records) == 0
    assert to_table(output.records, Judgment).schema.equals(Judgment.arrow_schema())
    assert output.counters["pairs_judged"] == output.counters["pairs_dropped_no_verdict"] == 6


def test_a_shard_cuts_each_user_as_the_single_user_path_does():
    config = JobConfig(
        run_dir="x",
        counts={"shots": {"roleplay": 3}},
        splits={"test_user_fraction": 0.3, "test_question_fraction": 0.3},
    )
    users = [_persona(f"u{u}") for u in range(8)] + [_persona("nobody")]
    judgments = [
        _judgment(p.persona_uuid, i, f"q{i % 7}", kept=i % 5 != 0)
        for p in users[:-1]
        for i in range(14)
    ]
    counters: Counter[str] = Counter()
    table = episodes.episode_table(
        to_table(users, Persona), to_table(judgments[::-1], Judgment), config, counters
    )
    shard = list(RecordTable(table, Episode))
    one_by_one = [
        e
        for p in users
        for e in episodes.user_episodes(
            p, [j for j in judgments if j.persona_uuid == p.persona_uuid], config
        )
    ]
    assert shard == one_by_one and len(shard) > 8
    assert all(e.prompt == format_prompt(e.shots, e.query_question) for e in shard)
    assert counters["users_without_episode"] == 1
    assert sum(v for k, v in counters.items() if k.startswith("episodes_")) == len(shard)


def test_record_table_reads_like_a_list_and_checks_its_schema():
    people = [_persona(f"u{i}") for i in range(3)]
    rows = RecordTable(to_table(people, Persona), Persona)
    assert list(rows) == people and rows[-1] == people[-1] and rows[:2] == people[:2]
    with pytest.raises(IndexError):
        rows[3]
    with pytest.raises(ValueError, match="schema"):
        RecordTable(to_table(people, Persona).drop_columns(["index"]), Persona)
    with pytest.raises(ValueError):
        to_table(rows, Judgment)


def test_id_keys_concatenate_into_the_ids_and_seeds_of_all_the_parts():
    pair = CandidatePair("q", "x", "y")
    for parts in [("judge", "u1", pair), ("judgment", "u1", "x", "y"), ("é", None, 2.5)]:
        for cut in range(len(parts) + 1):
            key = id_key(*parts[:cut]) + id_key(*parts[cut:])
            assert id_of(key) == stable_id(*parts)
            assert seed_of(key) == derived_seed(*parts)


def test_a_candidate_pairs_repr_is_the_dataclass_one():
    """Seeds hash a pair's repr: the hand-written one is the generated one, byte for byte."""
    generated = make_dataclass("CandidatePair", ["question_uuid", "x", "y"], frozen=True)
    for parts in [("q", "x", "y"), ("it's", 'é"', "a\\b\n")]:
        assert repr(pairs.CandidatePair(*parts)) == repr(generated(*parts))


def test_judge_ids_and_seeds_are_the_row_by_row_ones(tmp_path):
    """Each judgment's id is stable_id("judgment", user, x, y), and each pass asks for every
    (user, pair) with derived_seed("judge", user, pair), what they were before the judge
    hashed ids from shared keys."""
    output, backend, config, inputs = _views_run(tmp_path, refine_rounds=1)
    records = list(output.records)
    assert records
    for r in records:
        assert r.judgment_uuid == stable_id("judgment", r.persona_uuid, r.response_x_uuid,
                                            r.response_y_uuid)  # fmt: skip
    seeds = {
        derived_seed(
            "judge",
            r.persona_uuid,
            CandidatePair(r.question_uuid, r.response_x_uuid, r.response_y_uuid),
        )  # fmt: skip
        for r in records
    }
    first_pass = backend.requests[: 2 * len(records)]
    assert {request.seed for request in first_pass} == seeds


@pytest.mark.parametrize("domain", ["review", "elix", "roleplay"])
def test_gold_probes_are_the_user_by_user_ones(domain):
    """Eligible pairs are found once per gold-trait value; the probes are those of the
    definition that asks every user about every pool pair."""
    spec, tables_in = gold_shard(domain)
    job = gold_config(per_user=3)
    inputs = shard_inputs(spec, tables_in, job)
    spec_domain = load_domain(domain)
    expected = []
    for persona in inputs.personas:
        rng = np.random.default_rng(derived_seed("gold", job.seed, persona.persona_uuid))
        if spec_domain.gold.rule == "stated_preference":
            eligible = [p for p in inputs.pool if len(set(inputs.views(p))) == 2]
            answers = [bool(a) for a in rng.integers(0, 2, size=len(eligible))]
        else:
            answered = [(p, spec_domain.gold_answer(persona.traits, *inputs.views(p)))
                        for p in inputs.pool]  # fmt: skip
            eligible = [p for p, a in answered if a is not None]
            answers = [a for _, a in answered if a is not None]
        picks = rng.choice(len(eligible), size=min(3, len(eligible)), replace=False)
        expected += [(persona.persona_uuid, eligible[i], answers[i]) for i in sorted(picks)]
    probes = gold.gold_probes(inputs, spec_domain, job)
    assert [(p.persona_uuid, p.pair, p.answer_x) for p in probes] == expected
    assert expected
