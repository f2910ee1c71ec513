"""Episodes: per user, N labelled shots plus one query pair, as FSPO prompt/chosen/rejected.

Splits: a held-out user's episodes all go to `test_users`; a pair on a held-out question is
only ever a query, in `test_questions`, with shots from that user's other pairs; `train`
never sees a held-out user or question.

A shard's episodes are cut per user (a seeded shuffle, then windows); their columns are
gathered from the judgments table with Arrow takes and their prompts assembled with Arrow
string kernels (`prompt_column`, tested byte for byte against `format_prompt`). Only the
episode ids (blake2b) are made row by row.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fspo_data.core.config import JobConfig
from fspo_data.core.fspo_format import completion_column, prompt_column
from fspo_data.core.records import (
    Episode,
    Judgment,
    Persona,
    RecordTable,
    derived_seed,
    id_key,
    id_key_column,
    id_of,
    to_table,
)
from fspo_data.domains import load_domain
from fspo_data.stages.base import (
    Inputs,
    ShardOutput,
    ShardSpec,
    Stage,
    StageContext,
    StageInput,
    config_slice,
    gc_paused,
    records_from_table,
)

SHOT_FIELDS = ("judgment_uuid", "question", "chosen", "rejected")


def held_out(seed: int, kind: str, uuid: str, fraction: float) -> bool:
    """A stable coin flip per id, so every shard agrees without reading the others."""
    return derived_seed("split", kind, seed, uuid) / (2**31 - 1) < fraction


class PlannedEpisode(NamedTuple):
    split: str
    query: int
    shots: list[int]


def window_episode(window: np.ndarray, questions: np.ndarray, split: str) -> PlannedEpisode | None:
    """A window of shots+1 pair positions as an episode whose query's question is in none of
    its shots: the last pair whose question is alone in the window is the query (the window's
    last pair when it can be, as before). None when every question occurs twice or more.

    questions: (k,) a question code per pair of the user, indexed by the positions."""
    codes = questions[window].tolist()
    # A window is a few shots long: counting in the list beats building a Counter.
    query = next((i for i in range(len(codes) - 1, -1, -1) if codes.count(codes[i]) == 1), None)
    if query is None:
        return None
    shots = window.tolist()
    return PlannedEpisode(split, shots.pop(query), shots)


def cut_user(
    persona_uuid: str,
    questions: np.ndarray,
    test_question: np.ndarray,
    user_held_out: bool,
    shots: int,
    seed: int,
    repeats: int,
    counters: Counter[str],
) -> list[PlannedEpisode]:
    """Episodes of one user, as positions into the user's kept pairs sorted by judgment id.

    questions: (k,) a question code per kept pair; test_question: (k,) whether its question
    is held out. The pairs are shuffled with a seed of the user; non-overlapping windows of
    shots+1 make train (or test_users) episodes, `repeats` times over for train, each pass a
    new shuffle (the first pass's seed is the one used before repeats existed); each
    held-out-question pair becomes a query with `shots` seeded picks of the user's other
    pairs as shots. A window in which no pair's question is alone is skipped and counted.
    """
    rng = np.random.default_rng(derived_seed("episodes", seed, persona_uuid))
    order = rng.permutation(len(test_question))
    if user_held_out:
        seen, queries, split = order, order[:0], "test_users"
    else:
        test = test_question[order]
        seen, queries, split = order[~test], order[test], "train"
    passes = [seen]
    for repeat in range(1, 1 if user_held_out else repeats):
        again = np.random.default_rng(derived_seed("episodes", seed, persona_uuid, repeat))
        passes.append(again.permutation(seen))
    episodes = []
    for pairs in passes:
        windows = len(pairs) // (shots + 1)
        for window in pairs[: windows * (shots + 1)].reshape(windows, shots + 1):
            episode = window_episode(window, questions, split)
            if episode is None:
                counters["windows_skipped_query_in_shots"] += 1
            else:
                episodes.append(episode)
    if len(seen) >= shots:
        # Held-out questions are in no shot (`seen` excludes them), so no query's question is.
        for query in queries.tolist():
            picks = np.sort(rng.choice(len(seen), size=shots, replace=False))
            episodes.append(PlannedEpisode("test_questions", query, seen[picks].tolist()))
    return episodes


def kept_pairs(judgments: pa.Table) -> pa.Table:
    """The kept judgments, user by user, each user's sorted by judgment id (as they are cut)."""
    return judgments.filter(pc.field("kept")).sort_by(
        [("persona_uuid", "ascending"), ("judgment_uuid", "ascending")]
    )


def plan_shard(
    personas: list[Persona], kept: pa.Table, config: JobConfig, counters: Counter[str]
) -> tuple[list[int], list[PlannedEpisode]]:
    """(e,) persona index and planned episode, with positions made rows of `kept`."""
    users, starts, counts = np.unique(
        kept["persona_uuid"].to_numpy(zero_copy_only=False), return_index=True, return_counts=True
    )
    rows_of = dict(
        zip(users.tolist(), zip(starts.tolist(), counts.tolist(), strict=True), strict=True)
    )
    splits = config.splits
    questions = pc.unique(kept["question_uuid"]).to_pylist()
    held = [
        q for q in questions if held_out(config.seed, "question", q, splits.test_question_fraction)
    ]
    test_question = pc.is_in(kept["question_uuid"], value_set=pa.array(held, pa.string()))
    test_question = test_question.to_numpy(zero_copy_only=False)
    question_codes = pc.index_in(kept["question_uuid"], value_set=pa.array(questions, pa.string()))
    question_codes = question_codes.to_numpy(zero_copy_only=False)
    owners: list[int] = []
    planned: list[PlannedEpisode] = []
    for index, persona in enumerate(personas):
        start, count = rows_of.get(persona.persona_uuid, (0, 0))
        domain = load_domain(persona.domain, config.domains_dir)
        user_held_out = domain.is_held_out_user(persona.traits) or held_out(
            config.seed, "user", persona.persona_uuid, splits.test_user_fraction
        )
        for e in cut_user(
            persona.persona_uuid,
            question_codes[start : start + count],
            test_question[start : start + count],
            user_held_out,
            domain.shots(config.counts),
            config.seed,
            config.episodes.repeats,
            counters,
        ):
            owners.append(index)
            planned.append(PlannedEpisode(e.split, start + e.query, [start + s for s in e.shots]))
    return owners, planned


def episode_table(
    personas_table: pa.Table,
    judgments: pa.Table,
    config: JobConfig,
    counters: Counter[str],
    duplicate_users: pa.Table | None = None,
) -> pa.Table:
    """(e,) episodes with Episode's schema from a shard's personas and (j,) judgments.

    Episodes come user by user in persona order; the description is the one the labels
    follow (after refinement), taken from the query judgment. Users listed in
    `duplicate_users` (`persona_duplicates` records) get none; an episode a repeat pass cuts
    again (same query, same shots in the same order: the same id) is kept once.
    """
    if duplicate_users is not None and duplicate_users.num_rows:
        flagged = pc.is_in(
            personas_table["persona_uuid"], value_set=duplicate_users["persona_uuid"]
        )
        counters["users_skipped_duplicate_persona"] += pc.sum(flagged).as_py()
        personas_table = personas_table.filter(pc.invert(flagged))
    personas = records_from_table(personas_table, Persona)
    kept = kept_pairs(judgments)
    owners, planned = plan_shard(personas, kept, config, counters)
    # stable_id("episode", user, query id, *shot ids): each part's id_key made once and the
    # keys of an episode joined in Arrow; only the hashing is row by row.
    judgment_keys = id_key_column(kept["judgment_uuid"])
    user_keys = pa.array(
        [id_key("episode", persona.persona_uuid) for persona in personas], pa.binary()
    )
    parts = [[e.query, *e.shots] for e in planned]
    episode_keys = pc.binary_join_element_wise(
        user_keys.take(pa.array(owners, pa.int64())),
        pc.binary_join(
            pa.ListArray.from_arrays(
                pa.array(np.cumsum([0] + [len(p) for p in parts]), pa.int32()),
                judgment_keys.take(pa.array([r for p in parts for r in p], pa.int64())),
            ),
            pa.scalar(b"", pa.binary()),
        ),
        pa.scalar(b"", pa.binary()),
    )
    episode_ids = [id_of(key) for key in episode_keys.to_pylist()]
    first = np.unique(np.array(episode_ids, dtype=object), return_index=True)[1]
    if dropped := len(episode_ids) - len(first):
        counters["repeat_duplicates_dropped"] += dropped
        unique = np.sort(first).tolist()
        owners, planned = [owners[i] for i in unique], [planned[i] for i in unique]
        episode_ids = [episode_ids[i] for i in unique]
    query = kept.take(pa.array([e.query for e in planned], pa.int64()))
    shot_rows = pa.array([r for e in planned for r in e.shots], pa.int64())
    offsets = pa.array(np.cumsum([0] + [len(e.shots) for e in planned]), pa.int32())
    shot_values = kept.select(list(SHOT_FIELDS)).take(shot_rows)
    shots = pa.ListArray.from_arrays(
        offsets,
        pa.StructArray.from_arrays(
            [c.combine_chunks() for c in shot_values.columns], names=list(SHOT_FIELDS)
        ),
    )
    owner_uuids = [personas[i].persona_uuid for i in owners]
    columns = {
        "episode_uuid": episode_ids,
        "persona_uuid": owner_uuids,
        "domain": [personas[i].domain for i in owners],
        "split": [e.split for e in planned],
        "persona_description": query["persona_description"],
        "traits": personas_table["traits"].take(pa.array(owners, pa.int64())),
        "shots": shots,
        "query_judgment_uuid": query["judgment_uuid"],
        "query_question_uuid": query["question_uuid"],
        "query_question": query["question"],
        "query_chosen": query["chosen"],
        "query_rejected": query["rejected"],
        "confidence": query["confidence"],
        "prompt": prompt_column(shots, query["question"].combine_chunks()),
        "chosen": completion_column(query["chosen"].combine_chunks()),
        "rejected": completion_column(query["rejected"].combine_chunks()),
    }
    counters.update(f"episodes_{e.split}" for e in planned)
    if without := len(personas) - len(set(owners)):
        counters["users_without_episode"] += without
    schema = Episode.arrow_schema()
    return pa.Table.from_arrays(
        [
            pa.array(columns[f.name], f.type)
            if isinstance(columns[f.name], list)
            else columns[f.name]
            for f in schema
        ],
        schema=schema,
    )


def user_episodes(persona: Persona, judgments: list[Judgment], config: JobConfig) -> list[Episode]:
    """One user's episodes: `episode_table` on a shard of one user."""
    table = episode_table(
        to_table([persona], Persona), to_table(judgments, Judgment), config, Counter()
    )
    return list(RecordTable(table, Episode))


@gc_paused()
def run(spec: ShardSpec, inputs: Inputs, ctx: StageContext) -> ShardOutput:
    counters: Counter[str] = Counter()
    table = episode_table(
        inputs["personas"], inputs["judge"], ctx.config, counters, inputs["persona_duplicates"]
    )
    return ShardOutput(records=RecordTable(table, Episode), counters=counters)


STAGE = Stage(
    name="episodes",
    record_type=Episode,
    inputs=(
        StageInput(stage="personas", align="shard"),
        StageInput(stage="judge", align="shard"),
        StageInput(stage="persona_duplicates", align="domain"),
    ),
    settings=config_slice("seed", "counts.shots", "splits", "episodes"),
    run=run,
)
