"""Weighted trait taxonomies (each domain's taxonomy.yaml) and seeded trait sampling."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from fspo_data.core.config_files import load_yaml_model
from fspo_data.core.records import Trait, derived_seed


class TaxonomySource(Protocol):
    """Where a domain's taxonomy is (a `fspo_data.domains.DomainSpec` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def taxonomy_path(self) -> Path: ...


class _AttributeFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    values: dict[str, PositiveFloat] = Field(min_length=1)
    source: str = ""
    exclusive: bool = False


class _TaxonomyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attributes: dict[str, _AttributeFile] = Field(min_length=1)


class Taxonomy(BaseModel):
    """attribute -> value -> weight (normalised to sum to 1 per attribute).

    `exclusive` attributes are those a person has one value of (gender, region): a
    description naming another value of one contradicts the sampled traits.
    """

    model_config = ConfigDict(frozen=True)
    domain: str
    attributes: dict[str, dict[str, float]]
    sources: dict[str, str]
    exclusive: frozenset[str] = frozenset()


def load_taxonomy(domain: TaxonomySource) -> Taxonomy:
    """The trait taxonomy of `domain`; a `ConfigError` naming the file and field if malformed."""
    return _read_taxonomy(domain.taxonomy_path, domain.name)


@cache
def _read_taxonomy(path: Path, domain: str) -> Taxonomy:
    raw = load_yaml_model(path, _TaxonomyFile).attributes
    attributes = {}
    for name, spec in raw.items():
        total = sum(spec.values.values())
        attributes[name] = {value: w / total for value, w in spec.values.items()}
    sources = {name: spec.source for name, spec in raw.items()}
    exclusive = frozenset(name for name, spec in raw.items() if spec.exclusive)
    return Taxonomy(domain=domain, attributes=attributes, sources=sources, exclusive=exclusive)


def contradicted_trait(description: str, traits: list[Trait], taxonomy: Taxonomy) -> str | None:
    """The first exclusive attribute whose description names another value but not the
    sampled one (whole words, any case); None if the description agrees with its traits."""
    for trait in traits:
        if trait.name not in taxonomy.exclusive or _names(description, trait.value):
            continue
        others = (v for v in taxonomy.attributes[trait.name] if v != trait.value)
        if any(_names(description, other) for other in others):
            return trait.name
    return None


def _names(text: str, value: str) -> bool:
    return re.search(rf"\b{re.escape(value)}\b", text, flags=re.IGNORECASE) is not None


def sample_traits(
    taxonomy: Taxonomy,
    seed: int,
    index: int,
    stratify: tuple[str, ...] = (),
    total: int = 0,
) -> list[Trait]:
    """Weighted draws per attribute; the same (seed, index) gives the same traits.

    Attributes in `stratify` are not drawn independently: across the `total` users each value
    gets its quota (weight x total, largest remainder), dealt out in a seeded order.
    """
    rng = np.random.default_rng(derived_seed("traits", taxonomy.domain, seed, index))
    traits = []
    for name, weights in taxonomy.attributes.items():
        values = list(weights)
        pick = rng.choice(len(values), p=np.array(list(weights.values())))
        if name in stratify:
            pick = int(
                quota_assignment(taxonomy.domain, name, tuple(weights.values()), total, seed)[index]
            )
        traits.append(Trait(name=name, value=values[pick]))
    return traits


@cache
def quota_assignment(
    domain: str, attribute: str, weights: tuple[float, ...], total: int, seed: int
) -> np.ndarray:
    """(total,) value index per user: exact quotas by largest remainder, seeded order."""
    exact = np.array(weights) * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    deal = np.repeat(np.arange(len(weights)), counts)
    return np.random.default_rng(derived_seed("quota", domain, attribute, seed)).permutation(deal)
