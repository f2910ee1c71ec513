"""Domain specifications: how each domain makes users, questions and candidates.

A domain is a folder of data files, and this is the one registry that maps a config's domain
name to its behaviour, so stages never branch on domain names:

    <name>/domain.yaml    the spec (`DomainSpec` less its name and folder), with default_shots
    <name>/taxonomy.yaml  the trait taxonomy its users are sampled from
    <name>/prompts/*.txt  templates of its own (optional); a template name in the spec is
                          looked up there first, then among the package's `fspo_data/prompts/`

The built-in domains are the folders beside this module. A job's `domains_dir` adds the
folders in it, and is looked at first: a folder there named like a built-in domain replaces
it, so changing a built-in domain is copying its folder there and editing the copy.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from string import Template
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fspo_data.core.chat import ChatMessage
from fspo_data.core.config import CountsConfig
from fspo_data.core.config_files import load_yaml_model
from fspo_data.core.records import Trait
from fspo_data.prompts import PROMPT_DIR, render_file, template_path

BUILT_IN_DIR = Path(__file__).parent
SPEC_FILE = "domain.yaml"
TAXONOMY_FILE = "taxonomy.yaml"


class DomainError(ValueError):
    """A domain that cannot be used, phrased as one line naming the file and the field."""


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


class GoldSpec(_Spec):
    """How the domain makes gold pairs: pairs whose right answer for a user is known by
    construction (README "Gold pairs and the gate")."""

    rule: Literal["stated_preference", "shared_parts", "level_distance"] = Field(
        default="stated_preference",
        description="'stated_preference': a probe user, a real user's description with a stated "
        "preference between the pair's two views appended (`stated_preference`), the preferred "
        "view drawn at random; 'shared_parts': the user's `trait` value and each view are "
        "parts joined by ' and ' (review's 'positive and concise'), the right candidate's view "
        "shares at least `min_gap` more parts with it; 'level_distance': the `trait` values are "
        "`responses.views` in order (elix's levels), the right candidate is written at the "
        "user's level and the other at least `min_gap` levels away.",
    )
    trait: str = Field(default="", description="The trait the two trait rules compare views with.")
    min_gap: int = Field(default=1, ge=1, description="How much better the right view must be.")

    @model_validator(mode="after")
    def _trait_named(self) -> GoldSpec:
        if self.rule != "stated_preference" and not self.trait:
            raise ValueError(f"rule {self.rule!r} compares views with a trait: name it in `trait`")
        return self


PART_SEPARATOR = " and "


class DomainFile(_Spec):
    """What a domain.yaml holds."""

    default_shots: int = Field(
        gt=0, strict=True, description="Preference shots N per episode unless counts.shots says."
    )
    persona: PersonaSpec
    questions: QuestionSpec
    responses: ResponseSpec
    stated_preference: str = Field(description="Sentence over $chosen_view and $rejected_view.")
    gold: GoldSpec = Field(default=GoldSpec(), description="How gold pairs are made.")


class DomainSpec(DomainFile):
    name: str = Field(description="The domain's folder name.")
    folder: Path = Field(description="The domain's folder.")

    @property
    def taxonomy_path(self) -> Path:
        return self.folder / TAXONOMY_FILE

    def template_path(self, name: str) -> Path:
        """Template `name`: the domain's own prompts/NAME.txt, else the package's."""
        own = self.folder / "prompts" / f"{name}.txt"
        return own if own.is_file() else template_path(name)

    def render(self, name: str, **values: str) -> list[ChatMessage]:
        return render_file(self.template_path(name), **values)

    def shots(self, counts: CountsConfig) -> int:
        """N for this domain's episodes: `counts.shots[name]`, else the domain's default."""
        return counts.shots.get(self.name, self.default_shots)

    def templated_description(self, traits: list[Trait]) -> str:
        return Template(self.persona.description).substitute({t.name: t.value for t in traits})

    def held_out_users(self, traits: pa.Array) -> np.ndarray:
        """(n,) whether each row of a traits column (list of name/value) holds a trait value
        of `persona.held_out_trait_values`: those users' episodes all go to `test_users`."""
        flat = traits.flatten()
        hit = np.zeros(len(flat), bool)
        for name, values in self.persona.held_out_trait_values.items():
            named = pc.equal(flat.field("name"), name)
            has = pc.and_(named, pc.is_in(flat.field("value"), pa.array(values, pa.string())))
            hit |= has.to_numpy(zero_copy_only=False)
        held = np.zeros(len(traits), bool)
        held[pc.list_parent_indices(traits).to_numpy()[hit]] = True
        return held

    def pair_difficulty(self, traits: list[Trait], view_x: str, view_y: str) -> str:
        """ "easy" when a candidate was written for the user's own level (the trait named by
        `responses.view_matches_trait`, e.g. elix's education level), else "hard"; "" where
        the domain defines no difficulty."""
        trait = self.responses.view_matches_trait
        if not trait:
            return ""
        level = next((t.value for t in traits if t.name == trait), None)
        return "easy" if level in (view_x, view_y) else "hard"

    def gold_trait_value(self, traits: list[Trait]) -> str | None:
        """The user's value of the trait the gold rule compares views with: all a user's
        gold pairs depend on under a trait rule."""
        return next((t.value for t in traits if t.name == self.gold.trait), None)

    def gold_answer(self, traits: list[Trait], view_x: str, view_y: str) -> bool | None:
        """Whether x is the right answer of a gold pair for a user with `traits` under a trait
        rule (`gold.rule`); None where the pair is no gold pair for that user."""
        gold = self.gold
        value = self.gold_trait_value(traits)
        if value is None or gold.rule == "stated_preference":
            return None
        if gold.rule == "shared_parts":
            parts = set(value.split(PART_SEPARATOR))
            gap = len(parts & set(view_x.split(PART_SEPARATOR))) - len(
                parts & set(view_y.split(PART_SEPARATOR))
            )
            return None if abs(gap) < gold.min_gap else gap > 0
        levels = self.responses.views
        if value not in levels or view_x not in levels or view_y not in levels:
            return None
        distance_x, distance_y = (
            abs(levels.index(v) - levels.index(value)) for v in (view_x, view_y)
        )
        if min(distance_x, distance_y) != 0 or max(distance_x, distance_y) < gold.min_gap:
            return None
        return distance_x == 0

    def state_preference(self, chosen_view: str, rejected_view: str) -> str:
        return Template(self.stated_preference).substitute(
            chosen_view=chosen_view, rejected_view=rejected_view
        )


