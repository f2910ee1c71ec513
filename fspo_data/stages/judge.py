"""Judge: each user labels candidate pairs, every pair asked in both orders.

The verdict is read from the log-probabilities of the letters "A" and "B" for the first
generated token (no free text is parsed); the margin is kept as the label's confidence.
How the two orders combine into a verdict is `fspo_data.judging`'s (shared with the
trainer's evaluation judge); this stage assigns pairs to users, refines personas and writes
the judgments.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from fspo_data.core.chat import LLMBackend
from fspo_data.core.config import JobConfig, JudgeConfig
from fspo_data.core.config_files import config_leaves
from fspo_data.core.records import Judgment, RecordTable, id_key, id_of, seed_of
from fspo_data.domains import DomainSpec, load_domain
from fspo_data.judging import (
    LAYOUTS,
    PairToJudge,
    Verdicts,
    cache_groups,
    choose_stated_preferences,
    judge_both_orders,
    judge_requests,
    reconcile_all,
    shared_prefix,
)
from fspo_data.stages.base import (
    Estimate,
    Inputs,
    ShardOutput,
    ShardSpec,
    Stage,
    StageContext,
    StageLoad,
    gc_paused,
)
from fspo_data.stages.pairs import (
    PAIR_INPUTS,
    CandidatePair,
    ShardInputs,
    assign_pairs,
    block_users,
    pool_block,
    shard_inputs,
    users_by_block,
)


@dataclass
class Margins:
    """(j,) margins of every (user, pair) job in both orders; NaN where no letter was read."""

    first: np.ndarray
    second: np.ndarray

    def lean(self) -> np.ndarray:
        """(j,) debiased margins, 0 where an order gave no verdict."""
        return np.nan_to_num((self.first - self.second) / 2, nan=0.0)


@dataclass
class Pool:
    """The shard's pair pool column by column: what each judged pair reads by its position,
    and the id keys (`records.id_key`) its seed and judgment id are hashed from."""

    pairs: list[CandidatePair]
    questions: list[str]
    texts: list[tuple[str, str]]  # x, y
    views: list[tuple[str, str]]
    seed_keys: list[bytes]  # of the pair, for derived_seed("judge", user, pair)
    id_keys: list[bytes]  # of (x, y), for stable_id("judgment", user, x, y)

    @classmethod
    def of(cls, inputs: ShardInputs) -> Pool:
        pairs = inputs.pool
        return cls(
            pairs=pairs,
            questions=[inputs.questions[p.question_uuid] for p in pairs],
            texts=[inputs.texts(p) for p in pairs],
            views=[inputs.views(p) for p in pairs],
            seed_keys=[id_key(p) for p in pairs],
            id_keys=[id_key(p.x, p.y) for p in pairs],
        )


@dataclass
class Jobs:
    """(j,) the (user, pair) judgments of a shard, user by user: the user, the pair's position
    in the pool, and the sampling seed every pass over it keeps (refinement changes only the
    user's description)."""

    users: list[str]
    pairs: list[int]
    seeds: list[int]

    @classmethod
    def assign(cls, inputs: ShardInputs, pool: Pool, config: JobConfig) -> Jobs:
        users, pairs, seeds = [], [], []
        counts = config.counts
        for persona in inputs.personas:
            user = persona.persona_uuid
            block = pool_block(persona.index, counts.users, counts.pair_blocks, len(pool.pairs))
            drawn = assign_pairs(user, block, counts.pairs_per_user, config.seed)
            key = id_key("judge", user)
            users += [user] * len(drawn)
            pairs += drawn
            seeds += [seed_of(key + pool.seed_keys[i]) for i in drawn]
        return cls(users=users, pairs=pairs, seeds=seeds)

    def take(self, rows: list[int]) -> Jobs:
        columns = {f.name: getattr(self, f.name) for f in fields(self)}
        return Jobs(**{name: [column[r] for r in rows] for name, column in columns.items()})


def judge_pass(
    backend: LLMBackend,
    settings: JudgeConfig,
    pool: Pool,
    jobs: Jobs,
    descriptions: dict[str, str],
    counters: Counter[str],
) -> Margins:
    """Both orders of every job, judged with the user's current description; the margins
    come back in job order."""
    questions, texts = pool.questions, pool.texts
    pairs = [
        PairToJudge(descriptions[user], questions[pair], *texts[pair], seed)
        for user, pair, seed in zip(jobs.users, jobs.pairs, jobs.seeds, strict=True)
    ]
    return Margins(*judge_both_orders(backend, pairs, settings, counters, "judge"))


def refine(
    inputs: ShardInputs,
    pool: Pool,
    jobs: Jobs,
    margins: Margins,
    ctx: StageContext,
    domain: DomainSpec,
    counters: Counter[str],
) -> dict[str, str]:
    """Refinement rounds; updates `margins` in place and returns the final descriptions."""
    settings = ctx.config.stages.judge
    descriptions = {p.persona_uuid: p.persona_description for p in inputs.personas}
    rows_of: dict[str, list[int]] = {}
    for row, user in enumerate(jobs.users):
        rows_of.setdefault(user, []).append(row)
    for _ in range(settings.refine_rounds):
        settled = reconcile_all(margins.first, margins.second, settings).kept.tolist()
        lean = margins.lean().tolist()
        changed = []
        for user, rows in rows_of.items():
            unsettled = [(*pool.views[jobs.pairs[r]], lean[r]) for r in rows if not settled[r]]
            statements = choose_stated_preferences(
                descriptions[user], unsettled, domain, settings.stated_preferences_per_round
            )
            if statements:
                descriptions[user] = "\n".join([descriptions[user], *statements])
                counters["stated_preferences_added"] += len(statements)
                changed.append(user)
        if not changed:
            break
        counters["refine_rounds_run"] += 1
        counters["users_refined"] += len(changed)
        rows = [row for user in changed for row in rows_of[user]]
        relabelled = judge_pass(
            ctx.llm("judge"), settings, pool, jobs.take(rows), descriptions, counters
        )
        margins.first[rows], margins.second[rows] = relabelled.first, relabelled.second
    return descriptions


def count_verdicts(verdicts: Verdicts, counters: Counter[str]) -> None:
    counters["pairs_judged"] += len(verdicts.kept)
    reasons, counts = np.unique(verdicts.drop_reason, return_counts=True)
    for reason, count in zip(reasons.tolist(), counts.tolist(), strict=True):
        counters["pairs_kept" if reason == "" else f"pairs_dropped_{reason}"] += count


ID_COLUMNS = (
    "judgment_uuid",
    "persona_uuid",
    "question_uuid",
    "response_x_uuid",
    "response_y_uuid",
)


def judgment_table(
    pool: Pool,
    jobs: Jobs,
    margins: Margins,
    initial_lean: np.ndarray,
    descriptions: dict[str, str],
    inputs: ShardInputs,
    domain: DomainSpec,
    verdicts: Verdicts,
) -> pa.Table:
    """The (j',) judgments with a verdict, in job order, as a table with Judgment's schema.

    Texts and views are joined in by id, chosen/rejected are picked column-wise; only the
    record ids (blake2b) and elix's easy/hard tag are computed row by row.
    """
    rows = np.flatnonzero(verdicts.drop_reason != "no_verdict")
    judged = jobs.take(rows.tolist())
    users, pairs = judged.users, [pool.pairs[i] for i in judged.pairs]
    personas = {p.persona_uuid: p for p in inputs.personas}
    user_keys = {user: id_key("judgment", user) for user in personas}
    frame = pl.DataFrame(
        {
            "judgment_uuid": [
                id_of(user_keys[u] + pool.id_keys[i])
                for u, i in zip(users, judged.pairs, strict=True)
            ],
            "persona_uuid": users,
            "question_uuid": [p.question_uuid for p in pairs],
            "response_x_uuid": [p.x for p in pairs],
            "response_y_uuid": [p.y for p in pairs],
            "margin_first": margins.first[rows],
            "margin_second": margins.second[rows],
            "debiased_margin": verdicts.debiased_margin[rows],
            "initial_debiased_margin": initial_lean[rows],
            "kept": verdicts.kept[rows],
            "drop_reason": verdicts.drop_reason[rows].tolist(),
            "prefers_x": verdicts.prefers_x[rows],
        },
        # Typed even when no pair got a verdict, so the joins below still line up.
        schema_overrides=dict.fromkeys(ID_COLUMNS, pl.String),
    )
    user_frame = pl.DataFrame(
        {
            "persona_uuid": list(descriptions),
            "domain": [personas[u].domain for u in descriptions],
            "persona_description": list(descriptions.values()),
            "refined": [d != personas[u].persona_description for u, d in descriptions.items()],
        }
    )
    texts = pl.DataFrame(
        {
            "uuid": list(inputs.text_of),
            "text": list(inputs.text_of.values()),
            "view": [inputs.view_of[uuid] for uuid in inputs.text_of],
        }
    )
    questions = pl.DataFrame(
        {"question_uuid": list(inputs.questions), "question": list(inputs.questions.values())}
    )
    x_first = pl.col("prefers_x")
    frame = (
        frame.with_columns(
            chosen_uuid=pl.when(x_first).then("response_x_uuid").otherwise("response_y_uuid"),
            rejected_uuid=pl.when(x_first).then("response_y_uuid").otherwise("response_x_uuid"),
            confidence=pl.col("debiased_margin").abs(),
        )
        .join(user_frame, on="persona_uuid", how="left", maintain_order="left")
        .join(questions, on="question_uuid", how="left", maintain_order="left")
        .join(_prefixed(texts, "chosen"), on="chosen_uuid", how="left", maintain_order="left")
        .join(_prefixed(texts, "rejected"), on="rejected_uuid", how="left", maintain_order="left")
        .rename({"chosen_text": "chosen", "rejected_text": "rejected"})
    )
    difficulty = [""] * frame.height
    if domain.responses.view_matches_trait:
        difficulty = [
            domain.pair_difficulty(personas[u].traits, *pool.views[i])
            for u, i in zip(users, judged.pairs, strict=True)
        ]
    frame = frame.with_columns(difficulty=pl.Series(difficulty, dtype=pl.String))
    schema = Judgment.arrow_schema()
    return frame.select(schema.names).to_arrow().cast(schema)


def _prefixed(texts: pl.DataFrame, role: str) -> pl.DataFrame:
    return texts.rename({"uuid": f"{role}_uuid", "text": f"{role}_text", "view": f"{role}_view"})


@gc_paused()
def run(spec: ShardSpec, tables: Inputs, ctx: StageContext) -> ShardOutput:
    config, settings = ctx.config, ctx.config.stages.judge
    domain = load_domain(spec.domain, config.domains_dir)
    inputs = shard_inputs(spec, tables, config)
    counters: Counter[str] = Counter()
    if not inputs.pool:
        counters["judge_no_pairs"] += 1
        return ShardOutput(records=[], counters=counters)
    pool = Pool.of(inputs)
    jobs = Jobs.assign(inputs, pool, config)
    descriptions = {p.persona_uuid: p.persona_description for p in inputs.personas}
    margins = judge_pass(ctx.llm("judge"), settings, pool, jobs, descriptions, counters)
    initial_lean = margins.lean()
    descriptions = refine(inputs, pool, jobs, margins, ctx, domain, counters)
    verdicts = reconcile_all(margins.first, margins.second, settings)
    count_verdicts(verdicts, counters)
    table = judgment_table(
        pool, jobs, margins, initial_lean, descriptions, inputs, domain, verdicts
    )
    return ShardOutput(records=RecordTable(table, Judgment), counters=counters)


def estimate(config: JobConfig, domain: DomainSpec, est: Estimate) -> list[StageLoad]:
    """Both orders x samples_per_order per pair, for the first pass and each refinement round
    (whose descriptions carry the preferences stated so far; every user counted as relabelled,
    an upper bound).

    Cached tokens: a pass over a shard sends its requests in prefix order, so each cache
    group's shared prefix (S tokens, `judging.shared_prefix`: under pair_first all but the
    user's description and the short cue after it, the instruction included) is computed once
    and served to the group's other calls: with C calls and G groups (`judging.cache_groups`)
    per shard and pass, cached = (C - G) S, summed over the persona plan's shards. Nothing
    shared across shards or passes is counted, nor samples_per_order > 1 repeats beyond the
    prefix: a lower bound wherever the cache holds a group's prefix while its (contiguous)
    calls run.
    """
    counts, settings = config.counts, config.stages.judge
    pool = counts.questions * math.comb(est.counts["candidates"], 2)
    if counts.pool_pairs is not None:
        pool = min(pool, counts.pool_pairs)
    est.counts["pool_pairs"] = pool
    blocks = block_users(counts.users, counts.pair_blocks)
    block_pool = pool // counts.pair_blocks
    pairs_per_user = est.counts["pairs_per_user"] = min(counts.pairs_per_user, block_pool)
    calls_per_user = pairs_per_user * 2 * settings.samples_per_order
    view, response = est.stand_ins["view"], est.stand_ins["response"]
    statement = domain.state_preference(view, view)
    per_shard = config.sharding.users_per_shard  # judge shards follow the persona plan
    shards = [range(s, min(s + per_shard, counts.users)) for s in range(0, counts.users, per_shard)]
    groups = sum(
        cache_groups(settings.layout, users, pairs_per_user, block_pool)
        for shard in shards
        for users in users_by_block(shard, blocks)
    )
    total = StageLoad("judge")
    for round_ in range(settings.refine_rounds + 1):
        stated = [statement] * (round_ * settings.stated_preferences_per_round)
        values = {
            "persona": "\n".join([est.stand_ins["description"], *stated]),
            "question": est.stand_ins["question"],
            "response_a": response,
            "response_b": response,
        }
        request = judge_requests(*values.values(), settings, 0)[0]
        load = est.load("judge", counts.users * calls_per_user, request)
        cached = 0
        if config.roster().of("judge").enable_prefix_caching and calls_per_user:
            prefix = math.ceil(len(shared_prefix(settings.layout, values)) / est.chars_per_token)
            cached = round((counts.users * calls_per_user - groups) * prefix)
        total = total + StageLoad("judge", load.calls, load.prompt_tokens, cached, load.calls)
    return [total]


# The settings that change labels: `flag_*` only shape the run's statistics, the gold
# stage's own settings its gold pairs (stages/gold.py).
LABEL_SETTINGS = tuple(
    f"stages.judge.{name}"
    for name in JudgeConfig.model_fields
    if name not in {"flag_agreement", "flag_min_shared", "gold_pairs_per_user", "gate"}
)


def settings(config: JobConfig) -> dict[str, Any]:
    paths = ["seed", "counts.pairs_per_user", "counts.pool_pairs", *LABEL_SETTINGS]
    # Blocks deal users to pool slices by index over all users: then the user count shapes
    # every user's pairs. Otherwise it only says how far the shards go.
    if config.counts.pair_blocks > 1:
        paths += ["counts.pair_blocks", "counts.users"]
    return config_leaves(config, paths)


STAGE = Stage(
    name="judge",
    record_type=Judgment,
    roles=("judge",),
    inputs=PAIR_INPUTS,
    settings=settings,
    # Both layouts' templates: `stages.judge.layout`, in its settings, picks the one rendered.
    prompts=lambda _: tuple(layout.template for layout in LAYOUTS.values()),
    run=run,
    estimate=estimate,
)
