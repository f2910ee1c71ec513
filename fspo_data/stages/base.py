"""What every stage shares: the shard spec, the context a shard runs in, the input check.

A stage is a module with pure functions over records plus one `Stage` object that says
how the run is cut into shards and how one shard is computed. The orchestrator runs
`Stage.run` inside Ray (an engine actor for LLM stages, a task otherwise).
"""

from __future__ import annotations

import gc
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from fspo_data.core.chat import LLMBackend
from fspo_data.core.config import JobConfig
from fspo_data.core.records import Record

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
    config: JobConfig
    backend: LLMBackend | None = None

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    def llm(self) -> LLMBackend:
        if self.backend is None:
            raise RuntimeError("this stage needs a model backend but none was started")
        return self.backend


class Stage(BaseModel):
    """How a stage is planned and run. `run` is resolved from the stage's module."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str
    record_type: type[Record]
    needs_llm: bool
    plan: Callable[[JobConfig], list[ShardSpec]]
    run: Callable[[ShardSpec, StageContext], ShardOutput]


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


def records_from_table(table: pa.Table, record_type: type[R]) -> list[R]:
    return [record_type.model_validate(row) for row in table.to_pylist()]


def clean_line(text: str) -> str:
    """First non-empty line without list markers or quotes: what small models wrap answers in."""
    for line in text.strip().splitlines():
        line = line.strip().lstrip("-*•0123456789.) ").strip().strip('"').strip()
        if line:
            return line
    return ""
