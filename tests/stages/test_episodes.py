import random
from collections import Counter

import numpy as np
import pytest

from fspo_data.core.config import JobConfig
from fspo_data.core.records import (
    Episode,
    Judgment,
    Persona,
    PersonaDuplicate,
    RecordTable,
    Trait,
    to_table,
)
from fspo_data.stages import episodes


def _judgment(user: str, i: int, question: str, kept: bool = True) -> Judgment:
    return Judgment(
        judgment_uuid=f"{user}-j{i}",
        persona_uuid=user,
        question_uuid=question,
        domain="roleplay",
        response_x_uuid=f"x{i}",
        response_y_uuid=f"y{i}",
        margin_first=1.0,
        margin_second=-1.0,
        debiased_margin=1.0,
        initial_debiased_margin=0.5,
        refined=False,
        difficulty="",
        kept=kept,
        drop_reason="" if kept else "order_flip",
        chosen_uuid=f"x{i}",
        rejected_uuid=f"y{i}",
        confidence=1.0,
        persona_description="refined d",
        question=f"{question}?",
        chosen=f"chosen {i}",
        rejected=f"rejected {i}",
        chosen_view="vx",
        rejected_view="vy",
    )


def _persona(uuid: str, domain: str = "roleplay", traits: list[Trait] | None = None) -> Persona:
    return Persona(
        persona_uuid=uuid,
        domain=domain,
        index=0,
        traits=traits or [],
        persona_description="d",
    )


def test_windows_use_only_kept_pairs_of_the_user_without_overlap():
    config = JobConfig(
        run_dir="x",
        counts={"shots": {"roleplay": 4}},
        splits={"test_user_fraction": 0, "test_question_fraction": 0},
    )
    judgments = [_judgment("u", i, f"q{i}") for i in range(11)] + [_judgment("u", 99, "q", False)]
    result = episodes.user_episodes(_persona("u"), judgments, config=config)
    assert len(result) == 2  # 11 kept pairs -> two windows of 5, one pair left over
    used = [s.judgment_uuid for e in result for s in e.shots] + [
        e.query_judgment_uuid for e in result
    ]
    assert len(used) == len(set(used)) == 10
    assert "u-j99" not in used
    assert all(e.split == "train" and len(e.shots) == 4 for e in result)
    assert all(e.prompt.endswith(f"## Question \n{e.query_question}\n") for e in result)


def test_held_out_questions_are_only_queries_and_never_in_train():
    config = JobConfig(
        run_dir="x",
        counts={"shots": {"roleplay": 3}},
        splits={"test_user_fraction": 0, "test_question_fraction": 0.4},
    )
    all_episodes = []
    for u in range(6):
        judgments = [_judgment(f"u{u}", i, f"q{i}") for i in range(20)]
        all_episodes += episodes.user_episodes(_persona(f"u{u}"), judgments, config=config)
    held = {f"q{i}" for i in range(20) if episodes.held_out(0, "question", f"q{i}", 0.4)}
    assert held, "fixture should hold out some questions"
    train = [e for e in all_episodes if e.split == "train"]
    test_q = [e for e in all_episodes if e.split == "test_questions"]
    assert train and test_q
    train_questions = {e.query_question_uuid for e in train} | {
        s.question.rstrip("?") for e in train for s in e.shots
    }
    assert not train_questions & held
    assert all(e.query_question_uuid in held for e in test_q)


