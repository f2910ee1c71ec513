"""The stage contract: what a stage declares, the shard spec, the context a shard runs in.

A stage is a module of pure functions over in-memory tables plus one `Stage` object that
declares what it reads (upstream stages, and how their shards line up with its own), the
slice of the config it reads, the prompt templates it uses, what it writes, whether it needs
a model, and how to size its model work for `fspo-data plan`. The orchestrator plans shards
from these declarations, reads the inputs, calls `Stage.run` inside Ray (an engine actor for
LLM stages, a task otherwise) and writes the output; a stage never touches the disk.
"""

from __future__ import annotations

import gc
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fspo_data.core.chat import ChatMessage, ChatRequest, Completion, LLMBackend, complete_all
from fspo_data.core.config import JobConfig
from fspo_data.core.config_files import config_leaves
from fspo_data.core.records import Record
from fspo_data.domains import DomainSpec

R = TypeVar("R", bound=Record)


class StageInputError(ValueError):
    """A stage's input lacks what the stage needs; the message names stage, file and keys."""


class ShardSpec(BaseModel):
    """One unit of work, commit and resume: items [start, stop) of one domain."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: str
    domain: str
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.domain}-{self.index:05d}"


def cut_shards(stage: str, domains: Sequence[str], total: int, per_shard: int) -> list[ShardSpec]:
    return [
        ShardSpec(
            stage=stage,
            domain=domain,
            index=i,
            start=i * per_shard,
            stop=min(total, (i + 1) * per_shard),
        )
        for domain in domains
        for i in range(math.ceil(total / per_shard))
    ]


@dataclass
class ShardOutput:
    """A shard's records (a list, or a `RecordTable` built column by column) and counters."""

    records: Sequence[Record]
    counters: Counter[str] = field(default_factory=Counter)


@dataclass
class StageContext:
    """What a shard runs with: the job's config and its models' backends.

    `backends` maps each model name of the job's roster (`JobConfig.roster`) that the stage
    uses to its backend; `backend` alone serves every role (tests and benchmarks).
    """

    config: JobConfig
    backend: LLMBackend | None = None
    backends: Mapping[str, LLMBackend] = field(default_factory=dict)

    def llm(self, role: str) -> LLMBackend:
        """The backend of the model serving `role` (one of core/roles_config.py's ROLES)."""
        return self.model(self.config.roster().name_of(role))

    def model(self, name: str) -> LLMBackend:
        backend = self.backends.get(name, self.backend)
        if backend is None:
            raise RuntimeError(f"this stage needs model {name!r} but no backend was started")
        return backend


@dataclass(frozen=True)
class StageLoad:
    """Model work of one stage: calls, prompt tokens (of which served from the prefix cache)
    and generated tokens."""

    stage: str
    calls: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0

    def __add__(self, other: StageLoad) -> StageLoad:
        return StageLoad(
            self.stage,
            self.calls + other.calls,
            self.prompt_tokens + other.prompt_tokens,
            self.cached_prompt_tokens + other.cached_prompt_tokens,
            self.generated_tokens + other.generated_tokens,
        )

    def gpu_hours(self, prompt_per_s: float, gen_per_s: float) -> float:
        """Prefill of the uncached prompt plus decode, at per-GPU rates; summing the two is an
        upper bound, since continuous batching overlaps them."""
        prefill = (self.prompt_tokens - self.cached_prompt_tokens) / prompt_per_s
        return (prefill + self.generated_tokens / gen_per_s) / 3600


@dataclass
class Estimate:
    """What `fspo-data plan` hands from stage to stage of one domain: stand-ins for the texts
    earlier stages write (sized like the real ones), counts, and the token arithmetic."""

    chars_per_token: float
    stand_ins: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def tokens(self, messages: list[ChatMessage]) -> int:
        return math.ceil(sum(len(m.content) for m in messages) / self.chars_per_token)

    def text(self, tokens: int) -> str:
        """A stand-in for generated text of `tokens` tokens."""
        return "x" * round(tokens * self.chars_per_token)

    def load(self, stage: str, calls: int, request: ChatRequest) -> StageLoad:
        """`calls` calls of `request`'s size, each generating its `max_tokens`."""
        prompt = self.tokens(request.messages)
        return StageLoad(stage, calls, calls * prompt, 0, calls * request.max_tokens)


class StageInput(BaseModel):
    """An upstream stage a stage reads, and which of its committed shards a shard gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: str
    align: Literal["shard", "domain"] = Field(
        description="'shard': the upstream shard of the same name (the stage's shards follow "
        "that stage's plan); 'domain': every committed shard of the shard's domain."
    )

    def prefix(self, spec: ShardSpec) -> str:
        """The shard-name prefix of the upstream shards that `spec` reads."""
        return spec.name if self.align == "shard" else f"{spec.domain}-"


# A shard's inputs: upstream stage name -> its committed shards that the shard reads.
Inputs = Mapping[str, pa.Table]


def config_slice(*paths: str) -> Callable[[JobConfig], dict[str, Any]]:
    """A stage's `settings` declaration: these config fields, as dotted leaves."""

    def settings(config: JobConfig) -> dict[str, Any]:
        return config_leaves(config, paths)

    return settings


