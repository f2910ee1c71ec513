"""Personas: sample traits from the domain's taxonomy, have the model describe the person."""

from __future__ import annotations

from collections import Counter
from functools import cache
from typing import Any

from fspo_data.core.chat import ChatRequest
from fspo_data.core.config import JobConfig, SamplingConfig
from fspo_data.core.config_files import config_leaves
from fspo_data.core.records import Persona, Trait, derived_seed, stable_id
from fspo_data.domains import DomainSpec, load_domain
from fspo_data.personas.dedup import deduplicate
from fspo_data.personas.embeddings import TextEmbedder, make_embedder
from fspo_data.personas.taxonomy import (
    Taxonomy,
    contradicted_trait,
    load_taxonomy,
    sample_traits,
)
from fspo_data.prompts import render
from fspo_data.stages.base import (
    Estimate,
    Inputs,
    ShardOutput,
    ShardSpec,
    Stage,
    StageContext,
    StageLoad,
    complete_whole,
    cut_shards,
)

MIN_DESCRIPTION_CHARS = 40


def describe_traits(traits: list[Trait]) -> str:
    return "\n".join(f"- {t.name.replace('_', ' ')}: {t.value}" for t in traits)


def persona_request(traits: list[Trait], sampling: SamplingConfig, seed: int) -> ChatRequest:
    return ChatRequest(
        messages=render("persona_description", traits=describe_traits(traits)),
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=seed,
    )


def parse_description(text: str, min_chars: int = MIN_DESCRIPTION_CHARS) -> str | None:
    """The description on one line, or None when it is too short to steer a judge."""
    description = " ".join(text.split())
    return description if len(description) >= min_chars else None


def rejection(description: str | None, traits: list[Trait], taxonomy: Taxonomy) -> str | None:
    """Why a model-written description is refused, or None if it is usable."""
    if description is None:
        return "short"
    if contradicted_trait(description, traits, taxonomy):
        return "contradicts_traits"
    return None


def cut(config: JobConfig) -> list[ShardSpec]:
    return cut_shards(
        "personas", config.domains, config.counts.users, config.sharding.users_per_shard
    )


def settings(config: JobConfig) -> dict[str, Any]:
    paths = ["seed", "personas", "stages.personas", "stages.persona_checks", "stages.truncation"]
    # Quotas are dealt over all users: there the user count shapes every persona. Otherwise it
    # only says how far the shards go (a grown run re-cuts only its last shard).
    if config.personas.stratify:
        paths.append("counts.users")
    return config_leaves(config, paths)


def prompts(domain: DomainSpec) -> tuple[str, ...]:
    return ("persona_description",) if domain.persona.describe_with_model else ()


def estimate(config: JobConfig, domain: DomainSpec, est: Estimate) -> list[StageLoad]:
    """One call per user; the description stand-in is what the judge prompts carry."""
    users, sampling = config.counts.users, config.stages.personas
    traits = sample_traits(load_taxonomy(domain), config.seed, 0)
    if not domain.persona.describe_with_model:
        est.stand_ins["description"] = domain.templated_description(traits)
        return [StageLoad("personas")]
    est.stand_ins["description"] = est.text(sampling.max_tokens)
    return [est.load("personas", users, persona_request(traits, sampling, 0))]


def describe(
    domain: DomainSpec,
    traits: list[list[Trait]],
    ids: list[str],
    ctx: StageContext,
    counters: Counter[str],
) -> list[str | None]:
    """One description per user: the domain's template, or the model's, checked.

    Model-written descriptions that failed, were cut at max_tokens twice (`complete_whole`),
    are short, contradict their traits or duplicate an earlier one in the shard are
    regenerated with a new seed, up to `max_attempts` tries.
    """
    if not domain.persona.describe_with_model:
        return [domain.templated_description(t) for t in traits]
    checks = ctx.config.stages.persona_checks
    taxonomy = load_taxonomy(domain)
    accepted: list[str | None] = [None] * len(ids)
    pending = list(range(len(ids)))
    for attempt in range(checks.max_attempts):
        requests = [
            persona_request(traits[i], ctx.config.stages.personas, derived_seed(ids[i], attempt))
            for i in pending
        ]
        completions = complete_whole(
            ctx, ctx.config.roster().name_of("personas"), requests, counters, "personas"
        )
        candidates = {}
        for i, completion in zip(pending, completions, strict=True):
            if not completion.ok:  # already counted: personas_failed or _dropped_truncated
                continue
            text = parse_description(completion.text, checks.min_chars)
            reason = rejection(text, traits[i], taxonomy)
            if reason:
                counters[f"personas_rejected_{reason}"] += 1
            else:
                candidates[i] = text
        for i, reason in duplicates(accepted, candidates, ctx).items():
            counters[f"personas_rejected_duplicate_{reason}"] += 1
            del candidates[i]
        for i, text in candidates.items():
            accepted[i] = text
        pending = [i for i in pending if accepted[i] is None]
        if not pending:
            break
        counters["personas_regenerated"] += len(pending)
    return accepted


def duplicates(
    accepted: list[str | None], candidates: dict[int, str], ctx: StageContext
) -> dict[int, str]:
    """Candidates that duplicate an accepted description or an earlier candidate -> reason."""
    checks = ctx.config.stages.persona_checks
    kept = [t for t in accepted if t is not None]
    order = list(candidates)
    texts = kept + [candidates[i] for i in order]
    embeddings = None
    if checks.embedding_threshold is not None:
        embeddings = embedder(checks.embedder).embed(texts)
    result = deduplicate(
        texts,
        embeddings,
        minhash_threshold=checks.minhash_threshold,
        embedding_threshold=checks.embedding_threshold or 1.0,
    )
    return {order[d.index - len(kept)]: d.reason for d in result.dropped if d.index >= len(kept)}


@cache
def embedder(name: str) -> TextEmbedder:
    """One embedding model per worker process, loaded on first use."""
    return make_embedder(name)


def run(spec: ShardSpec, inputs: Inputs, ctx: StageContext) -> ShardOutput:
    config = ctx.config
    domain = load_domain(spec.domain, config.domains_dir)
    taxonomy = load_taxonomy(domain)
    indices = range(spec.start, spec.stop)
    stratify = tuple(a for a in config.personas.stratify if a in taxonomy.attributes)
    traits = [
        sample_traits(taxonomy, config.seed, i, stratify, config.counts.users) for i in indices
    ]
    ids = [stable_id("persona", spec.domain, config.seed, i) for i in indices]
    counters: Counter[str] = Counter()
    descriptions = describe(domain, traits, ids, ctx, counters)
    records = []
    for index, pid, trait_list, description in zip(indices, ids, traits, descriptions, strict=True):
        if description is None:
            counters["personas_dropped_after_attempts"] += 1
            continue
        records.append(
            Persona(
                persona_uuid=pid,
                domain=spec.domain,
                index=index,
                traits=trait_list,
                persona_description=description,
            )
        )
    return ShardOutput(records=records, counters=counters)


STAGE = Stage(
    name="personas",
    record_type=Persona,
    roles=("personas",),
    settings=settings,
    prompts=prompts,
    cut=cut,
    run=run,
    estimate=estimate,
)