def test_held_out_users_have_every_episode_in_test_users():
    config = JobConfig(
        run_dir="x",
        counts={"shots": {"roleplay": 2}},
        splits={"test_user_fraction": 0.5, "test_question_fraction": 0},
    )
    splits = {}
    for u in range(20):
        judgments = [_judgment(f"u{u}", i, f"q{i}") for i in range(10)]
        for e in episodes.user_episodes(_persona(f"u{u}"), judgments, config=config):
            splits.setdefault(e.persona_uuid, set()).add(e.split)
    assert {"train"} in splits.values() and {"test_users"} in splits.values()
    assert all(len(s) == 1 for s in splits.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_episodes_are_deterministic(seed):
    config = JobConfig(run_dir="x", seed=seed, counts={"shots": {"roleplay": 3}})
    judgments = [_judgment("u", i, f"q{i}") for i in range(12)]
    first = episodes.user_episodes(_persona("u"), judgments, config=config)
    again = episodes.user_episodes(_persona("u"), list(reversed(judgments)), config=config)
    assert [e.episode_uuid for e in first] == [e.episode_uuid for e in again]


def test_episode_carries_the_refined_description():
    config = JobConfig(
        run_dir="x",
        counts={"shots": {"roleplay": 2}},
        splits={"test_user_fraction": 0, "test_question_fraction": 0},
    )
    judgments = [_judgment("u", i, f"q{i}") for i in range(3)]
    (episode,) = episodes.user_episodes(_persona("u"), judgments, config=config)
    assert episode.persona_description == "refined d"


def test_interpolated_review_users_are_held_out():
    config = JobConfig(
        run_dir="x",
        domains=["review"],
        counts={"shots": {"review": 2}},
        splits={"test_user_fraction": 0, "test_question_fraction": 0},
    )
    judgments = [_judgment("u", i, f"q{i}") for i in range(6)]
    mixed = _persona("u", "review", [Trait(name="review_preference", value="positive and concise")])
    pure = _persona("u", "review", [Trait(name="review_preference", value="positive")])
    assert {e.split for e in episodes.user_episodes(mixed, judgments, config)} == {"test_users"}
    assert {e.split for e in episodes.user_episodes(pure, judgments, config)} == {"train"}


def _cut(config: JobConfig, judgments: list[Judgment], users: list[Persona], duplicates=None):
    counters: Counter[str] = Counter()
    table = episodes.episode_table(
        to_table(users, Persona), to_table(judgments, Judgment), config, counters, duplicates
    )
    return list(RecordTable(table, Episode)), counters


@pytest.mark.parametrize("seed", range(20))
def test_no_query_question_is_among_its_own_shots(seed):
    """Property: over random users, questions, shots, splits and repeats."""
    rng = random.Random(seed)
    shots = rng.randint(1, 5)
    config = JobConfig(
        run_dir="x",
        seed=seed,
        counts={"shots": {"roleplay": shots}},
        splits={"test_user_fraction": rng.random() / 2, "test_question_fraction": rng.random() / 2},
        episodes={"repeats": rng.randint(1, 3)},
    )
    users = [_persona(f"u{u}") for u in range(rng.randint(1, 6))]
    judgments = [
        _judgment(p.persona_uuid, i, f"q{rng.randrange(rng.randint(1, 8))}", rng.random() < 0.9)
        for p in users
        for i in range(rng.randint(0, 30))
    ]
    result, counters = _cut(config, judgments, users)
    for e in result:
        assert e.query_question not in {s.question for s in e.shots}
        assert len(e.shots) == shots
    assert len({e.episode_uuid for e in result}) == len(result)
    assert counters["windows_skipped_query_in_shots"] >= 0


def test_a_window_whose_last_question_repeats_takes_another_query_or_is_skipped():
    config = JobConfig(
        run_dir="x",
        counts={"shots": {"roleplay": 2}},
        splits={"test_user_fraction": 0, "test_question_fraction": 0},
    )
    questions = np.array([0, 1, 1, 2, 2, 2])
    windows = np.array([[0, 1, 2], [1, 3, 0], [3, 4, 5]])
    # Pair 2 shares q1 with pair 1, so pair 0 is the query; then the last pair, as before;
    # then no pair's question is alone.
    assert episodes.window_queries(windows, questions).tolist() == [0, 2, -1]
    # One user, one question: no window can be formed, and each is counted.
    judgments = [_judgment("u", i, "q") for i in range(6)]
    result, counters = _cut(config, judgments, [_persona("u")])
    assert result == []
    assert counters["windows_skipped_query_in_shots"] == 2


def test_repeats_add_reshuffled_passes_without_duplicate_episodes():
    base = {"run_dir": "x", "counts": {"shots": {"roleplay": 2}}}
    base["splits"] = {"test_user_fraction": 0, "test_question_fraction": 0.3}
    judgments = [_judgment("u", i, f"q{i}") for i in range(12)]
    once, _ = _cut(JobConfig(**base), judgments, [_persona("u")])
    thrice, counters = _cut(JobConfig(**base, episodes={"repeats": 3}), judgments, [_persona("u")])
    # The first pass is the episodes a single pass cuts; held-out queries are cut once.
    assert [e for e in thrice if e.episode_uuid in {o.episode_uuid for o in once}] == once
    assert [e for e in thrice if e.split != "train"] == [e for e in once if e.split != "train"]
    assert len([e for e in thrice if e.split == "train"]) > len(
        [e for e in once if e.split == "train"]
    )
    assert len({e.episode_uuid for e in thrice}) == len(thrice)
    # Two pairs, one shot: every pass cuts one of two possible episodes, so repeats collide.
    two = [_judgment("v", i, f"q{i}") for i in range(2)]
    config = JobConfig(
        run_dir="x",
        counts={"shots": {"roleplay": 1}},
        splits={"test_user_fraction": 0, "test_question_fraction": 0},
        episodes={"repeats": 8},
    )
    result, counters = _cut(config, two, [_persona("v")])
    assert 1 <= len(result) <= 2 and len({e.episode_uuid for e in result}) == len(result)
    assert counters["repeat_duplicates_dropped"] == 8 - len(result)


def test_users_flagged_as_duplicates_of_an_earlier_user_get_no_episodes():
    config = JobConfig(
        run_dir="x",
        counts={"shots": {"roleplay": 2}},
        splits={"test_user_fraction": 0, "test_question_fraction": 0},
    )
    users = [_persona("u"), _persona("v")]
    judgments = [_judgment(p.persona_uuid, i, f"q{i}") for p in users for i in range(6)]
    flags = to_table(
        [PersonaDuplicate(persona_uuid="v", domain="roleplay", duplicate_of="u", reason="minhash")],
        PersonaDuplicate,
    )
    result, counters = _cut(config, judgments, users, flags)
    assert {e.persona_uuid for e in result} == {"u"}
    assert counters["users_skipped_duplicate_persona"] == 1
