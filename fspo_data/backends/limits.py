"""What a backend accepts in one request, checked against every sampling setting a job sends.

Each backend states its `SamplingLimits` beside its own code; `sampling_problems` is the one
check of a job's settings against them, so the field paths and messages stay the same for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fspo_data.core.config import JobConfig, SamplingConfig


@dataclass(frozen=True)
class SamplingLimits:
    backend: str
    max_temperature: float
    max_top_logprobs: int


def stage_sampling(config: JobConfig) -> dict[str, SamplingConfig]:
    """Every generating stage's sampling settings, by field path."""
    stages = config.stages
    return {
        "stages.personas": stages.personas,
        "stages.questions": stages.questions,
        "stages.views": stages.views,
        "stages.responses": stages.responses,
        "stages.rationales.sampling": stages.rationales.sampling,
    }


def sampling_problems(config: JobConfig, limits: SamplingLimits) -> list[str]:
    """`field: what is wrong` for each setting the job sends that `limits` refuse."""
    temperatures = {
        f"{path}.temperature": s.temperature for path, s in stage_sampling(config).items()
    }
    temperatures["stages.judge.sample_temperature"] = config.stages.judge.sample_temperature
    problems = [
        f"{field}: {value:g} is above {limits.max_temperature:g}, the most {limits.backend} accepts"
        for field, value in temperatures.items()
        if not value <= limits.max_temperature  # also catches .inf
    ]
    top_logprobs = config.stages.judge.top_logprobs
    if top_logprobs > limits.max_top_logprobs:
        problems.append(
            f"stages.judge.top_logprobs: {top_logprobs} is above {limits.max_top_logprobs}, the "
            f"most {limits.backend} returns"
        )
    return problems
