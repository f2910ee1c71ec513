"""RAT (optional): the model writes, from an episode's shots, a short description of the user.

The episode is rewritten with it as `rationale` and the RAT variant of prompt and targets
(the public FSPO trainer's format): the task line asks for a user description first, and the
targets are `## User Description\\n{rationale}\\n## Preferred Response \\n{y}\\n`.
"""

from __future__ import annotations

from collections import Counter

from fspo_data.core.chat import ChatRequest, complete_all
from fspo_data.core.config import JobConfig, SamplingConfig
from fspo_data.core.fspo_format import format_rat_completion, format_rat_prompt
from fspo_data.core.records import Episode, RatEpisode, Shot, derived_seed
from fspo_data.prompts import render
from fspo_data.stages.base import (
    Inputs,
    ShardOutput,
    ShardSpec,
    Stage,
    StageContext,
    StageInput,
    config_slice,
    records_from_table,
)

MIN_RATIONALE_CHARS = 20


def describe_shots(shots: list[Shot]) -> str:
    return "\n\n".join(
        f"Question: {s.question}\nPreferred: {s.chosen}\nNot preferred: {s.rejected}" for s in shots
    )


def rationale_request(episode: Episode, sampling: SamplingConfig) -> ChatRequest:
    return ChatRequest(
        messages=render("rationale", examples=describe_shots(episode.shots)),
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=derived_seed("rationale", episode.episode_uuid),
    )


def parse_rationale(text: str) -> str | None:
    rationale = " ".join(text.split())
    return rationale if len(rationale) >= MIN_RATIONALE_CHARS else None


def with_rationale(episode: Episode, rationale: str) -> RatEpisode:
    return RatEpisode(
        **episode.model_dump(),
        rationale=rationale,
        rat_prompt=format_rat_prompt(episode.shots, episode.query_question),
        rat_chosen=format_rat_completion(rationale, episode.query_chosen),
        rat_rejected=format_rat_completion(rationale, episode.query_rejected),
    )


def enabled(config: JobConfig) -> bool:
    return config.stages.rationales.enabled


def run(spec: ShardSpec, inputs: Inputs, ctx: StageContext) -> ShardOutput:
    episodes = records_from_table(inputs["episodes"], Episode)
    counters: Counter[str] = Counter()
    sampling = ctx.config.stages.rationales.sampling
    completions = complete_all(
        ctx.llm("rationales"),
        [rationale_request(e, sampling) for e in episodes],
        counters,
        "rationales",
    )
    records = []
    for episode, completion in zip(episodes, completions, strict=True):
        rationale = parse_rationale(completion.text) if completion.ok else None
        if rationale is None:
            counters["rationales_dropped_short"] += 1
            continue
        records.append(with_rationale(episode, rationale))
    return ShardOutput(records=records, counters=counters)


STAGE = Stage(
    name="rationales",
    record_type=RatEpisode,
    roles=("rationales",),
    inputs=(StageInput(stage="episodes", align="shard"),),
    settings=config_slice("stages.rationales"),
    prompts=lambda _: ("rationale",),
    enabled=enabled,
    run=run,
)
