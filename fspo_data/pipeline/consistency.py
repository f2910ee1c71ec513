"""Coherence of the labels, per domain and overall: the statistics every run reports.

- flip rate: share of pairs where the same slot won in both orders (the verdict depends on
  the order; the strict rule drops these);
- label entropy: the judge's uncertainty about each label, H(sigmoid(debiased margin)) in
  nats (`judging.verdict_entropy`), averaged over a user's pairs, then over users; before
  refinement (the first pass) and after (the final labels). 0 is certain, ln 2 = 0.693 a coin
  flip. Paper: 0.64 -> 0.13;
- flagged users: users whose labels agree with another user's on more than a threshold of
  shared pairs (near-duplicate labellers).

Everything is computed from the statistic columns (never the texts): streaming queries give
additive tallies per domain that merge into "overall", and the near-duplicate check goes
shard by shard (a user's judgments are all in one shard), so memory does not grow with the
number of judgments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from fspo_data.core.config import JudgeConfig
from fspo_data.judging import verdict_entropy

HISTOGRAM_EDGES = [-2.0, -1.0, -0.5, -0.25, -0.1, -0.05, 0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0]
STAT_COLUMNS = [
    "persona_uuid",
    "domain",
    "response_x_uuid",
    "response_y_uuid",
    "chosen_uuid",
    "margin_first",
    "margin_second",
    "debiased_margin",
    "initial_debiased_margin",
    "refined",
    "kept",
    "drop_reason",
    "difficulty",
]
# What the near-duplicate check reads.
FLAG_COLUMNS = [
    "persona_uuid",
    "domain",
    "response_x_uuid",
    "response_y_uuid",
    "chosen_uuid",
    "kept",
]
# Domains with more users are checked for near-duplicate labellers on a seeded sample of
# this many users (each against everyone): exact checking is quadratic in users.
FLAG_CHECK_USERS = 2000
# (checked, user) pairs counted with one bincount up to this many (8 bytes each), by a sort
# above (`_close_to_checked`).
_BINCOUNT_LIMIT = 1 << 22

# Judgments: one frame, or one frame per shard where no user's judgments span two shards.
Judgments = pl.DataFrame | pl.LazyFrame | Sequence[pl.LazyFrame]


class Consistency(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs_judged: int
    pairs_kept: int
    kept_rate: float | None
    flip_rate: float | None
    drop_reasons: dict[str, int]
    first_slot_win_rate: float | None
    position_bias_nats: float | None
    label_entropy_before: float | None
    label_entropy_after: float | None
    users_refined: int
    margin_histogram_edges: list[float] = Field(default_factory=lambda: list(HISTOGRAM_EDGES))
    margin_histogram_counts: list[int]
    difficulty: dict[str, dict[str, int]]
    flagged_users: list[str]
    users_checked_for_duplicates: int = Field(
        default=0,
        description="Users checked for near-duplicate labels: all of a domain's users, or a "
        f"seeded sample of {FLAG_CHECK_USERS} when it has more (then `flagged_users` lists "
        "those found in the sample); 0 in summaries written before this was recorded.",
    )


@dataclass
class Tally:
    """Additive statistics of a set of judgments; `+` merges sets that share no user."""

    rows: int = 0
    kept: int = 0
    flips: int = 0
    first_slot_wins: int = 0
    bias_sum: float = 0.0
    users: int = 0
    entropy_before_sum: float = 0.0  # sum over users of the user's mean label entropy
    entropy_after_sum: float = 0.0
    users_refined: int = 0
    drop_reasons: Counter[str] = field(default_factory=Counter)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(HISTOGRAM_EDGES) - 1, int))
    difficulty: dict[str, Counter[str]] = field(default_factory=dict)
    flagged_users: list[str] = field(default_factory=list)
    users_checked: int = 0

    def __add__(self, other: Tally) -> Tally:
        difficulty = {k: Counter(v) for k, v in self.difficulty.items()}
        for k, v in other.difficulty.items():
            difficulty.setdefault(k, Counter()).update(v)
        return Tally(
            rows=self.rows + other.rows,
            kept=self.kept + other.kept,
            flips=self.flips + other.flips,
            first_slot_wins=self.first_slot_wins + other.first_slot_wins,
            bias_sum=self.bias_sum + other.bias_sum,
            users=self.users + other.users,
            entropy_before_sum=self.entropy_before_sum + other.entropy_before_sum,
            entropy_after_sum=self.entropy_after_sum + other.entropy_after_sum,
            users_refined=self.users_refined + other.users_refined,
            drop_reasons=self.drop_reasons + other.drop_reasons,
            histogram=self.histogram + other.histogram,
            difficulty=difficulty,
            flagged_users=sorted(self.flagged_users + other.flagged_users),
            users_checked=self.users_checked + other.users_checked,
        )

    def consistency(self, no_verdict: int) -> Consistency:
        judged = self.rows + no_verdict
        reasons = dict(sorted(self.drop_reasons.items()))
        if no_verdict:
            reasons["no_verdict"] = no_verdict
        rows, users = self.rows or None, self.users or None
        return Consistency(
            pairs_judged=judged,
            pairs_kept=self.kept,
            kept_rate=self.kept / judged if judged else None,
            flip_rate=self.flips / rows if rows else None,
            drop_reasons=reasons,
            first_slot_win_rate=self.first_slot_wins / (2 * rows) if rows else None,
            position_bias_nats=self.bias_sum / rows if rows else None,
            label_entropy_before=self.entropy_before_sum / users if users else None,
            label_entropy_after=self.entropy_after_sum / users if users else None,
            users_refined=self.users_refined,
            margin_histogram_counts=self.histogram.tolist(),
            difficulty={k: dict(v) for k, v in sorted(self.difficulty.items())},
            flagged_users=self.flagged_users,
            users_checked_for_duplicates=self.users_checked,
        )


def _bucket(margin: pl.Expr) -> pl.Expr:
    """np.histogram's bin over HISTOGRAM_EDGES of the margin clipped to [-2, 2]."""
    clipped = margin.clip(HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1])
    return pl.sum_horizontal([clipped >= edge for edge in HISTOGRAM_EDGES[1:-1]])


