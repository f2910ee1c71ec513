"""Gold: pairs whose right answer is known by construction, judged like any other pair.

Each user of a shard judges `stages.judge.gold_pairs_per_user` gold pairs from the same pool
the judge stage draws from, in both orders and with the same mode, layout and reading of the
letters (`judging.judge_both_orders`, `judging.reconcile_all`). The domain's gold rule
(`domain.yaml` `gold`) says which pairs qualify and which answer is right:

- trait rules (`shared_parts`, `level_distance`): the pairs where the user's own trait makes
  one candidate's view strictly better (`DomainSpec.gold_answer`); the user's description is
  the one the judge reads anyway;
- `stated_preference`: a probe user, the user's description with a preference between the
  pair's two views appended, the preferred view drawn at random (so a judge that reads only
  the slot is right half of the time).

The gold stage runs before the judge stage so that the gate (`stages.judge.gate`,
`pipeline.gold`) can stop a run whose judge is not good enough before its budget is spent.
Gold judgments never enter episodes: no later stage reads them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import polars as pl

from fspo_data.core.config import JobConfig
from fspo_data.core.records import GoldJudgment, RecordTable, Trait, derived_seed, stable_id
from fspo_data.domains import DomainSpec, load_domain
from fspo_data.judging import LAYOUTS, PairToJudge, judge_both_orders, judge_requests, reconcile_all
from fspo_data.stages.base import (
    Estimate,
    Inputs,
    ShardOutput,
    ShardSpec,
    Stage,
    StageContext,
    StageLoad,
    config_slice,
    gc_paused,
)
from fspo_data.stages.pairs import PAIR_INPUTS, CandidatePair, ShardInputs, shard_inputs

# How a pair is judged; refinement and the flag/gate settings do not touch gold labels.
JUDGING_SETTINGS = tuple(
    f"stages.judge.{name}"
    for name in (
        "layout",
        "mode",
        "min_margin",
        "top_logprobs",
        "samples_per_order",
        "sample_temperature",
        "gold_pairs_per_user",
    )
)


@dataclass(frozen=True)
class GoldProbe:
    """One gold pair for one user: the description the judge reads and the right answer."""

    persona_uuid: str
    pair: CandidatePair
    description: str
    answer_x: bool


def gold_probes(inputs: ShardInputs, domain: DomainSpec, config: JobConfig) -> list[GoldProbe]:
    """Up to `gold_pairs_per_user` gold pairs per user, drawn with a seed of their own.

    Which pairs qualify depends on the user only through the gold trait's value (and not at
    all under the stated rule), so each value's eligible pairs are found once per shard.
    """
    count = config.stages.judge.gold_pairs_per_user
    stated = domain.gold.rule == "stated_preference"
    views = [inputs.views(p) for p in inputs.pool]
    eligible_of: dict[str | None, tuple[list[CandidatePair], list[bool | None]]] = {}
    probes = []
    for persona in inputs.personas:
        rng = np.random.default_rng(derived_seed("gold", config.seed, persona.persona_uuid))
        value = None if stated else domain.gold_trait_value(persona.traits)
        if value not in eligible_of:
            eligible_of[value] = _eligible(inputs.pool, views, persona.traits, domain)
        eligible, fixed = eligible_of[value]
        answers = rng.integers(0, 2, size=len(eligible)).astype(bool) if stated else fixed
        picks = rng.choice(len(eligible), size=min(count, len(eligible)), replace=False)
        for i in sorted(picks.tolist()):
            pair, answer_x = eligible[i], bool(answers[i])
            description = persona.persona_description
            if stated:
                view_x, view_y = inputs.views(pair)
                better, worse = (view_x, view_y) if answer_x else (view_y, view_x)
                description += "\n" + domain.state_preference(better, worse)
            probes.append(GoldProbe(persona.persona_uuid, pair, description, answer_x))
    return probes


def _eligible(
    pool: list[CandidatePair],
    views: list[tuple[str, str]],
    traits: list[Trait],
    domain: DomainSpec,
) -> tuple[list[CandidatePair], list[bool | None]]:
    """The pool's gold pairs for a user with `traits`, and their answers under a trait rule
    (None under the stated rule, whose answers are drawn per user)."""
    if domain.gold.rule == "stated_preference":
        eligible = [p for p, (x, y) in zip(pool, views, strict=True) if x != y]
        return eligible, [None] * len(eligible)
    answered = [(p, domain.gold_answer(traits, *v)) for p, v in zip(pool, views, strict=True)]
    kept = [(p, answer) for p, answer in answered if answer is not None]
    return [p for p, _ in kept], [answer for _, answer in kept]


@gc_paused()
def run(spec: ShardSpec, tables: Inputs, ctx: StageContext) -> ShardOutput:
    config, settings = ctx.config, ctx.config.stages.judge
    domain = load_domain(spec.domain, config.domains_dir)
    inputs = shard_inputs(spec, tables, config)
    counters: Counter[str] = Counter()
    probes = gold_probes(inputs, domain, config)
    if not probes:
        counters["gold_no_pairs"] += 1
        return ShardOutput(records=[], counters=counters)
    pairs = [
        PairToJudge(
            p.description,
            inputs.questions[p.pair.question_uuid],
            *inputs.texts(p.pair),
            derived_seed("gold-judge", p.persona_uuid, p.pair),
        )
        for p in probes
    ]
    first, second = judge_both_orders(ctx.llm("judge"), pairs, settings, counters, "gold")
    verdicts = reconcile_all(first, second, settings)
    answer_x = np.array([p.answer_x for p in probes])
    right = verdicts.prefers_x == answer_x
    score = np.where(verdicts.kept, right.astype(float), GoldJudgment.ABSTAINED)
    counters["gold_pairs_judged"] += len(probes)
    counters["gold_pairs_kept"] += int(verdicts.kept.sum())
    counters["gold_pairs_right"] += int((score == 1.0).sum())
    views = [inputs.views(p.pair) for p in probes]
    frame = pl.DataFrame(
        {
            "judgment_uuid": [
                stable_id("gold", p.persona_uuid, p.pair.x, p.pair.y) for p in probes
            ],
            "persona_uuid": [p.persona_uuid for p in probes],
            "question_uuid": [p.pair.question_uuid for p in probes],
            "domain": [spec.domain] * len(probes),
            "rule": [domain.gold.rule] * len(probes),
            "persona_description": [p.description for p in probes],
            "response_x_uuid": [p.pair.x for p in probes],
            "response_y_uuid": [p.pair.y for p in probes],
            "view_x": [v[0] for v in views],
            "view_y": [v[1] for v in views],
            "answer_x": answer_x,
            "margin_first": first,
            "margin_second": second,
            "debiased_margin": verdicts.debiased_margin,
            "kept": verdicts.kept,
            "drop_reason": verdicts.drop_reason.tolist(),
            "prefers_x": verdicts.prefers_x,
            "score": score,
        }
    )
    schema = GoldJudgment.arrow_schema()
    table = frame.select(schema.names).to_arrow().cast(schema)
    return ShardOutput(records=RecordTable(table, GoldJudgment), counters=counters)


def estimate(config: JobConfig, domain: DomainSpec, est: Estimate) -> list[StageLoad]:
    """Both orders x samples_per_order per gold pair, `gold_pairs_per_user` pairs per user
    (an upper bound: a user with fewer eligible pairs judges fewer). The prompt is the
    judge's, its description carrying one stated preference under the stated rule."""
    settings = config.stages.judge
    view, response = est.stand_ins["view"], est.stand_ins["response"]
    description = est.stand_ins["description"]
    if domain.gold.rule == "stated_preference":
        description += "\n" + domain.state_preference(view, view)
    question = est.stand_ins["question"]
    request = judge_requests(description, question, response, response, settings, 0)[0]
    calls = config.counts.users * settings.gold_pairs_per_user * 2 * settings.samples_per_order
    return [est.load("gold", calls, request)]


STAGE = Stage(
    name="gold",
    record_type=GoldJudgment,
    roles=("judge",),
    inputs=PAIR_INPUTS,
    settings=config_slice("seed", "counts.pool_pairs", *JUDGING_SETTINGS),
    # The judge's templates (stages.judge.layout picks one) and the domain's gold rule, which
    # lives in domain.yaml and so in every shard's domain hash.
    prompts=lambda _: tuple(layout.template for layout in LAYOUTS.values()),
    enabled=lambda config: config.stages.judge.gold_pairs_per_user > 0,
    run=run,
    estimate=estimate,
)
