"""Model backends. `BACKENDS` is the one place a config's backend name becomes a class.

Backend modules import their engine library lazily (in the constructor), so importing
this registry stays cheap for the CLI and the CPU tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fspo_data.backends import instant
from fspo_data.backends.limits import SamplingLimits, sampling_problems
from fspo_data.backends.vllm_engine import VLLMBackend, engine_env, vllm_problems
from fspo_data.core.chat import LLMBackend

if TYPE_CHECKING:
    from fspo_data.core.config import JobConfig
    from fspo_data.core.model_config import ModelConfig

# The chat completions API reference (platform.openai.com/docs/api-reference/chat/create):
# temperature between 0 and 2, top_logprobs between 0 and 20.
OPENAI_SAMPLING = SamplingLimits(backend="openai", max_temperature=2.0, max_top_logprobs=20)


@dataclass(frozen=True)
class BackendEntry:
    # (model, folder for the batch journal, or None outside a run) -> backend
    create: Callable[[ModelConfig, Path | None], LLMBackend]
    process_env: Callable[[ModelConfig], dict[str, str]]
    # `field: what is wrong` for each setting of the job and of its model (whose fields sit
    # under the given path: `model` or `models.NAME`) this backend cannot take, found before
    # anything starts (no engine library is imported).
    problems: Callable[[JobConfig, ModelConfig, str], list[str]]


def _openai(model: ModelConfig, batch_journal: Path | None) -> LLMBackend:
    from fspo_data.backends.openai_backend import OpenAIBackend

    settings = model.openai
    # Limits in the config are for the whole job; each replica enforces its share.
    share = {
        "max_concurrency": max(1, settings.max_concurrency // model.replicas),
        "requests_per_minute": settings.requests_per_minute
        and settings.requests_per_minute / model.replicas,
        "tokens_per_minute": settings.tokens_per_minute
        and settings.tokens_per_minute / model.replicas,
    }
    return OpenAIBackend(settings.model_copy(update=share), batch_journal)


BACKENDS: dict[str, BackendEntry] = {
    "vllm": BackendEntry(
        create=lambda model, _: VLLMBackend(model), process_env=engine_env, problems=vllm_problems
    ),
    # The API key stays in the environment the workers inherit; a runtime_env would show it
    # in Ray's dashboard, so nothing is passed here.
    "openai": BackendEntry(
        create=_openai,
        process_env=lambda _: {},
        problems=lambda job, _, __: sampling_problems(job, OPENAI_SAMPLING),
    ),
    # Benchmarks and reliability tests only; see its module docstring. It takes any setting.
    instant.NAME: BackendEntry(
        create=lambda model, _: instant.InstantBenchmarkDouble(model),
        process_env=lambda _: {},
        problems=lambda *_: [],
    ),
}


def make_backend(model: ModelConfig, batch_journal: Path | None = None) -> LLMBackend:
    """The backend of `model`; `batch_journal` (RUN_DIR/batches) lets a resumed run find
    the batches a killed one submitted (openai batch mode)."""
    return BACKENDS[model.backend].create(model, batch_journal)


def backend_problems(job: JobConfig) -> list[str]:
    """`field: what is wrong` for each setting of `job` one of its models' backends cannot
    take."""
    roster = job.roster()
    problems = []
    for name, model in roster.models.items():
        path = f"models.{name}" if roster.named else "model"
        problems += BACKENDS[model.backend].problems(job, model, path)
    return list(dict.fromkeys(problems))  # a job-wide setting two models refuse, once


def backend_env(model: ModelConfig) -> dict[str, str]:
    """Environment the backend's process needs (the Ray actor's runtime_env)."""
    return BACKENDS[model.backend].process_env(model)