def _queries(frame: pl.LazyFrame, key: str) -> list[pl.LazyFrame]:
    first, second = pl.col("margin_first"), pl.col("margin_second")
    rows = frame.group_by(key).agg(
        rows=pl.len(),
        kept=pl.col("kept").sum(),
        flips=((first > 0) == (second > 0)).sum(),
        first_slot_wins=(first > 0).sum() + (second > 0).sum(),
        bias_sum=((first + second) / 2).sum(),
        users_refined=pl.col("persona_uuid").filter(pl.col("refined")).n_unique(),
    )
    users = (
        frame.group_by(key, "persona_uuid")
        .agg(
            before=verdict_entropy(pl.col("initial_debiased_margin")).mean(),
            after=verdict_entropy(pl.col("debiased_margin")).mean(),
        )
        .group_by(key)
        .agg(users=pl.len(), before=pl.col("before").sum(), after=pl.col("after").sum())
    )
    reasons = frame.filter(~pl.col("kept")).group_by(key, "drop_reason").len()
    histogram = frame.group_by(key, _bucket(pl.col("debiased_margin")).alias("bucket")).len()
    difficulty = (
        frame.filter(pl.col("difficulty") != "")
        .group_by(key, "difficulty")
        .agg(judged=pl.len(), kept=pl.col("kept").sum())
    )
    return [rows, users, reasons, histogram, difficulty]


def tallies(frame: pl.LazyFrame, key: str) -> dict[str, Tally]:
    """One Tally per value of column `key`, near-duplicate users aside.

    Each query is collected on its own: the streaming engine then keeps only its group
    states, where collecting them together held the scanned columns (~100 MB a million rows).
    """
    rows, users, reasons, histogram, difficulty = (
        q.collect(engine="streaming") for q in _queries(frame, key)
    )
    result: dict[str, Tally] = {}
    for r in rows.iter_rows(named=True):
        result[r[key]] = Tally(
            rows=r["rows"],
            kept=r["kept"],
            flips=r["flips"],
            first_slot_wins=r["first_slot_wins"],
            bias_sum=r["bias_sum"],
            users_refined=r["users_refined"],
        )
    for group, count, before, after in users.iter_rows():
        tally = result[group]
        tally.users, tally.entropy_before_sum, tally.entropy_after_sum = count, before, after
    for group, reason, count in reasons.iter_rows():
        result[group].drop_reasons[reason] += count
    for group, bucket, count in histogram.iter_rows():
        result[group].histogram[bucket] += count
    for group, level, judged, kept in difficulty.iter_rows():
        result[group].difficulty[level] = Counter(judged=judged, kept=kept)
    return result


