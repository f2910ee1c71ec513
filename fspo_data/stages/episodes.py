"""Episodes: per user, N labelled shots plus one query pair, as FSPO prompt/chosen/rejected.

Splits: a held-out user's episodes all go to `test_users`; a pair on a held-out question is
only ever a query, in `test_questions`, with shots from that user's other pairs; `train`
never sees a held-out user or question.

A shard's episodes are drawn per user (a seeded shuffle, seeded picks) and cut for the whole
shard at once (windows, each window's query); their columns are gathered from the judgments
table with Arrow takes and their prompts assembled with Arrow string kernels (`prompt_column`,
tested byte for byte against `format_prompt`). Only the draws and the episode ids' hashing
(blake2b) are row by row.
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
)

SHOT_FIELDS = ("judgment_uuid", "question", "chosen", "rejected")


def held_out(seed: int, kind: str, uuid: str, fraction: float) -> bool:
    """A stable coin flip per id, so every shard agrees without reading the others."""
    return derived_seed("split", kind, seed, uuid) / (2**31 - 1) < fraction


class Planned(NamedTuple):
    """(e,) planned episodes, as rows of the shard's kept pairs: owner (persona index),
    split, query row and shots rows (e, shots)."""

    owner: np.ndarray
    split: np.ndarray
    query: np.ndarray
    shots: np.ndarray

    def take(self, rows: np.ndarray) -> Planned:
        return Planned(self.owner[rows], self.split[rows], self.query[rows], self.shots[rows])


def window_queries(windows: np.ndarray, questions: np.ndarray) -> np.ndarray:
    """(w,) the column of each window (a row of shots+1 pair rows) that is its query: the
    last pair whose question is alone in the window, so that no shot shares the query's
    question; -1 where every question occurs twice or more.

    questions: a question code per pair row."""
    codes = questions[windows]
    alone = (codes[:, :, None] == codes[:, None, :]).sum(axis=2) == 1
    last = windows.shape[1] - 1 - np.argmax(alone[:, ::-1], axis=1)
    return np.where(alone.any(axis=1), last, -1)


def _windows(
    passes: list[tuple[np.ndarray, np.ndarray]], width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(w,) owner and (w, width) rows: each user's non-overlapping windows of a pass,
    user by user; passes: (owner, rows) of each user's pass, concatenated in that order."""
    if not passes:
        return np.zeros(0, np.int64), np.zeros((0, width), np.int64)
    owner = np.concatenate([np.full(len(rows), user) for user, rows in passes])
    rows = np.concatenate([rows for _, rows in passes])
    lengths = np.array([len(rows) for _, rows in passes])
    starts = np.cumsum(lengths) - lengths
    rank = np.arange(len(rows)) - np.repeat(starts, lengths)
    whole = rank < np.repeat(lengths // width * width, lengths)
    return owner[whole][::width], rows[whole].reshape(-1, width)


def kept_pairs(judgments: pa.Table) -> pa.Table:
    """The kept judgments, user by user, each user's sorted by judgment id (as they are cut)."""
    return judgments.filter(pc.field("kept")).sort_by(
        [("persona_uuid", "ascending"), ("judgment_uuid", "ascending")]
    )


def plan_shard(
    personas: pa.Table, kept: pa.Table, config: JobConfig, counters: Counter[str]
) -> Planned:
    """Each user's episodes, user by user in persona order, as rows of `kept` (the user's
    kept pairs sorted by judgment id).

    The pairs are shuffled with a seed of the user; non-overlapping windows of shots+1 make
    train (or test_users) episodes, `repeats` times over for train, each pass a new shuffle
    (the first pass's seed is the one used before repeats existed); each held-out-question
    pair becomes a query with `shots` seeded picks of the user's other pairs as shots. A
    window in which no pair's question is alone is skipped and counted. Only the draws are
    made user by user; the windows are cut for the whole shard at once.
    """
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
    # (pass, width) -> [(owner, rows)] of the window passes; the query episodes of held-out
    # questions as (owner, query row, shot rows).
    passes: dict[tuple[int, int, str], list[tuple[int, np.ndarray]]] = {}
    queries: list[tuple[int, int, np.ndarray]] = []
    uuids, names = personas["persona_uuid"].to_pylist(), personas["domain"].to_pylist()
    traits = personas["traits"].combine_chunks()
    held_by_traits, shots_of = np.zeros(len(uuids), bool), {}
    for name in set(names):
        domain = load_domain(name, config.domains_dir)
        held_by_traits |= (np.array(names) == name) & domain.held_out_users(traits)
        shots_of[name] = domain.shots(config.counts)
    for index, (uuid, name) in enumerate(zip(uuids, names, strict=True)):
        start, count = rows_of.get(uuid, (0, 0))
        user_held_out = bool(held_by_traits[index]) or held_out(
            config.seed, "user", uuid, splits.test_user_fraction
        )
        shots = shots_of[name]
        rng = np.random.default_rng(derived_seed("episodes", config.seed, uuid))
        order = rng.permutation(count) + start
        if user_held_out:
            seen, asked, split = order, order[:0], "test_users"
        else:
            test = test_question[order]
            seen, asked, split = order[~test], order[test], "train"
        passes.setdefault((0, shots + 1, split), []).append((index, seen))
        for repeat in range(1, 1 if user_held_out else config.episodes.repeats):
            again = np.random.default_rng(derived_seed("episodes", config.seed, uuid, repeat))
            passes.setdefault((repeat, shots + 1, split), []).append(
                (index, seen[again.permutation(len(seen))])
            )
        if len(seen) >= shots:
            # Held-out questions are in no shot (`seen` excludes them), so no query's is.
            for query in asked.tolist():
                picks = np.sort(rng.choice(len(seen), size=shots, replace=False))
                queries.append((index, query, seen[picks]))
    widths = {width for _, width, _ in passes}
    if len(widths) > 1:
        raise ValueError(f"episodes: a shard's users have {len(widths)} shot counts, not one")
    width = widths.pop() if widths else 1
    parts, sections = [], []
    for (repeat, _, split), users_passes in passes.items():
        owner, windows = _windows(users_passes, width)
        column = window_queries(windows, question_codes)
        skipped = column < 0
        if skipped.any():
            counters["windows_skipped_query_in_shots"] += int(skipped.sum())
        owner, windows, column = owner[~skipped], windows[~skipped], column[~skipped]
        is_query = np.arange(width) == column[:, None]
        parts.append(
            Planned(
                owner,
                np.full(len(owner), split, dtype=object),
                windows[is_query],
                windows[~is_query].reshape(len(owner), width - 1),
            )
        )
        sections.append(np.full(len(owner), repeat))
    parts.append(
        Planned(
            np.array([owner for owner, _, _ in queries], np.int64),
            np.full(len(queries), "test_questions", dtype=object),
            np.array([query for _, query, _ in queries], np.int64),
            np.array([shots for _, _, shots in queries], np.int64).reshape(len(queries), width - 1),
        )
    )
    sections.append(np.full(len(queries), config.episodes.repeats))
    planned = Planned(*(np.concatenate(columns) for columns in zip(*parts, strict=True)))
    # User by user; within a user, pass by pass, the held-out questions' queries last.
    return planned.take(np.lexsort((np.concatenate(sections), planned.owner)))


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
    kept = kept_pairs(judgments)
    planned = plan_shard(personas_table, kept, config, counters)
    # stable_id("episode", user, query id, *shot ids): each part's id_key made once and the
    # keys of an episode joined in Arrow; only the hashing is row by row.
    judgment_keys = id_key_column(kept["judgment_uuid"])
    user_keys = pa.array(
        [id_key("episode", uuid) for uuid in personas_table["persona_uuid"].to_pylist()],
        pa.binary(),
    )
    width = planned.shots.shape[1] + 1
    offsets = pa.array(np.arange(len(planned.query) + 1) * width, pa.int32())
    episode_rows = np.concatenate([planned.query[:, None], planned.shots], axis=1).ravel()
    episode_keys = pc.binary_join_element_wise(
        user_keys.take(pa.array(planned.owner, pa.int64())),
        pc.binary_join(
            pa.ListArray.from_arrays(offsets, judgment_keys.take(pa.array(episode_rows))),
            pa.scalar(b"", pa.binary()),
        ),
        pa.scalar(b"", pa.binary()),
    )
    episode_ids = np.array([id_of(key) for key in episode_keys.to_pylist()], dtype=object)
    first = np.unique(episode_ids, return_index=True)[1]
    if dropped := len(episode_ids) - len(first):
        counters["repeat_duplicates_dropped"] += dropped
        unique = np.sort(first)
        planned, episode_ids = planned.take(unique), episode_ids[unique]
    owners = planned.owner
    query = kept.take(pa.array(planned.query, pa.int64()))
    shot_values = kept.select(list(SHOT_FIELDS)).take(pa.array(planned.shots.ravel(), pa.int64()))
    shots = pa.ListArray.from_arrays(
        pa.array(np.arange(len(owners) + 1) * (width - 1), pa.int32()),
        pa.StructArray.from_arrays(
            [c.combine_chunks() for c in shot_values.columns], names=list(SHOT_FIELDS)
        ),
    )
    owner_uuids = personas_table["persona_uuid"].take(pa.array(owners, pa.int64()))
    columns = {
        "episode_uuid": episode_ids,
        "persona_uuid": owner_uuids,
        "domain": personas_table["domain"].take(pa.array(owners, pa.int64())),
        "split": planned.split.tolist(),
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
    counters.update(f"episodes_{split}" for split in planned.split.tolist())
    if without := personas_table.num_rows - len(np.unique(owners)):
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
