"""One-letter calls as columns (core/batch.py): the same requests, answers and counters as
call by call."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from fspo_data import judging
from fspo_data.backends.instant import InstantBenchmarkDouble
from fspo_data.core.batch import (
    LetterBackend,
    PromptBatch,
    answer_letters,
    complete_letters,
    letters_of,
)
from fspo_data.core.chat import ChatMessage, ChatRequest, Completion, complete_all
from fspo_data.core.config import JudgeConfig
from fspo_data.core.model_config import ModelConfig
from fspo_data.pipeline.tally import CallTally, ModelUnavailable
from tests.conftest import ScriptedBackend

INSTANT = ModelConfig(backend="instant-benchmark-double")


def pairs(n: int = 40) -> list[judging.PairToJudge]:
    rng = random.Random(1)
    drawn = [
        judging.PairToJudge(
            f"user {rng.randrange(5)}", f"q{q}?", f"x{q}", f"y{q}", seed=rng.randrange(2**31 - 1)
        )
        for q in rng.choices(range(12), k=n)
    ]
    return drawn + [drawn[0]]  # the same prompt twice: ties keep their order


def sorted_requests(items: list[judging.PairToJudge], settings: JudgeConfig) -> list[ChatRequest]:
    """The requests as judge_both_orders built them one by one before the batch type: every
    prompt rendered, sorted by its texts."""
    prompts = [
        (judging.judge_messages(settings.layout, p.persona, p.question, a, b), p.seed)
        for p in items
        for a, b in ((p.x, p.y), (p.y, p.x))
    ]
    prompts.sort(key=lambda prompt: tuple(m.content for m in prompt[0]))
    return requests_of(prompts, settings)


def requests_of(
    prompts: list[tuple[list[ChatMessage], int]], settings: JudgeConfig
) -> list[ChatRequest]:
    """One greedy call per prompt, or k samples."""
    if settings.samples_per_order == 1:
        return [
            ChatRequest(messages, 1, 0.0, seed, top_logprobs=settings.top_logprobs)
            for messages, seed in prompts
        ]
    return [
        ChatRequest(messages, 1, settings.sample_temperature, seed + k)
        for messages, seed in prompts
        for k in range(settings.samples_per_order)
    ]


@pytest.mark.parametrize("layout", judging.LAYOUTS)
@pytest.mark.parametrize("samples", [1, 3])
def test_a_judge_batch_holds_the_requests_made_one_by_one(layout, samples):
    settings = JudgeConfig(layout=layout, samples_per_order=samples, sample_temperature=0.7)
    batch, order = judging.judge_batch(pairs(), settings)
    assert batch.requests() == sorted_requests(pairs(), settings)
    one = pairs()[0]
    messages = judging.judge_messages(settings.layout, *one[:4])
    assert judging.judge_requests(*one[:4], settings, one.seed) == requests_of(
        [(messages, one.seed)], settings
    )
    assert sorted(order.tolist()) == list(range(2 * len(pairs())))
    # Each message is held once, however many prompts read it.
    assert len(batch.messages) == len({(m.role, m.content) for m in batch.messages})


@pytest.mark.parametrize("model", ["", "other-model"])
@pytest.mark.parametrize("settings", [JudgeConfig(), JudgeConfig(samples_per_order=3)])
def test_the_instant_double_answers_a_batch_as_it_answers_call_by_call(model, settings):
    config = INSTANT.model_copy(update={"model": model}) if model else INSTANT
    batch, _ = judging.judge_batch(pairs(), settings)
    at_once, by_call = InstantBenchmarkDouble(config), InstantBenchmarkDouble(config)
    assert isinstance(at_once, LetterBackend)
    letters = at_once.complete_letters(batch)
    expected = letters_of(by_call.complete(batch.requests()))
    np.testing.assert_array_equal(letters.margins, expected.margins)
    np.testing.assert_array_equal(letters.votes, expected.votes)
    assert letters.usage == expected.usage and letters.failures == expected.failures == {}
    assert at_once.stats().requests == by_call.stats().requests == len(batch)
    assert at_once.stats().completion_tokens == by_call.stats().completion_tokens


def test_letters_read_logprobs_votes_and_failures_in_call_order():
    completions = [
        Completion(text="A", first_token_logprobs={"A": -0.5, "B": -2.0}, completion_tokens=1),
        Completion(text=" B.", first_token_logprobs={"A": -0.5, "The": -3.0}, retries=2),
        Completion(text="The", first_token_logprobs={"The": -0.1}, prompt_tokens=7),
        Completion(failure="bad_output", error="cut", text="A"),
        Completion(failure="refused", error="http 400"),
    ]
    letters = letters_of(completions)
    np.testing.assert_array_equal(letters.margins, [1.5, 2.5, math.nan, math.nan, math.nan])
    assert letters.votes.tolist() == [1, -1, 0, 0, 0]
    assert letters.failures == {3: ("bad_output", "cut"), 4: ("refused", "http 400")}
    assert (letters.usage.failed, letters.usage.retries, letters.usage.prompt_tokens) == (2, 2, 7)


def test_vote_margins_are_vote_margin_row_by_row():
    votes = np.array([[1, 1, -1], [0, 0, 0], [-1, -1, -1], [1, 0, -1]], dtype=np.int8)
    expected = [
        judging.vote_margin([Completion(text={1: "A", -1: "B", 0: "?"}[v]) for v in row])
        for row in votes.tolist()
    ]
    got = judging.vote_margins(votes)
    assert [None if math.isnan(m) else m for m in got.tolist()] == expected


def script(request: ChatRequest) -> Completion:
    if "user 1" in request.messages[0].content:
        return Completion(failure="refused", error="http 400: refused", retries=1)
    return Completion(text="B", first_token_logprobs={"A": -3.0, "B": -0.5}, prompt_tokens=9)


def test_a_batch_counts_what_its_calls_counted():
    batch, _ = judging.judge_batch(pairs(), JudgeConfig())
    by_batch, by_call = Counter[str](), Counter[str]()
    letters = complete_letters(ScriptedBackend(script), batch, by_batch, "judge")
    complete_all(ScriptedBackend(script), batch.requests(), by_call, "judge")
    by_batch.pop("engine_ms"), by_call.pop("engine_ms")
    for counters in (by_batch, by_call):
        counters.pop("model/scripted/engine_ms")
    assert by_batch == by_call and by_batch["judge_failed_refused"] == len(letters.failures) > 0


def test_the_tally_stops_a_batch_that_met_an_outage():
    def down(request: ChatRequest) -> Completion:
        return Completion(failure="unavailable", error="connection refused")

    batch = PromptBatch(
        [ChatMessage("user", "hi")], np.zeros((2, 1), np.int64), np.arange(2), 1, 0.0
    )
    tally = CallTally(ScriptedBackend(script))
    assert answer_letters(tally, batch).votes.tolist() == [-1, -1] and tally.calls == 2
    with pytest.raises(ModelUnavailable, match="2 of 2 model calls .*connection refused"):
        answer_letters(CallTally(ScriptedBackend(down)), batch)
