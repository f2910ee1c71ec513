"""Domain specifications: how each domain makes users, questions and candidates.

Each domain is a data file beside this module; this is the one registry that maps a
config's domain name to its behaviour, so stages never branch on domain names.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from string import Template

import yaml
from pydantic import BaseModel, ConfigDict, Field

from fspo_data.core.records import Trait

DOMAIN_DIR = Path(__file__).parent


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PersonaSpec(_Spec):
    describe_with_model: bool = Field(description="LLM-written description from sampled traits.")
    description: str = Field(default="", description="Template over trait names, if not LLM.")
    held_out_trait_values: dict[str, list[str]] = Field(
        default_factory=dict, description="Users with these trait values go to test_users only."
    )


class QuestionSpec(_Spec):
    prompt: str = Field(default="", description="Prompt template that asks the LLM a question.")
    fixed_question: str = Field(default="", description="Question template over $topic (no LLM).")
    topics_from_trait: str = Field(default="", description="Cycle topics over a trait's values.")
    topics: list[str] = Field(default_factory=list, description="Topics to cycle over.")


class ResponseSpec(_Spec):
    prompt: str = Field(description="Prompt template for one candidate, over $view and $question.")
    views_from_model: bool = Field(default=False, description="The LLM lists the views.")
    views: list[str] = Field(default_factory=list, description="Fixed views to sample from.")
    view_matches_trait: str = Field(
        default="", description="Trait whose value equals a view: tags pairs easy/hard."
    )


class DomainSpec(_Spec):
    name: str
    persona: PersonaSpec
    questions: QuestionSpec
    responses: ResponseSpec
    stated_preference: str = Field(description="Sentence over $chosen_view and $rejected_view.")

    def templated_description(self, traits: list[Trait]) -> str:
        return Template(self.persona.description).substitute({t.name: t.value for t in traits})

    def is_held_out_user(self, traits: list[Trait]) -> bool:
        held = self.persona.held_out_trait_values
        return any(t.value in held.get(t.name, ()) for t in traits)

    def state_preference(self, chosen_view: str, rejected_view: str) -> str:
        return Template(self.stated_preference).substitute(
            chosen_view=chosen_view, rejected_view=rejected_view
        )


@cache
def load_domain(name: str) -> DomainSpec:
    path = DOMAIN_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"domain: unknown domain {name!r} (no {path.name} in {DOMAIN_DIR})")
    return DomainSpec.model_validate({"name": name, **yaml.safe_load(path.read_text())})
