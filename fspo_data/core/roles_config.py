"""Model roles: which named model serves each stage's calls.

A job names its models under `models:` and says under `roles:` which serves each role; or it
gives one `model:`, shorthand for that model in every role. Either way the code sees one
`ModelRoster`: model name -> `ModelConfig`, role -> name(s). With the shorthand the name is
the model's served name (`ModelConfig.served_name`), which is what records carried before
roles existed, so a one-model job writes the same records and ids as ever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fspo_data.core.config_files import StrictModel
from fspo_data.core.model_config import ModelConfig

# Every role a model can serve, in pipeline order; `candidates` may be an ensemble.
SINGLE_ROLES = ("personas", "questions", "views", "judge", "rationales", "eval_judge")
ROLES = ("personas", "questions", "views", "candidates", "judge", "rationales", "eval_judge")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class CandidatesRole(StrictModel):
    """The models writing candidate responses: one, or an ensemble."""

    models: list[str] = Field(
        min_length=1, description="Names under `models:`; more than one makes an ensemble."
    )
    assign: Literal["round_robin", "every"] = Field(
        default="round_robin",
        description="'round_robin': a question's views are dealt to the models in turn "
        "(view j of question i to model (i + j) mod n), so each question gets "
        "`counts.candidates_per_question` candidates from a mix of models; 'every': every view "
        "is answered by every model (candidates_per_question x models candidates a question).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `candidates: gen` and `candidates: [a, b]` read as the round-robin ensemble.
        if isinstance(value, str):
            return {"models": [value]}
        if isinstance(value, list):
            return {"models": value}
        return value

    @field_validator("models")
    @classmethod
    def _once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a model is listed more than once")
        return value


class RolesConfig(StrictModel):
    """Which model (a name under `models:`) serves each role; unnamed roles take `default`."""

    default: str | None = Field(default=None, description="The model of every role not named.")
    personas: str | None = Field(default=None, description="Writes persona descriptions.")
    questions: str | None = Field(default=None, description="Writes questions.")
    views: str | None = Field(default=None, description="Lists viewpoints per question.")
    candidates: CandidatesRole | None = Field(
        default=None,
        description="Writes candidate responses: a name, a list (an ensemble dealt "
        "round-robin) or {models: [...], assign: round_robin | every}.",
    )
    judge: str | None = Field(
        default=None, description="Labels pairs (gold pairs, judge, refinement)."
    )
    rationales: str | None = Field(default=None, description="Writes RAT user descriptions.")
    eval_judge: str | None = Field(
        default=None, description="The judge of `fspo-data eval` (win rates)."
    )

    def given(self) -> bool:
        return any(getattr(self, role) is not None for role in type(self).model_fields)


@dataclass(frozen=True)
class ModelRoster:
    """The job's models by name and the model(s) of each role, resolved and checked."""

    models: dict[str, ModelConfig]
    roles: dict[str, tuple[str, ...]]
    assign: str
    named: bool  # True: `models:` + `roles:`; False: the one-model shorthand

    def of(self, role: str) -> ModelConfig:
        return self.models[self.name_of(role)]

    def name_of(self, role: str) -> str:
        return self.roles[role][0]

    def names_of(self, roles: tuple[str, ...]) -> list[str]:
        """The models serving `roles`, each once, in role order."""
        return list(dict.fromkeys(name for role in roles for name in self.roles[role]))

    def roles_of(self, name: str) -> list[str]:
        return [role for role, names in self.roles.items() if name in names]


def roster(model: ModelConfig, models: dict[str, ModelConfig], roles: RolesConfig) -> ModelRoster:
    """The roster of a job whose config passed `roster_problems`."""
    if not models:
        name = model.served_name
        return ModelRoster({name: model}, {r: (name,) for r in ROLES}, "round_robin", False)
    default = roles.default or ""
    candidates = roles.candidates or CandidatesRole(models=[default])
    resolved = {
        role: tuple(candidates.models)
        if role == "candidates"
        else (getattr(roles, role) or default,)
        for role in ROLES
    }
    return ModelRoster(dict(models), resolved, candidates.assign, True)


def roster_problems(
    model_given: bool, models: dict[str, ModelConfig], roles: RolesConfig
) -> list[str]:
    """`field: what is wrong` with the models and roles of a job, before anything starts."""
    if not models:
        if not model_given:
            return [
                "model: Input should be a valid dictionary (the model's settings; leave "
                "`model:` out for the embedded model)"
            ]
        if roles.given():
            return ["roles: needs `models:` (a single `model:` serves every role)"]
        return []
    problems = []
    if model_given:
        problems.append(
            "model: give one `model:` (every role) or `models:` with `roles:`, not both"
        )
    problems += [
        f"models.{name}: a name is letters, digits, '_', '.' or '-'"
        for name in models
        if not _MODEL_NAME.fullmatch(name)
    ]
    known = ", ".join(models)
    named = {f"roles.{r}": getattr(roles, r) for r in ("default", *SINGLE_ROLES)}
    if roles.candidates is not None:
        named |= {f"roles.candidates.models.{i}": n for i, n in enumerate(roles.candidates.models)}
    for field, name in named.items():
        if name is not None and name not in models:
            problems.append(f"{field}: {name!r} is not a model under `models:` ({known})")
    unserved = [r for r in SINGLE_ROLES if getattr(roles, r) is None]
    if roles.candidates is None:
        unserved.append("candidates")
    if roles.default is None and unserved:
        problems.append(
            f"roles.{unserved[0]}: no model serves it; name one of {known} (or set roles.default)"
        )
    return problems
