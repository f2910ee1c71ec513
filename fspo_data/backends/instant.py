"""`instant-benchmark-double`: a backend that answers at once with seeded, well-formed output.

It exists to measure and test everything around the engine (Ray dispatch, reconciliation,
refinement, episodes, writes, resume) at a million records without a model. It is never
a default: a config must name it, and the run summary shows its name as the model.
"""

from __future__ import annotations

import hashlib
import time

from fspo_data.core.chat import BackendStats, ChatRequest, Completion
from fspo_data.core.model_config import EMBEDDED_MODEL, ModelConfig

NAME = "instant-benchmark-double"


def _digest(request: ChatRequest, salt: str = "") -> bytes:
    text = "\x1f".join(m.content for m in request.messages) + f"\x1f{request.seed}" + salt
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _cut(text: str, natural_tokens: int, max_tokens: int) -> Completion:
    """`text` as a model would return it if it wanted `natural_tokens` and got `max_tokens`:
    whole, or its first share of characters with finish_reason 'length'."""
    if natural_tokens <= max_tokens:
        return Completion(text=text, completion_tokens=natural_tokens, finish_reason="stop")
    kept = len(text) * max_tokens // natural_tokens
    return Completion(text=text[:kept], completion_tokens=max_tokens, finish_reason="length")


class InstantBenchmarkDouble:
    """Judge requests get seeded letter log-probabilities; others get a text that every
    stage's parser accepts (a question line, then two more lines usable as views)."""

    def __init__(self, model: ModelConfig) -> None:
        self.model_name = NAME
        self._stats = BackendStats()
        self._simulate_truncation = model.simulate_truncation
        # Doubles standing for distinct models answer differently; the default keeps its outputs.
        self._salt = "" if model.model == EMBEDDED_MODEL else f"\x1f{model.model}"

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        started = time.perf_counter()
        completions = [self._answer(r) for r in requests]
        self._stats.add(completions, time.perf_counter() - started)
        return completions

    def _answer(self, request: ChatRequest) -> Completion:
        digest = _digest(request, self._salt)
        if request.top_logprobs:
            # Seeded margins in [-2, 2] nats around a +1 nat bias towards slot A.
            margin = 1.0 + (digest[0] - 127.5) / 64.0
            return Completion(
                text="A" if margin > 0 else "B",
                completion_tokens=1,
                first_token_logprobs={"A": 0.0, "B": -margin, "The": -5.0},
            )
        if request.max_tokens == 1:
            return Completion(text="AB"[digest[1] % 2], completion_tokens=1)
        tag = digest.hex()
        text = (
            f"Which plain choice suits case {tag[:8]} best for most people?\n"
            f"View of reader {tag[8:14]}\nView of critic {tag[14:20]}\n"
            f"View of novice {tag[20:26]}"
        )
        if self._simulate_truncation:
            return _cut(text, natural_tokens=20 + digest[2] % 81, max_tokens=request.max_tokens)
        return Completion(
            text=text, completion_tokens=min(request.max_tokens, 40), finish_reason="stop"
        )

    def stats(self) -> BackendStats:
        return self._stats.model_copy()
