"""Persona dedup across a domain's shards: the personas stage dedups within its shard only.

A CPU stage with one shard per domain reads every committed persona shard of the domain and
runs the same passes as the per-shard dedup (exact, MinHash, optional embedding) in persona
index order, so a user is flagged only as a duplicate of an earlier one; like that dedup,
only model-written descriptions are compared. The persona shards
stay as they are (nothing downstream is re-cut); the episodes stage reads the flags and cuts
no episodes for a flagged user. Being a stage, a changed persona shard or threshold
recomputes the flags, and the flags' digest recomputes the episodes that read them.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from fspo_data.core.config import JobConfig
from fspo_data.core.records import PersonaDuplicate
from fspo_data.domains import load_domain
from fspo_data.personas.dedup import deduplicate
from fspo_data.stages.base import (
    Inputs,
    ShardOutput,
    ShardSpec,
    Stage,
    StageContext,
    StageInput,
    config_slice,
)
from fspo_data.stages.personas import embedder


def cut(config: JobConfig) -> list[ShardSpec]:
    users = config.counts.users
    return [
        ShardSpec(stage="persona_duplicates", domain=d, index=0, start=0, stop=users)
        for d in config.domains
    ]


def find_duplicates(personas: pa.Table, domain: str, config: JobConfig) -> list[PersonaDuplicate]:
    """(p,) personas of `domain`, any order -> the ones that repeat an earlier user."""
    ordered = personas.sort_by("index")
    uuids = ordered["persona_uuid"].to_pylist()
    texts = ordered["persona_description"].to_pylist()
    checks = config.stages.persona_checks
    embeddings = None
    if checks.embedding_threshold is not None and texts:
        embeddings = embedder(checks.embedder).embed(texts)
    result = deduplicate(
        texts,
        embeddings,
        minhash_threshold=checks.minhash_threshold,
        embedding_threshold=checks.embedding_threshold or 1.0,
    )
    return [
        PersonaDuplicate(
            persona_uuid=uuids[d.index],
            domain=domain,
            duplicate_of=uuids[d.duplicate_of],
            reason=d.reason,
        )
        for d in result.dropped
    ]


def run(spec: ShardSpec, inputs: Inputs, ctx: StageContext) -> ShardOutput:
    # A templated domain (review, elix) gives every user of a type the same description on
    # purpose, as the per-shard dedup knows: only model-written descriptions are compared.
    if not load_domain(spec.domain, ctx.config.domains_dir).persona.describe_with_model:
        return ShardOutput(records=[])
    records = find_duplicates(inputs["personas"], spec.domain, ctx.config)
    counters: Counter[str] = Counter()
    if records:
        counters["personas_cross_shard_duplicates"] = len(records)
    return ShardOutput(records=records, counters=counters)


STAGE = Stage(
    name="persona_duplicates",
    record_type=PersonaDuplicate,
    inputs=(StageInput(stage="personas", align="domain"),),
    settings=config_slice(
        "stages.persona_checks.minhash_threshold",
        "stages.persona_checks.embedding_threshold",
        "stages.persona_checks.embedder",
    ),
    cut=cut,
    run=run,
)
