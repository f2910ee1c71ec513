"""The candidate-pair pool of a domain and the pairs each user draws from it: what the judge
and gold stages both read, so a gold pair comes from the same pool a user's labels do."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from fspo_data.core.config import JobConfig
from fspo_data.core.records import Persona, Question, Response, derived_seed
from fspo_data.stages.base import Inputs, ShardSpec, StageInput, records_from_table

# What a stage over a shard's users and its domain's pair pool reads: its users shard by shard,
# every question and candidate of the domain.
PAIR_INPUTS = (
    StageInput(stage="personas", align="shard"),
    StageInput(stage="questions", align="domain"),
    StageInput(stage="responses", align="domain"),
)


@dataclass(frozen=True)
class CandidatePair:
    question_uuid: str
    x: str
    y: str


def candidate_pairs(responses: list[Response]) -> list[CandidatePair]:
    """All unordered pairs of candidates per question, x < y by id, in a stable order."""
    by_question: dict[str, list[str]] = {}
    for r in responses:
        by_question.setdefault(r.question_uuid, []).append(r.response_uuid)
    return [
        CandidatePair(q, x, y)
        for q in sorted(by_question)
        for x, y in itertools.combinations(sorted(by_question[q]), 2)
    ]


def assign_pairs(
    persona_uuid: str, pool: list[CandidatePair], count: int, seed: int
) -> list[CandidatePair]:
    """A seeded sample of `count` pairs (all of them if the pool is smaller) for one user.

    Users draw from the same pool, so the same pair is labelled by many users.
    """
    rng = np.random.default_rng(derived_seed("pairs", seed, persona_uuid))
    picks = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[i] for i in sorted(picks)]


@dataclass
class ShardInputs:
    personas: list[Persona]
    questions: dict[str, str]
    responses: dict[str, Response]
    pool: list[CandidatePair]

    def views(self, pair: CandidatePair) -> tuple[str, str]:
        return self.responses[pair.x].view, self.responses[pair.y].view

    def texts(self, pair: CandidatePair) -> tuple[str, str]:
        return self.responses[pair.x].response, self.responses[pair.y].response


def shard_inputs(spec: ShardSpec, inputs: Inputs, config: JobConfig) -> ShardInputs:
    """The shard's users, and the domain's questions, candidates and shared pair pool."""
    personas = records_from_table(inputs["personas"], Persona)
    questions = {
        q.question_uuid: q.question for q in records_from_table(inputs["questions"], Question)
    }
    responses = [
        r for r in records_from_table(inputs["responses"], Response) if r.question_uuid in questions
    ]
    pool = candidate_pairs(responses)
    limit = config.counts.pool_pairs
    if limit is not None and limit < len(pool):
        rng = np.random.default_rng(derived_seed("pool", config.seed, spec.domain))
        pool = [pool[i] for i in sorted(rng.choice(len(pool), size=limit, replace=False))]
    return ShardInputs(personas, questions, {r.response_uuid: r for r in responses}, pool)
