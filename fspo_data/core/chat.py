"""The one interface every model backend implements, and the request/result types.

Stages build `ChatRequest`s, a backend turns them into `Completion`s in the same order.
A backend never raises for a single bad completion: it returns a `Completion` with a
`failure` kind and a reason. What happens next depends on the kind: a call that failed
because the endpoint was unavailable is never dropped (the orchestrator leaves its shard
uncommitted, pipeline/orchestrator.py `CallTally`); a refused request or a bad answer is
dropped and counted by the stage.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: str
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    messages: list[ChatMessage]
    max_tokens: int = Field(gt=0)
    temperature: float = Field(ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = Field(description="Per-request sampling seed, so a rerun reproduces the text.")
    top_logprobs: int = Field(
        default=0, ge=0, description="How many alternatives to return for the first token."
    )


# Why a call failed for good, for code to act on ('' when it did not fail):
# - unavailable: the endpoint or engine could not answer (connection error, timeout, 408,
#   409, 429 or 5xx after the retries): the same request may well succeed later;
# - refused: the endpoint answered the request with another 4xx (bad request, refused key);
# - bad_output: an answer came, but not a usable one (malformed after the retries, or cut at
#   max_tokens again).
Failure = Literal["", "unavailable", "refused", "bad_output"]


class Completion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = ""
    failure: Failure = ""
    error: str = Field(default="", description="Why it failed, for people (one line).")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    first_token_logprobs: dict[str, float] = Field(
        default_factory=dict,
        description="Decoded first-token alternatives (stripped) -> best log-probability.",
    )
    retries: int = 0
    finish_reason: str = Field(
        default="",
        description="Why generation ended: 'stop' (the model finished), 'length' (cut at "
        "max_tokens), '' when the backend does not say.",
    )

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
        self.requests += len(completions)
        self.failed += sum(not c.ok for c in completions)
        self.retries += sum(c.retries for c in completions)
        self.prompt_tokens += sum(c.prompt_tokens for c in completions)
        self.completion_tokens += sum(c.completion_tokens for c in completions)
        self.cached_prompt_tokens += sum(c.cached_prompt_tokens for c in completions)
        self.generate_seconds += seconds


class LLMBackend(Protocol):
    """What stages need from a model: batched chat completions, in request order."""

    model_name: str

    def complete(self, requests: list[ChatRequest]) -> list[Completion]: ...

    def stats(self) -> BackendStats: ...


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
    counters["engine_ms"] += round((time.perf_counter() - started) * 1000)
    counters[f"{what}_requests"] += len(requests)
    failures = Counter(c.failure for c in completions if c.failure)
    counters[f"{what}_failed"] += failures.total()
    for failure, n in failures.items():
        counters[f"{what}_failed_{failure}"] += n
    counters["prompt_tokens"] += sum(c.prompt_tokens for c in completions)
    counters["completion_tokens"] += sum(c.completion_tokens for c in completions)
    counters["cached_prompt_tokens"] += sum(c.cached_prompt_tokens for c in completions)
    counters["retries"] += sum(c.retries for c in completions)
    return completions
