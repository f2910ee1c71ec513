"""One-letter calls (a judge's) as columns: a batch of prompts in, a column of letters out.

A judge pass makes millions of calls whose prompts are a few thousand distinct messages
recombined (a user's description, a pair in one order), each answered with one letter. As
`ChatRequest`s and `Completion`s that is two objects per call, which cost more than the rest
of the judge's work around the engine (README, "Measured: everything around the engine").
`PromptBatch` holds the distinct messages once and each prompt as a row of indices into them;
`Letters` holds what each call answered as arrays. A backend that can answer a whole batch
at once (the instant double) implements `LetterBackend`; every other backend is asked
through `complete`, one `ChatRequest` per call as before (`answer_letters`), so every
backend and wrapper that implements `LLMBackend` still works, with the same requests.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from fspo_data.core.chat import (
    ChatMessage,
    ChatRequest,
    Completion,
    Failure,
    LLMBackend,
    Usage,
    count_calls,
    usage,
)


@dataclass(frozen=True)
class PromptBatch:
    """(n,) calls with the same sampling values: call i's messages are
    `[messages[j] for j in prompts[i]]` and its seed `seeds[i]`."""

    messages: list[ChatMessage]  # distinct messages, shared by the prompts that hold them
    prompts: np.ndarray  # (n, m) int64 indices into `messages`
    seeds: np.ndarray  # (n,) int64
    max_tokens: int
    temperature: float
    top_p: float = 1.0
    top_logprobs: int = 0

    def __len__(self) -> int:
        return len(self.seeds)

    def requests(self) -> list[ChatRequest]:
        """The batch as one `ChatRequest` per call, for backends that answer call by call."""
        messages = self.messages
        return [
            ChatRequest(
                [messages[j] for j in row],
                self.max_tokens,
                self.temperature,
                seed,
                top_p=self.top_p,
                top_logprobs=self.top_logprobs,
            )
            for row, seed in zip(self.prompts.tolist(), self.seeds.tolist(), strict=True)
        ]


@dataclass
class Letters:
    """(n,) what each call of a batch answered, in call order.

    margins: logp("A") - logp("B") of the first token (`letter_margin`), NaN where neither
    letter is among the returned alternatives or the call failed; votes: +1 where the text
    starts with "A", -1 with "B", 0 otherwise or failed (`vote_margin`'s reading);
    failures: call -> (kind, error) for the calls that failed, in call order; usage: what the
    calls used, summed.
    """

    margins: np.ndarray
    votes: np.ndarray
    usage: Usage
    failures: dict[int, tuple[Failure, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.margins)


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


def letter_vote(completion: Completion) -> int:
    """+1 for an answer starting with "A", -1 with "B", 0 otherwise or failed."""
    if not completion.ok:
        return 0
    first = completion.text.strip()[:1]
    return 1 if first == "A" else -1 if first == "B" else 0


def letters_of(completions: list[Completion]) -> Letters:
    """The `Letters` of a batch answered call by call."""
    margins = [letter_margin(c) for c in completions]
    return Letters(
        margins=np.array([math.nan if m is None else m for m in margins], dtype=float),
        votes=np.array([letter_vote(c) for c in completions], dtype=np.int8),
        usage=usage(completions),
        failures={i: (c.failure, c.error) for i, c in enumerate(completions) if c.failure},
    )


@runtime_checkable
class LetterBackend(Protocol):
    """A backend that answers a whole batch of one-letter calls at once, with the letters it
    would give call by call through `complete` (the same requests)."""

    def complete_letters(self, batch: PromptBatch) -> Letters: ...


def answer_letters(backend: LLMBackend, batch: PromptBatch) -> Letters:
    """`backend`'s letters for `batch`: at once where it can, else through `complete`."""
    if isinstance(backend, LetterBackend):
        return backend.complete_letters(batch)
    return letters_of(backend.complete(batch.requests()))


def complete_letters(
    backend: LLMBackend, batch: PromptBatch, counters: Counter[str], what: str
) -> Letters:
    """`complete_all` for a batch of one-letter calls: the same counters, per model too."""
    started = time.perf_counter()
    letters = answer_letters(backend, batch)
    engine_ms = round((time.perf_counter() - started) * 1000)
    failures = Counter(kind for kind, _ in letters.failures.values())
    count_calls(counters, backend.model_name, what, len(batch), letters.usage, failures, engine_ms)
    return letters
