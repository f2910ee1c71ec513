"""`instant-benchmark-double`: a backend that answers at once with seeded, well-formed output.

It exists to measure and test everything around the engine (Ray dispatch, reconciliation,
refinement, episodes, writes, resume) at a million records without a model. It is never
a default: a config must name it, and the run summary shows its name as the model.
"""

from __future__ import annotations

import hashlib
import time
import zlib

import numpy as np

from fspo_data.core.batch import Letters, PromptBatch, letters_of
from fspo_data.core.chat import BackendStats, ChatRequest, Completion, Usage
from fspo_data.core.model_config import EMBEDDED_MODEL, ModelConfig

NAME = "instant-benchmark-double"
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, odd
_MASK = 2**64 - 1


def _digest(request: ChatRequest, salt: str = "") -> bytes:
    """What a generated text is made from: its tags must differ from request to request, and
    generating stages make one call per record they write, not 3.3 per judged pair."""
    text = "\x1f".join(m.content for m in request.messages) + f"\x1f{request.seed}" + salt
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _cut(text: str, natural_tokens: int, max_tokens: int) -> Completion:
    """`text` as a model would return it if it wanted `natural_tokens` and got `max_tokens`:
    whole, or its first share of characters with finish_reason 'length'."""
    if natural_tokens <= max_tokens:
        return Completion(text=text, completion_tokens=natural_tokens, finish_reason="stop")
    kept = len(text) * max_tokens // natural_tokens
    return Completion(text=text[:kept], completion_tokens=max_tokens, finish_reason="length")


# Seeded margins in [-2, 2] nats around a +1 nat bias towards slot A, one per hash byte.
_MARGINS = [1.0 + (byte - 127.5) / 64.0 for byte in range(256)]
_MARGIN_ARRAY = np.array(_MARGINS)


def _letters(requests: list[ChatRequest], salt: str = "") -> list[Completion]:
    """One-letter answers (a judge's): seeded letter log-probabilities, or a sampled letter.

    Each comes from a 64-bit hash of the request's seed and the CRC-32 of each message. The
    double stands for an engine that runs on a GPU, so its own CPU must not weigh on the
    judge's figures (README, "Measured: everything around the engine"): a blake2b digest of
    each whole 1.2 kB prompt cost more than the rest of the double. A message many prompts
    share (a user's description, a pair in one order) is read once per batch, as an engine's
    prefix cache computes a shared prefix once. The hash still tells apart the two orders of
    a pair (same seed, swapped responses) and a refined description.
    """
    crc_of: dict[str, int] = {}
    completions = []
    salted = zlib.crc32(salt.encode()) if salt else 0
    for request in requests:
        hashed = request.seed ^ salted
        for message in request.messages:
            crc = crc_of.get(message.content)
            if crc is None:
                crc = crc_of[message.content] = zlib.crc32(message.content.encode())
            # Multiplying by an odd constant after each message spreads bits and keeps order.
            hashed = ((hashed ^ crc) * _GOLDEN) & _MASK
        if request.top_logprobs:
            margin = _MARGINS[hashed >> 56]
            completion = Completion(
                text="A" if margin > 0 else "B",
                completion_tokens=1,
                first_token_logprobs={"A": 0.0, "B": -margin, "The": -5.0},
            )
        else:
            completion = Completion(text="AB"[(hashed >> 48) & 1], completion_tokens=1)
        completions.append(completion)
    return completions


def _letter_batch(batch: PromptBatch, salt: str = "") -> Letters:
    """`_letters` of a whole batch at once: the same hash, over arrays (uint64 products wrap
    modulo 2^64 as the masked ones do), each distinct message's CRC-32 taken once."""
    crcs = np.array([zlib.crc32(m.content.encode()) for m in batch.messages], dtype=np.uint64)
    hashed = batch.seeds.astype(np.uint64) ^ np.uint64(zlib.crc32(salt.encode()) if salt else 0)
    with np.errstate(over="ignore"):
        for column in batch.prompts.T:
            hashed = (hashed ^ crcs[column]) * np.uint64(_GOLDEN)
    n = len(batch)
    if batch.top_logprobs:
        # Logprobs A 0.0, B -margin (and "The" -5.0): logp(A) - logp(B) is the margin, and
        # the text is the likelier letter.
        margins = _MARGIN_ARRAY[(hashed >> np.uint64(56)).astype(np.intp)]
        votes = np.where(margins > 0, 1, -1).astype(np.int8)
    else:
        margins = np.full(n, np.nan)
        votes = np.where((hashed >> np.uint64(48)) & np.uint64(1), -1, 1).astype(np.int8)
    return Letters(margins=margins, votes=votes, usage=Usage(completion_tokens=n))


class InstantBenchmarkDouble:
    """Judge requests get seeded letter log-probabilities; others get a text that every
    stage's parser accepts (a question line, then two more lines usable as views)."""

    def __init__(self, model: ModelConfig) -> None:
        self.model_name = NAME
        self._stats = BackendStats()
        self._simulate_truncation = model.simulate_truncation
        # Doubles standing for two models of a job (tests of model roles) must answer
        # differently; the default model name keeps every one-model output as it was.
        self._salt = "" if model.model == EMBEDDED_MODEL else f"\x1f{model.model}"

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        started = time.perf_counter()
        letters = [r.top_logprobs > 0 or r.max_tokens == 1 for r in requests]
        if all(letters):
            completions = _letters(requests, self._salt)
        else:
            answers = iter(
                _letters(
                    [r for r, letter in zip(requests, letters, strict=True) if letter], self._salt
                )
            )
            completions = [
                next(answers) if letter else self._answer(r)
                for r, letter in zip(requests, letters, strict=True)
            ]
        # What `BackendStats.add` counts, less what the double never has (failures, retries,
        # prompt tokens): its one pass over the completions cost as much as a CRC.
        self._stats.requests += len(completions)
        self._stats.completion_tokens += sum(c.completion_tokens for c in completions)
        self._stats.generate_seconds += time.perf_counter() - started
        return completions

    def complete_letters(self, batch: PromptBatch) -> Letters:
        """What `complete` answers for `batch.requests()`, computed as arrays."""
        if not (batch.top_logprobs > 0 or batch.max_tokens == 1):
            return letters_of(self.complete(batch.requests()))
        started = time.perf_counter()
        letters = _letter_batch(batch, self._salt)
        self._stats.requests += len(batch)
        self._stats.completion_tokens += len(batch)
        self._stats.generate_seconds += time.perf_counter() - started
        return letters

    def _answer(self, request: ChatRequest) -> Completion:
        digest = _digest(request, self._salt)
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