def no_prompts(_: DomainSpec) -> tuple[str, ...]:
    return ()


def always(_: JobConfig) -> bool:
    return True


class Stage(BaseModel):
    """A stage's declaration. Every callable is a plain function of the stage's module."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str
    record_type: type[Record] = Field(description="What each row of its shards is.")
    roles: tuple[str, ...] = Field(
        default=(),
        description="The model roles its calls go to (core/roles_config.py ROLES); none: it "
        "runs as a plain Ray task, else in an engine actor of its first role's model.",
    )
    inputs: tuple[StageInput, ...] = Field(
        default=(),
        description="Upstream stages read; a stage without `cut` follows the plan "
        "of its first 'shard'-aligned input.",
    )
    settings: Callable[[JobConfig], dict[str, Any]] = Field(
        description="The config fields its records depend on, as dotted leaves: a change to "
        "one recomputes its shards (and, through their content, what reads them)."
    )
    prompts: Callable[[DomainSpec], tuple[str, ...]] = Field(
        default=no_prompts, description="Prompt templates it renders for a domain."
    )
    cut: Callable[[JobConfig], list[ShardSpec]] | None = Field(
        default=None, description="How a source stage cuts its own shards."
    )
    enabled: Callable[[JobConfig], bool] = Field(
        default=always, description="Whether the job runs the stage at all."
    )
    run: Callable[[ShardSpec, Inputs, StageContext], ShardOutput] = Field(
        description="One shard: its spec, its inputs in memory, settings and model -> records."
    )
    estimate: Callable[[JobConfig, DomainSpec, Estimate], list[StageLoad]] | None = Field(
        default=None, description="Model work for `fspo-data plan` (None: no model calls)."
    )

    @property
    def needs_llm(self) -> bool:
        return bool(self.roles)

    def shard_input(self) -> StageInput | None:
        """The input whose shards this stage's shards follow; None for a source stage."""
        return next((i for i in self.inputs if i.align == "shard"), None)


def require_columns(stage: str, source: str, table: pa.Table, record_type: type[Record]) -> None:
    missing = [name for name in record_type.model_fields if name not in table.column_names]
    if missing:
        raise StageInputError(f"stage {stage}: {source} lacks columns: {', '.join(missing)}")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one shard (also usable as a decorator).

    A judge shard allocates ~10^5 objects (requests, completions) that stay alive until it
    ends, and each full collection walks all of them again: ~40% of the shard's time. They
    form no reference cycles, so reference counting frees them; collection resumes after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def complete_whole(
    ctx: StageContext,
    model: str,
    requests: list[ChatRequest],
    counters: Counter[str],
    what: str,
) -> list[Completion]:
    """`complete_all` on the named model, then each completion cut at max_tokens asked once
    more with a larger budget (`stages.truncation`); one cut again comes back failed
    (`bad_output`), so no stage writes it as if whole. Counted as `{what}_regenerated_truncated`
    and `{what}_dropped_truncated`.

    The retry keeps the request's seed, so a seeded engine writes the same opening again.
    """
    # Both counters exist even at 0, so the verdict on truncated texts can tell "nothing cut"
    # from "no text of this kind generated".
    counters.update({f"{what}_regenerated_truncated": 0, f"{what}_dropped_truncated": 0})
    backend = ctx.model(model)
    completions = complete_all(backend, requests, counters, what)
    factor = ctx.config.stages.truncation.retry_factor
    context = ctx.config.roster().models[model].max_model_len
    retries: dict[int, ChatRequest] = {}
    for i, (request, completion) in enumerate(zip(requests, completions, strict=True)):
        if not (completion.ok and completion.truncated):
            continue
        budget = min(math.ceil(request.max_tokens * factor), context - completion.prompt_tokens)
        if budget > request.max_tokens:
            retries[i] = replace(request, max_tokens=budget)
        else:
            completions[i] = _dropped_truncated(completion, counters, what)
    if not retries:
        return completions
    counters[f"{what}_regenerated_truncated"] += len(retries)
    again = complete_all(backend, list(retries.values()), counters, what)
    for i, completion in zip(retries, again, strict=True):
        completions[i] = (
            _dropped_truncated(completion, counters, what) if completion.truncated else completion
        )
    return completions


def _dropped_truncated(completion: Completion, counters: Counter[str], what: str) -> Completion:
    counters[f"{what}_dropped_truncated"] += 1
    return replace(completion, failure="bad_output", error="cut at max_tokens")


def records_from_table(table: pa.Table, record_type: type[R]) -> list[R]:
    return [record_type.model_validate(row) for row in table.to_pylist()]


def clean_line(text: str) -> str:
    """First non-empty line without list markers or quotes: what small models wrap answers in."""
    for line in text.strip().splitlines():
        line = line.strip().lstrip("-*•0123456789.) ").strip().strip('"').strip()
        if line:
            return line
    return ""
