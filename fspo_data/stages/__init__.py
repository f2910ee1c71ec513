"""The stages, in the order they run. This list is the one registry of stages.

A stage's shards come from its own `cut` (a source stage) or follow the plan of the input
it reads shard by shard; `plan_shards` is the one place that resolves this.
"""

from fspo_data.core.config import JobConfig
from fspo_data.stages import (
    episodes,
    gold,
    judge,
    persona_duplicates,
    personas,
    questions,
    rationales,
    responses,
)
from fspo_data.stages.base import ShardSpec, Stage

STAGES: tuple[Stage, ...] = (
    personas.STAGE,
    questions.STAGE,
    responses.STAGE,
    # Before the judge: the gate (pipeline/gold.py) reads its figures before the budget goes.
    gold.STAGE,
    judge.STAGE,
    # A CPU stage: placed after the last LLM stage before episodes, so that the engines
    # are not released and restarted between LLM stages.
    persona_duplicates.STAGE,
    episodes.STAGE,
    rationales.STAGE,
)
STAGES_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


def plan_shards(stage: Stage, config: JobConfig) -> list[ShardSpec]:
    """The shards `stage` computes for `config`, in order; [] when the job skips it."""
    if not stage.enabled(config):
        return []
    if stage.cut is not None:
        return stage.cut(config)
    follows = stage.shard_input()
    assert follows is not None, f"stage {stage.name}: neither cuts nor follows shards"
    upstream = plan_shards(STAGES_BY_NAME[follows.stage], config)
    return [spec.model_copy(update={"stage": stage.name}) for spec in upstream]


def _check_declarations() -> None:
    """Every input names an earlier stage; every stage cuts or follows shards."""
    seen: set[str] = set()
    for stage in STAGES:
        late = [i.stage for i in stage.inputs if i.stage not in seen]
        if late:
            raise ValueError(f"stage {stage.name}: reads {late}, which do not run before it")
        if stage.cut is None and stage.shard_input() is None:
            raise ValueError(f"stage {stage.name}: neither cuts nor follows shards")
        seen.add(stage.name)


_check_declarations()