def _labels(part: pl.LazyFrame, key: str) -> pl.LazyFrame:
    """Kept labels: group, persona_uuid, user and item (the candidate pair) as 64-bit hashes,
    chose_first. A pair is unordered: its responses are named in a canonical order, so two
    users shown it in opposite orders share it. Hashes make the joins and groupings integer
    work; a collision (odds ~1e-8 at a million pairs) could only merge the counts of two pairs
    or two users."""
    first = pl.min_horizontal("response_x_uuid", "response_y_uuid")
    second = pl.max_horizontal("response_x_uuid", "response_y_uuid")
    return part.filter(pl.col("kept")).select(
        key,
        "persona_uuid",
        pl.col("persona_uuid").hash().alias("user"),
        pl.concat_str(first, second, separator="|").hash().alias("item"),
        (pl.col("chosen_uuid") == first).alias("chose_first"),
    )


def checked_users(labels: Sequence[pl.LazyFrame], key: str) -> pl.DataFrame:
    """(group, persona_uuid, user) of the users to check: all of a group's labelling users, or
    a seeded sample of FLAG_CHECK_USERS of them in id order (the same on every run)."""
    users = pl.concat(
        [part.select(key, "persona_uuid", "user").unique().collect() for part in labels]
    )
    if users.is_duplicated().any():
        raise ValueError("consistency: a user's judgments span two shards")
    chosen = []
    for part in users.sort("persona_uuid").partition_by(key):
        if part.height > FLAG_CHECK_USERS:
            rng = np.random.default_rng(0)
            part = part[np.sort(rng.choice(part.height, FLAG_CHECK_USERS, replace=False))]
        chosen.append(part)
    return pl.concat(chosen) if chosen else users


def flagged_users(
    parts: Sequence[pl.LazyFrame], key: str, settings: JudgeConfig
) -> dict[str, tuple[list[str], int]]:
    """Per group: the checked users whose labels agree with another user's on more than
    `flag_agreement` of at least `flag_min_shared` shared candidate pairs, and how many users
    were checked. The one near-duplicate rule: the run summary, the diversity report and the
    dataset card all take their flagged users from here. No (users x users) matrix: the
    checked users' labels meet each shard's labels on the same pairs, and a partner's counts
    are complete within its shard."""
    labels = [_labels(part, key) for part in parts]
    checked = checked_users(labels, key)
    theirs = pl.concat(
        [part.join(checked.lazy(), on=[key, "persona_uuid", "user"]).collect() for part in labels]
    ).select(key, "item", pl.col("user").alias("checked"), pl.col("chose_first").alias("theirs"))
    by_group = _theirs_by_group(theirs, key)
    found = set()
    for part in labels:
        found.update(_close_to_checked(part.collect(), by_group, key, settings))
    names = {(g, user): uuid for g, uuid, user in checked.iter_rows()}
    counts = checked.group_by(key).len()
    return {
        group: (sorted(names[g, user] for g, user in found if g == group), count)
        for group, count in counts.iter_rows()
    }


class _Theirs(NamedTuple):
    """A group's checked labels sorted by item: item, checked user (as a code into `ids`),
    and whether it chose the first response."""

    item: np.ndarray
    checked: np.ndarray
    ids: np.ndarray
    chose_first: np.ndarray


def _theirs_by_group(theirs: pl.DataFrame, key: str) -> dict[str, _Theirs]:
    groups = {}
    for (group,), frame in theirs.partition_by(key, as_dict=True).items():
        frame = frame.sort("item")
        ids, checked = np.unique(frame["checked"].to_numpy(), return_inverse=True)
        groups[group] = _Theirs(frame["item"].to_numpy(), checked, ids, frame["theirs"].to_numpy())
    return groups


