"""Both-order judging: the judge prompt, one letter read from log-probabilities, verdicts,
label entropy, and the preferences refinement states.

The judge stage and the trainer's evaluation judge both ask through here, so a pair is
judged the same way wherever it is judged. For a pair (x, y):
    margin_first  = logp(A) - logp(B) with x in slot A   (> 0 prefers x)
    margin_second = logp(A) - logp(B) with y in slot A   (> 0 prefers y)
A judge with a constant position bias b and a true preference s for x gives
margin_first = s + b and margin_second = -s + b, so (margin_first - margin_second) / 2 = s
(the debiased margin) and (margin_first + margin_second) / 2 = b (the position bias).

The prompt has two layouts (`LAYOUTS`, `stages.judge.layout`): the user first or the pair
first. Whichever it is, the requests go to the engine sorted by their text, so the calls that
share a prefix run together and the engine's prefix cache computes it once.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from operator import itemgetter
from string import Formatter
from typing import Literal, NamedTuple

import numpy as np
import polars as pl

from fspo_data.core.chat import ChatMessage, ChatRequest, Completion, LLMBackend, complete_all
from fspo_data.core.config import JudgeConfig
from fspo_data.domains import DomainSpec
from fspo_data.prompts import render


@dataclass(frozen=True)
class Verdict:
    kept: bool
    drop_reason: str
    prefers_x: bool
    debiased_margin: float


@dataclass(frozen=True)
class JudgeLayout:
    """A judge prompt layout (`stages.judge.layout`): its template, and which calls share a
    prompt prefix under it: the calls of one `shared_by` ('user': one description;
    'pair_order': one pair in one order), whose prompts differ only in the `varying` values.
    """

    template: str
    shared_by: Literal["user", "pair_order"]
    varying: tuple[str, ...]


LAYOUTS: dict[str, JudgeLayout] = {
    "persona_first": JudgeLayout("judge", "user", ("question", "response_a", "response_b")),
    "pair_first": JudgeLayout("judge_pair_first", "pair_order", ("persona",)),
}


JUDGE_VALUES = ("persona", "question", "response_a", "response_b")


@cache
def _judge_formats(layout: str) -> tuple[tuple[str, str], ...]:
    """The layout's template as (role, `str.format` string) per message, its fields the
    positions of `JUDGE_VALUES`.

    Rendered once with marker values, then cut at the markers: filling a format string gives
    the bytes `render` gives (values are never rescanned) at a fraction of the cost, which
    matters at millions of prompts.
    """
    template = LAYOUTS[layout].template
    marked = render(template, **{name: f"\x00{name}\x00" for name in JUDGE_VALUES})
    if [m.role for m in marked] != ["system", "user"]:
        raise ValueError(f"prompts/{template}.txt: expected a [system] and a [user] section")
    formats = []
    for message in marked:
        pieces = message.content.split("\x00")
        fmt = "".join(
            f"{{{JUDGE_VALUES.index(piece)}}}"
            if i % 2
            else piece.replace("{", "{{").replace("}", "}}")
            for i, piece in enumerate(pieces)
        )
        formats.append((message.role, fmt))
    return tuple(formats)


def judge_messages(
    layout: str, persona: str, question: str, response_a: str, response_b: str
) -> list[ChatMessage]:
    """The judge prompt of `layout` for one order."""
    return [
        ChatMessage(role=role, content=fmt.format(persona, question, response_a, response_b))
        for role, fmt in _judge_formats(layout)
    ]


def shared_prefix(layout: str, values: dict[str, str]) -> str:
    """The start of the prompt of `values` (persona, question, response_a, response_b) that
    every prompt of its cache group shares, its messages joined by newlines: what the engine
    computes once per group. Found by rendering it again with the layout's `varying` values
    changed."""
    varied = {
        name: "\x01" * len(value) if name in LAYOUTS[layout].varying else value
        for name, value in values.items()
    }
    prompts = ["\n".join(m.content for m in judge_messages(layout, **v)) for v in (values, varied)]
    return os.path.commonprefix(prompts)


def cache_groups(layout: str, users: int, pairs_per_user: int, pool: int) -> float:
    """Expected cache groups of `layout` (distinct shared prefixes) in one pass over a shard of
    `users` = U users who each draw `pairs_per_user` = k of the `pool` = P pairs: U for groups
    by user; for groups by pair-order, both orders of each distinct pair drawn,
        2 D(U),  D(U) = P (1 - (1 - k/P)^U),
    since a given pair is among a user's k of P with probability k/P, independently over users.
    """
    if LAYOUTS[layout].shared_by == "user":
        return float(users)
    return 2 * pool * (1 - (1 - pairs_per_user / pool) ** users)


def order_requests(
    prompts: Sequence[list[ChatMessage]], settings: JudgeConfig, seeds: Sequence[int]
) -> list[ChatRequest]:
    """The requests for each prompt (one order of a pair) in turn: one greedy call each, or k
    samples each for a majority vote."""
    if settings.samples_per_order == 1:
        top_logprobs = settings.top_logprobs
        return [
            ChatRequest(messages, 1, 0.0, seed, top_logprobs=top_logprobs)
            for messages, seed in zip(prompts, seeds, strict=True)
        ]
    return [
        ChatRequest(messages, 1, settings.sample_temperature, seed + k)
        for messages, seed in zip(prompts, seeds, strict=True)
        for k in range(settings.samples_per_order)
    ]


def judge_requests(
    description: str, question: str, first: str, second: str, settings: JudgeConfig, seed: int
) -> list[ChatRequest]:
    """The requests for one order, `first` in slot A."""
    messages = judge_messages(settings.layout, description, question, first, second)
    return order_requests([messages], settings, [seed])


class PairToJudge(NamedTuple):
    """One user's pair (x, y) of answers to a question, judged in both orders with `seed`.
    A tuple: the judge makes one per judged pair and pass."""

    persona: str
    question: str
    x: str
    y: str
    seed: int


def judge_both_orders(
    backend: LLMBackend,
    pairs: Sequence[PairToJudge],
    settings: JudgeConfig,
    counters: Counter[str],
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(j,) margin_first (x in slot A) and (j,) margin_second (y in slot A) of j pairs, in
    the order given; NaN where an order gave no letter.

    The requests reach the backend sorted by their text, whatever order the pairs come in:
    sorted prompts walk their prefix tree, so all prompts that share a prefix are contiguous
    and the prefix is computed once, then served from the engine's cache while every prompt
    that shares it runs, even when the engine cuts the requests into batches. With
    persona_first that groups a user's calls; with pair_first, a pair-order's calls over
    users (and a question's pairs together). Each completion is matched back to its pair and
    order by position.
    """
    values = [
        v
        for p in pairs
        for v in ((p.persona, p.question, p.x, p.y), (p.persona, p.question, p.y, p.x))
    ]
    system, user = (
        _message_column(role, fmt, values) for role, fmt in _judge_formats(settings.layout)
    )
    texts = [(s.content, u.content) for s, u in zip(system, user, strict=True)]
    order = sorted(range(len(texts)), key=texts.__getitem__)
    prompts = [[system[prompt], user[prompt]] for prompt in order]
    requests = order_requests(prompts, settings, [pairs[prompt // 2].seed for prompt in order])
    completions = complete_all(backend, requests, counters, what)
    k = settings.samples_per_order
    margins = np.full(len(values), math.nan)
    if k == 1:
        read = [letter_margin(c) for c in completions]
    else:
        read = [vote_margin(completions[i : i + k]) for i in range(0, len(completions), k)]
    # None (no letter read) becomes NaN.
    margins[order] = np.array(read, dtype=float)
    return margins[0::2].copy(), margins[1::2].copy()


def _message_column(
    role: str, fmt: str, values: list[tuple[str, str, str, str]]
) -> list[ChatMessage]:
    """One message of every prompt, formatted once per distinct value of the fields it reads:
    those repeat over prompts (a user's description in all of the user's prompts, a pair in
    one order in the prompts of every user who drew it), and formatting each prompt anew was
    the judge's largest cost. Prompts whose message reads the same values share one
    `ChatMessage` (frozen)."""
    fields = _format_fields(fmt)
    key_of = itemgetter(*fields) if fields else lambda _: ()
    message_of: dict[object, ChatMessage] = {}
    column = []
    for value in values:
        key = key_of(value)
        message = message_of.get(key)
        if message is None:
            message = message_of[key] = ChatMessage(role, fmt.format(*value))
        column.append(message)
    return column


@cache
def _format_fields(fmt: str) -> tuple[int, ...]:
    """The positions of `JUDGE_VALUES` a message's format string reads."""
    return tuple(sorted({int(name) for _, name, _, _ in Formatter().parse(fmt) if name}))


def vote_margin(completions: list[Completion]) -> float | None:
    """Smoothed log-odds of sampled "A" vs "B" votes: log((n_A + 1/2) / (n_B + 1/2)).

    For k samples per order (judges whose log-probabilities are not trusted or not given);
    the sign is the majority verdict. None if no sample voted for a letter.
    """
    votes = [c.text.strip()[:1] for c in completions if c.ok]
    n_a, n_b = votes.count("A"), votes.count("B")
    if n_a + n_b == 0:
        return None
    return math.log((n_a + 0.5) / (n_b + 0.5))


def verdict_entropy(debiased_margin: pl.Expr) -> pl.Expr:
    """Binary entropy (nats) of p = sigmoid(margin): the judge's uncertainty about a label.

    0 for a certain label, ln 2 for a coin flip (margin 0). Written as
    H = log1p(exp(-a)) + a * sigmoid(-a) with a = |margin|, the same value as
    -(p log p + (1 - p) log(1 - p)) without its 0 * log 0 once p rounds to 1 (a > ~37).
    """
    a = debiased_margin.abs()
    tail = (-a).exp()
    return tail.log1p() + a * tail / (1 + tail)


def letter_margin(completion: Completion) -> float | None:
    """logp("A") - logp("B") of the first token; None if neither letter is among the top-k.

    A letter missing from the top-k is given the smallest listed log-probability, an upper
    bound on its true value, so the margin is conservative.
    """
    logprobs = completion.first_token_logprobs
    a, b = logprobs.get("A"), logprobs.get("B")
    if not completion.ok or (a is None and b is None):
        return None
    if a is None or b is None:
        floor = min(logprobs.values())
        a, b = floor if a is None else a, floor if b is None else b
    return a - b


@dataclass(frozen=True)
class Verdicts:
    """(j,) arrays: one verdict per pair; `drop_reason` is "" for kept pairs, "no_verdict"
    where an order gave no letter (NaN margin)."""

    kept: np.ndarray
    drop_reason: np.ndarray
    prefers_x: np.ndarray
    debiased_margin: np.ndarray


def reconcile_all(first: np.ndarray, second: np.ndarray, settings: JudgeConfig) -> Verdicts:
    """Combine the two orders' (j,) margins into (j,) verdicts about x vs y (module docstring).

    strict: kept when both orders name the same response (a zero margin names none);
    calibrated: kept when |debiased margin| >= min_margin.
    """
    debiased = (first - second) / 2
    prefers_x = debiased > 0
    if settings.mode == "strict":
        first_says_x, second_says_x = first > 0, second < 0
        kept = (first != 0) & (second != 0) & (first_says_x == second_says_x)
        prefers_x = np.where(kept, first_says_x, prefers_x)
        reason = "order_flip"
    else:
        kept = ~(np.abs(debiased) < settings.min_margin)
        reason = "low_margin"
    has_verdict = ~np.isnan(debiased)
    kept &= has_verdict
    drop_reason = np.where(kept, "", np.where(has_verdict, reason, "no_verdict"))
    return Verdicts(kept, drop_reason, prefers_x, debiased)


def reconcile(margin_first: float, margin_second: float, settings: JudgeConfig) -> Verdict:
    """`reconcile_all` for one pair."""
    v = reconcile_all(np.array([margin_first]), np.array([margin_second]), settings)
    return Verdict(
        bool(v.kept[0]), str(v.drop_reason[0]), bool(v.prefers_x[0]), float(v.debiased_margin[0])
    )


def position_stats(
    margins_first: list[float], margins_second: list[float]
) -> dict[str, float | None]:
    """How often slot A wins across single-order verdicts, and the mean bias b in nats."""
    both = np.array(margins_first + margins_second, dtype=float)
    if both.size == 0:
        return {"first_slot_win_rate": None, "position_bias_nats": None}
    bias = (np.array(margins_first) + np.array(margins_second)) / 2
    return {
        "first_slot_win_rate": float((both > 0).mean()),
        "position_bias_nats": float(bias.mean()),
    }


def choose_stated_preferences(
    description: str,
    unsettled: list[tuple[str, str, float]],
    domain: DomainSpec,
    limit: int,
) -> list[str]:
    """Statements that settle up to `limit` unsettled pairs, given as (view_x, view_y, margin).

    The preference follows the judge's own leaning (the sign of the debiased margin, x on a
    tie), so refinement sharpens what the description already implies. A statement whose
    reverse is already stated is skipped: it would make the description contradict itself.
    """
    chosen: list[str] = []
    for view_x, view_y, margin in unsettled:
        if view_x == view_y:
            continue
        better, worse = (view_x, view_y) if margin >= 0 else (view_y, view_x)
        statement = domain.state_preference(better, worse)
        reverse = domain.state_preference(worse, better)
        stated = description + "\n" + "\n".join(chosen)
        if statement in stated or reverse in stated:
            continue
        chosen.append(statement)
        if len(chosen) == limit:
            break
    return chosen
