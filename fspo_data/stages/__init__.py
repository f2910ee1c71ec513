"""The stages, in the order they run. This list is the one registry of stages."""

from fspo_data.stages import episodes, judge, personas, questions, rationales, responses
from fspo_data.stages.base import Stage

STAGES: tuple[Stage, ...] = (
    personas.STAGE,
    questions.STAGE,
    responses.STAGE,
    judge.STAGE,
    episodes.STAGE,
    rationales.STAGE,
)
STAGES_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
