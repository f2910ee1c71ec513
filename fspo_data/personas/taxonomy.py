"""Weighted trait taxonomies (data files under `taxonomies/`) and seeded trait sampling."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict

from fspo_data.core.records import Trait, derived_seed

TAXONOMY_DIR = Path(__file__).parent / "taxonomies"


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


@cache
def load_taxonomy(domain: str) -> Taxonomy:
    path = TAXONOMY_DIR / f"{domain}.yaml"
    if not path.is_file():
        raise ValueError(f"domain: no trait taxonomy for {domain!r} (expected {path})")
    raw = yaml.safe_load(path.read_text())["attributes"]
    attributes = {}
    for name, spec in raw.items():
        total = float(sum(spec["values"].values()))
        attributes[name] = {str(v): w / total for v, w in spec["values"].items()}
    sources = {name: spec.get("source", "") for name, spec in raw.items()}
    exclusive = frozenset(name for name, spec in raw.items() if spec.get("exclusive"))
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
