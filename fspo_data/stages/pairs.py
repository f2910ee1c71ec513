"""The candidate-pair pool of a domain and the pairs each user draws from it: what the judge
and gold stages both read, so a gold pair comes from the same pool a user's labels do."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fspo_data.core.config import JobConfig
from fspo_data.core.records import Persona, derived_seed
from fspo_data.stages.base import Inputs, ShardSpec, StageInput, records_from_table

# What a stage over a shard's users and its domain's pair pool reads: its users shard by shard,
# every question and candidate of the domain.
PAIR_INPUTS = (
    StageInput(stage="personas", align="shard"),
    StageInput(stage="questions", align="domain"),
    StageInput(stage="responses", align="domain"),
)


@dataclass(frozen=True, repr=False)
class CandidatePair:
    question_uuid: str
    x: str
    y: str

    def __repr__(self) -> str:
        # The dataclass's own repr, byte for byte (seeds hash it: `derived_seed("judge",
        # user, pair)`), without the recursion guard that made it the gold stage's largest
        # cost per probe.
        return f"CandidatePair(question_uuid={self.question_uuid!r}, x={self.x!r}, y={self.y!r})"


def candidate_pairs(
    question_uuids: Sequence[str], response_uuids: Sequence[str]
) -> list[CandidatePair]:
    """All unordered pairs of candidates per question (the i-th response answers the i-th
    question id), x < y by id, in a stable order."""
    by_question: dict[str, list[str]] = {}
    for question, response in zip(question_uuids, response_uuids, strict=True):
        by_question.setdefault(question, []).append(response)
    return [
        CandidatePair(q, x, y)
        for q in sorted(by_question)
        for x, y in itertools.combinations(sorted(by_question[q]), 2)
    ]


def assign_pairs(persona_uuid: str, block: range, count: int, seed: int) -> list[int]:
    """A seeded sample of `count` of the pairs at positions `block` of the pool (all of them
    if the block is smaller) for one user, as sorted positions in the pool.

    Users draw from the same pool (or block of it), so the same pair is labelled by many users.
    """
    rng = np.random.default_rng(derived_seed("pairs", seed, persona_uuid))
    # Unshuffled: choice's shuffle only permutes the drawn set, which is sorted anyway.
    drawn = rng.choice(len(block), size=min(count, len(block)), replace=False, shuffle=False)
    return (np.sort(drawn) + block.start).tolist()


def pool_block(user_index: int, users: int, blocks: int, pool_size: int) -> range:
    """The positions of the pool that user `user_index` of `users` draws from: slice b of
    `blocks` equal slices, for the user's block b = index x blocks // users (consecutive
    indexes, so a shard of consecutive users holds whole blocks; `counts.pair_blocks`)."""
    block = user_index * blocks // users
    return range(block * pool_size // blocks, (block + 1) * pool_size // blocks)


def block_users(users: int, blocks: int) -> list[range]:
    """The user indexes of each block, the inverse of `pool_block`'s user -> block."""
    return [range(-(-b * users // blocks), -(-(b + 1) * users // blocks)) for b in range(blocks)]


def users_by_block(shard: range, blocks: list[range]) -> list[int]:
    """How many of the users `shard` holds fall in each of `blocks` (`block_users`)."""
    return [max(0, min(shard.stop, b.stop) - max(shard.start, b.start)) for b in blocks]


@dataclass
class ShardInputs:
    """A shard's users (records: a few hundred) and its domain's questions, candidates and
    pair pool, held as plain columns and dicts: the judge reads them once per judged pair."""

    personas: list[Persona]
    questions: dict[str, str]  # question_uuid -> question
    view_of: dict[str, str]  # response_uuid -> its view
    text_of: dict[str, str]  # response_uuid -> its text
    pool: list[CandidatePair]

    def views(self, pair: CandidatePair) -> tuple[str, str]:
        return self.view_of[pair.x], self.view_of[pair.y]

    def texts(self, pair: CandidatePair) -> tuple[str, str]:
        return self.text_of[pair.x], self.text_of[pair.y]


def shard_inputs(spec: ShardSpec, inputs: Inputs, config: JobConfig) -> ShardInputs:
    """The shard's users, and the domain's questions, candidates and shared pair pool."""
    personas = records_from_table(inputs["personas"], Persona)
    questions = _column_dict(inputs["questions"], "question_uuid", "question")
    responses = inputs["responses"].filter(
        pc.is_in(inputs["responses"]["question_uuid"], pa.array(list(questions), pa.string()))
    )
    ids = responses["response_uuid"].to_pylist()
    pool = candidate_pairs(responses["question_uuid"].to_pylist(), ids)
    limit = config.counts.pool_pairs
    if limit is not None and limit < len(pool):
        rng = np.random.default_rng(derived_seed("pool", config.seed, spec.domain))
        pool = [pool[i] for i in sorted(rng.choice(len(pool), size=limit, replace=False))]
    return ShardInputs(
        personas,
        questions,
        _column_dict(responses, "response_uuid", "view"),
        _column_dict(responses, "response_uuid", "response"),
        pool,
    )


def _column_dict(table: pa.Table, key: str, value: str) -> dict[str, str]:
    return dict(zip(table[key].to_pylist(), table[value].to_pylist(), strict=True))