def _close_to_checked(
    part: pl.DataFrame, theirs: dict[str, _Theirs], key: str, settings: JudgeConfig
) -> set[tuple[str, int]]:
    """(group, checked) for each checked user whose labels agree with one of `part`'s other
    users on more than `flag_agreement` of at least `flag_min_shared` shared items.

    A join of the part's labels with the checked users' on (group, item), then counts per
    (checked, user), done on sorted arrays: as a polars join and group-by, the ~27 checked
    labels each label of a part meets were most of the run's label statistics."""
    found = set()
    for (group,), mine in part.partition_by(key, as_dict=True).items():
        other = theirs.get(group)
        if other is None:
            continue
        item = mine["item"].to_numpy()
        left = np.searchsorted(other.item, item, "left")
        met = np.searchsorted(other.item, item, "right") - left
        row = np.repeat(np.arange(len(item)), met)  # (m,) the part's label of each meeting
        # (m,) the checked label met: the first of its item's run, then the next ones.
        col = np.arange(int(met.sum())) - np.repeat(np.cumsum(met) - met - left, met)
        user_ids, user = np.unique(mine["user"].to_numpy(), return_inverse=True)
        checked = other.checked[col]
        apart = user_ids[user[row]] != other.ids[checked]
        agree = (mine["chose_first"].to_numpy()[row] == other.chose_first[col])[apart]
        # One integer per (checked, user) met: counted with a bincount where the square of
        # codes is small (a shard's users), else with a sort.
        pair = (checked * len(user_ids) + user[row])[apart]
        size = len(other.ids) * len(user_ids)
        if size <= _BINCOUNT_LIMIT:
            shared = np.bincount(pair, minlength=size)
            agreed = np.bincount(pair, weights=agree, minlength=size)
            pairs = np.flatnonzero(shared)
            shared, agreed = shared[pairs], agreed[pairs]
        else:
            pairs, which, shared = np.unique(pair, return_inverse=True, return_counts=True)
            agreed = np.bincount(which, weights=agree, minlength=len(pairs))
        close = (shared >= settings.flag_min_shared) & (agreed / shared > settings.flag_agreement)
        found.update((group, c) for c in other.ids[pairs[close] // len(user_ids)].tolist())
    return found


def near_duplicate_labellers(judgments: Judgments, settings: JudgeConfig) -> list[str]:
    """Every domain's flagged users (`flagged_users`), sorted: the run summary's "overall"
    list, for the diversity report and the dataset card."""
    by_domain = flagged_users(_parts(judgments, FLAG_COLUMNS), "domain", settings)
    return sorted(user for users, _ in by_domain.values() for user in users)


def _parts(judgments: Judgments, columns: list[str] = STAT_COLUMNS) -> list[pl.LazyFrame]:
    if isinstance(judgments, pl.DataFrame | pl.LazyFrame):
        judgments = [judgments.lazy()]
    return [part.select(columns) for part in judgments]


def _tallies(parts: list[pl.LazyFrame], key: str, settings: JudgeConfig) -> dict[str, Tally]:
    result = tallies(pl.concat(parts), key)
    for group, (users, checked) in flagged_users(parts, key, settings).items():
        result[group].flagged_users, result[group].users_checked = users, checked
    return result


def consistency(judgments: Judgments, no_verdict: int, settings: JudgeConfig) -> Consistency:
    """Statistics of one set of judgments (a domain, or all of them)."""
    parts = [part.with_columns(pl.lit("all").alias("set")) for part in _parts(judgments)]
    return _tallies(parts, "set", settings).get("all", Tally()).consistency(no_verdict)


def consistency_by_domain(
    judgments: Judgments, no_verdict: dict[str, int], settings: JudgeConfig
) -> dict[str, Consistency]:
    """One entry per domain plus "overall" (domains share no users or candidate pairs)."""
    per_domain = dict(sorted(_tallies(_parts(judgments), "domain", settings).items()))
    result = {d: t.consistency(no_verdict.get(d, 0)) for d, t in per_domain.items()}
    result["overall"] = sum(per_domain.values(), Tally()).consistency(sum(no_verdict.values()))
    return result
