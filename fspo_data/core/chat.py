"""The one interface every model backend implements, and the request/result types.

Stages build `ChatRequest`s, a backend turns them into `Completion`s in the same order (a
judge's one-letter calls travel as one columnar batch instead, core/batch.py, and reach a
backend without a batch path as these requests). A backend never raises for a single bad
completion: it returns a `Completion` with a `failure` kind and a reason. What happens next
depends on the kind: a call that failed because the endpoint was unavailable is never
dropped (the orchestrator leaves its shard uncommitted, pipeline/tally.py `CallTally`); a
refused request or a bad answer is dropped and counted by the stage.

The three types are slotted dataclasses, not pydantic models: a run makes one request and
one completion per call, millions of them, and validating each cost more than the rest of
the judge's work around the engine (README, "Measured: everything around the engine").
Their values come from stages and backends, never from a user's file.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One call. Its sampling values come from the job's config, which checks their ranges
    (`SamplingConfig`, `JudgeConfig`)."""

    messages: list[ChatMessage]
    max_tokens: int
    temperature: float
    seed: int  # per-request sampling seed, so a rerun reproduces the text
    top_p: float = 1.0
    top_logprobs: int = 0  # how many alternatives to return for the first token


# Why a call failed for good, for code to act on ('' when it did not fail):
# - unavailable: the endpoint or engine could not answer (connection error, timeout, 408,
#   409, 429 or 5xx after the retries): the same request may well succeed later;
# - refused: the endpoint answered the request with another 4xx (bad request, refused key);
# - bad_output: an answer came, but not a usable one (malformed after the retries, or cut at
#   max_tokens again).
Failure = Literal["", "unavailable", "refused", "bad_output"]


@dataclass(slots=True)
class Completion:
    text: str = ""
    failure: Failure = ""
    error: str = ""  # why it failed, for people (one line)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    # Decoded first-token alternatives (stripped) -> best log-probability.
    first_token_logprobs: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    # Why generation ended: 'stop' (the model finished), 'length' (cut at max_tokens), ''
    # when the backend does not say.
    finish_reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.failure

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class BackendStats(BaseModel):
    """Counters a backend accumulates; the run summary adds them up across replicas."""

    model_config = ConfigDict(extra="forbid")
    requests: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    generate_seconds: float = 0.0
    outage_retried: int = Field(
        default=0,
        description="Requests asked again after a pause because the endpoint was unavailable "
        "(openai `outage_wait_s`).",
    )
    batches: int = Field(default=0, description="Batches submitted (openai batch mode).")
    batch_retried: dict[str, int] = Field(
        default_factory=dict,
        description="Batch-mode requests retried one by one, by reason (openai_batch).",
    )

    def add(self, completions: list[Completion], seconds: float) -> None:
        totals = usage(completions)
        self.requests += len(completions)
        self.failed += totals.failed
        self.retries += totals.retries
        self.prompt_tokens += totals.prompt_tokens
        self.completion_tokens += totals.completion_tokens
        self.cached_prompt_tokens += totals.cached_prompt_tokens
        self.generate_seconds += seconds


@dataclass
class Usage:
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


def usage(completions: list[Completion]) -> Usage:
    """What a batch of completions used and how many failed, in one pass over it."""
    totals = Usage()
    for c in completions:
        totals.failed += not c.ok
        totals.retries += c.retries
        totals.prompt_tokens += c.prompt_tokens
        totals.completion_tokens += c.completion_tokens
        totals.cached_prompt_tokens += c.cached_prompt_tokens
    return totals


class LLMBackend(Protocol):
    """What stages need from a model: batched chat completions, in request order."""

    model_name: str

    def complete(self, requests: list[ChatRequest]) -> list[Completion]: ...

    def stats(self) -> BackendStats: ...


# Per-model counters, beside a shard's totals: `model/<name>/<field>`. A name may hold '/'
# (a Hugging Face repo id), the field never does.
def model_counter(name: str, field: str) -> str:
    return f"model/{name}/{field}"


def counters_by_model(counters: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """`model/<name>/<field>` counters as {name: {field: n}}; {} for a shard written before
    models had counters of their own."""
    by_model: dict[str, dict[str, int]] = {}
    for key, n in counters.items():
        if key.startswith("model/"):
            name, _, field = key[len("model/") :].rpartition("/")
            by_model.setdefault(name, {})[field] = by_model.get(name, {}).get(field, 0) + n
    return by_model


def complete_all(
    backend: LLMBackend, requests: list[ChatRequest], counters: Counter[str], what: str
) -> list[Completion]:
    """Run a batch and count failures under `{what}_failed`, and by kind under
    `{what}_failed_{failure}`; callers skip the items that are not `ok`.

    `engine_ms` is the time spent inside the backend: the run summary sets it against the
    stage's wall time to show how much of a stage is the model and how much is around it.
    """
    started = time.perf_counter()
    completions = backend.complete(requests)
    engine_ms = round((time.perf_counter() - started) * 1000)
    failures = Counter(c.failure for c in completions if c.failure)
    count_calls(
        counters, backend.model_name, what, len(requests), usage(completions), failures, engine_ms
    )
    return completions


def count_calls(
    counters: Counter[str],
    name: str,
    what: str,
    requests: int,
    totals: Usage,
    failures: Counter[str],
    engine_ms: int,
) -> None:
    """The counters of a batch of `requests` calls of model `name` for `what`: what they used,
    per model and for the shard, and how many failed, by kind (`failures`)."""
    counters["engine_ms"] += engine_ms
    for field_name, n in (
        ("requests", requests),
        ("prompt_tokens", totals.prompt_tokens),
        ("cached_prompt_tokens", totals.cached_prompt_tokens),
        ("completion_tokens", totals.completion_tokens),
        ("retries", totals.retries),
        ("engine_ms", engine_ms),
    ):
        counters[model_counter(name, field_name)] += n
    counters[f"{what}_requests"] += requests
    counters[f"{what}_failed"] += totals.failed
    for failure, n in failures.items():
        counters[f"{what}_failed_{failure}"] += n
    counters["prompt_tokens"] += totals.prompt_tokens
    counters["completion_tokens"] += totals.completion_tokens
    counters["cached_prompt_tokens"] += totals.cached_prompt_tokens
    counters["retries"] += totals.retries
