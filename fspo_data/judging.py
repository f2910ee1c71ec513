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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from operator import itemgetter
from string import Formatter
from typing import Literal, NamedTuple

import numpy as np
import polars as pl

from fspo_data.core.batch import PromptBatch, complete_letters, letter_vote
from fspo_data.core.chat import ChatMessage, ChatRequest, Completion, LLMBackend
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


def order_batch(
    messages: list[ChatMessage], prompts: np.ndarray, seeds: np.ndarray, settings: JudgeConfig
) -> PromptBatch:
    """The calls for each of the (p, m) `prompts` (one order of a pair each, rows of indices
    into `messages`) in turn: one greedy call each with the letters' log-probabilities, or k
    samples each (seeds seed .. seed + k - 1) for a majority vote."""
    k = settings.samples_per_order
    if k == 1:
        return PromptBatch(messages, prompts, seeds, 1, 0.0, top_logprobs=settings.top_logprobs)
    return PromptBatch(
        messages,
        np.repeat(prompts, k, axis=0),
        (seeds[:, None] + np.arange(k)).ravel(),
        1,
        settings.sample_temperature,
    )


def judge_requests(
    description: str, question: str, first: str, second: str, settings: JudgeConfig, seed: int
) -> list[ChatRequest]:
    """The requests for one order, `first` in slot A."""
    messages = judge_messages(settings.layout, description, question, first, second)
    prompt = np.arange(len(messages))[None, :]
    return order_batch(messages, prompt, np.array([seed], dtype=np.int64), settings).requests()


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
    users (and a question's pairs together). Each answer is matched back to its pair and
    order by position.
    """
    batch, order = judge_batch(pairs, settings)
    letters = complete_letters(backend, batch, counters, what)
    k = settings.samples_per_order
    margins = np.full(2 * len(pairs), math.nan)
    margins[order] = letters.margins if k == 1 else vote_margins(letters.votes.reshape(-1, k))
    return margins[0::2].copy(), margins[1::2].copy()


def judge_batch(
    pairs: Sequence[PairToJudge], settings: JudgeConfig
) -> tuple[PromptBatch, np.ndarray]:
    """The calls judging `pairs` in both orders (prompt 2i: pair i with x in slot A, 2i + 1:
    y in slot A), sorted by their text (`order_batch`'s calls of each prompt in turn), and
    (2j,) the prompt of each position in that order."""
    messages: list[ChatMessage] = []
    columns = [
        _message_column(role, fmt, pairs, messages) for role, fmt in _judge_formats(settings.layout)
    ]
    # Sorting the prompts by their texts is sorting them by their messages' ranks in text
    # order, column by column; ties (the same texts) keep the prompts' order, as `sorted`.
    rank_of = {text: rank for rank, text in enumerate(sorted({m.content for m in messages}))}
    rank = np.array([rank_of[m.content] for m in messages], dtype=np.int64)
    prompts = np.array(columns, dtype=np.int64).reshape(len(columns), 2 * len(pairs))
    order = np.lexsort((np.arange(2 * len(pairs)), *(rank[c] for c in prompts[::-1])))
    prompts = prompts.T[order]
    seeds = np.array([p.seed for p in pairs], dtype=np.int64)[order // 2]
    batch = order_batch(messages, prompts, seeds, settings)
    return batch, order


def vote_margins(votes: np.ndarray) -> np.ndarray:
    """(p,) `vote_margin` of (p, k) votes (+1 "A", -1 "B", 0 neither), NaN for no vote."""
    k = votes.shape[1]
    # Every (n_A, n_B) a row can have, through vote_log_odds: the same floats as one by one.
    table = np.array(
        [[vote_log_odds(a, b) for b in range(k + 1)] for a in range(k + 1)], dtype=float
    )
    return table[(votes == 1).sum(axis=1), (votes == -1).sum(axis=1)]


def _message_column(
    role: str, fmt: str, pairs: Sequence[PairToJudge], messages: list[ChatMessage]
) -> np.ndarray:
    """(2j,) one message of every prompt (2i: pair i with x in slot A, 2i + 1: y in slot A)
    as its index into `messages`, formatted once per distinct value of the fields it reads:
    those repeat over prompts (a user's description in all of the user's prompts, a pair in
    one order in the prompts of every user who drew it), and formatting each prompt anew was
    the judge's largest cost. Prompts whose message reads the same values share one
    `ChatMessage` (frozen), appended to `messages`; a message that reads neither response is
    the same in both orders of a pair, looked up once."""
    fields = _format_fields(fmt)
    # The same fields of the prompt with the responses swapped (PairToJudge: x at 2, y at 3).
    swapped = tuple({2: 3, 3: 2}.get(f, f) for f in fields)
    first_key = itemgetter(*fields) if fields else lambda _: ()
    second_key = itemgetter(*swapped) if fields else lambda _: ()
    index_of: dict[object, int] = {}

    def indices(key_of: Callable[[PairToJudge], object], swap: bool) -> list[int]:
        found = []
        for p in pairs:
            key = key_of(p)
            index = index_of.get(key)
            if index is None:
                index = index_of[key] = len(messages)
                text = fmt.format(p[0], p[1], p[3], p[2]) if swap else fmt.format(*p)
                messages.append(ChatMessage(role, text))
            found.append(index)
        return found

    firsts = indices(first_key, swap=False)
    seconds = firsts if swapped == fields else indices(second_key, swap=True)
    column = np.empty(2 * len(pairs), dtype=np.int64)
    column[0::2], column[1::2] = firsts, seconds
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
    votes = [letter_vote(c) for c in completions]
    return vote_log_odds(votes.count(1), votes.count(-1))


def vote_log_odds(n_a: int, n_b: int) -> float | None:
    """`vote_margin` of n_a votes for "A" and n_b for "B"."""
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