def _search_path(domains_dir: Path | None) -> tuple[Path, ...]:
    return (BUILT_IN_DIR,) if domains_dir is None else (Path(domains_dir), BUILT_IN_DIR)


def available_domains(domains_dir: Path | None = None) -> list[str]:
    """Names of every domain a job with this `domains_dir` can use, sorted."""
    return sorted(
        {
            p.parent.name
            for folder in _search_path(domains_dir)
            for p in folder.glob(f"*/{SPEC_FILE}")
        }
    )


@cache
def load_domain(name: str, domains_dir: Path | None = None) -> DomainSpec:
    """Domain `name` from `domains_dir` if it has one, else the built-in one. A `DomainError`
    if there is none or a file is missing, a `ConfigError` if domain.yaml is malformed; both
    are one line naming the file."""
    known = available_domains(domains_dir)
    if name not in known:
        raise DomainError(f"unknown domain {name!r} (known: {', '.join(known)})")
    folder = next(f / name for f in _search_path(domains_dir) if (f / name / SPEC_FILE).is_file())
    path = folder / SPEC_FILE
    domain = DomainSpec(name=name, folder=folder, **dict(load_yaml_model(path, DomainFile)))
    if not domain.taxonomy_path.is_file():
        raise DomainError(f"{path}: no {TAXONOMY_FILE} beside it")
    for field, template in (
        ("questions.prompt", domain.questions.prompt),
        ("responses.prompt", domain.responses.prompt),
    ):
        if template and not domain.template_path(template).is_file():
            raise DomainError(
                f"{path}: {field}: no {template}.txt in {folder / 'prompts'} or {PROMPT_DIR}"
            )
    return domain
