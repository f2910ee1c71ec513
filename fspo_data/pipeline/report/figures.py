"""The report's figures: pure computations on a run's tables, returned as pydantic models.

Nothing here draws; `plots` turns these figures (and the agreement matrix) into images.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from fspo_data.core.config import JudgeConfig
from fspo_data.domains import load_domain
from fspo_data.personas import diversity as dv
from fspo_data.personas.taxonomy import load_taxonomy
from fspo_data.pipeline.gold import GoldFigures

_PAIR = ["question_uuid", "first", "second"]


class Histogram(BaseModel):
    """counts[i] values in [edges[i], edges[i + 1]); values outside the span go to the ends."""

    edges: list[float]
    counts: list[int]


class TextFigures(BaseModel):
    """Diversity of one set of texts; cosines come from the report's embedder."""

    count: int
    vendi: float
    mean_cosine: float
    mean_nn_cosine: float
    near_duplicate_rate: float
    near_duplicate_threshold: float
    neighbour_sample_size: int
    distinct_1: float
    distinct_2: float


class TraitFigures(BaseModel):
    """One attribute against its taxonomy (`personas.diversity.trait_stats`); nats."""

    domain: str
    attribute: str
    coverage: float
    values_seen: int
    values_total: int
    entropy: float
    reference_entropy: float
    kl: float
    kl_sampling_noise: float
    off_taxonomy: int
    shares: dict[str, float]
    weights: dict[str, float]


class PairSimilarity(BaseModel):
    """Candidate similarity over some of the pairs (one model's, or two models'): the mean over
    `questions` (those with such a pair) of a question's mean cosine over those pairs; null
    when no question has one."""

    questions: int
    mean_similarity: float | None


class CandidateFigures(BaseModel):
    """mean_similarity: mean over questions with two or more candidates of their mean pairwise
    cosine, all pairs (an ensemble's figure); by_model: the same over pairs both written by
    one model; cross_model: over pairs written by two models (null with one model);
    responses: the diversity of all candidate responses together."""

    questions: int
    mean_similarity: float
    histogram: Histogram
    responses: TextFigures
    by_model: dict[str, PairSimilarity] = Field(default_factory=dict)
    cross_model: PairSimilarity | None = None


class JudgmentFigures(BaseModel):
    """Kept labels only. Agreement is over `users_sampled` users and the `shared_items` pairs
    two or more of them labelled; mean_agreement averages the user pairs sharing any item.
    `near_duplicate_labellers` are the run summary's flagged users (the one rule of
    `pipeline.consistency.flagged_users`, with the job's `stages.judge.flag_agreement` and
    `flag_min_shared`, over every user, not only the sampled ones).
    Cross-user label entropy covers every pair labelled by two or more users
    (`multi_labelled_pairs`): how much users disagree about a pair. It is not the run
    summary's label entropy (`judging.verdict_entropy`, the judge's uncertainty per label)."""

    judgments: int
    kept: int
    users: int
    users_sampled: int
    shared_items: int
    mean_agreement: float
    near_duplicate_agreement: float
    min_shared_pairs: int
    near_duplicate_labellers: list[str]
    multi_labelled_pairs: int
    cross_user_label_entropy: float
    cross_user_entropy_histogram: Histogram


class DiversityReport(BaseModel):
    run_dir: str
    embedder: str
    sample_size: int
    seed: int
    personas: TextFigures | None = None
    traits: list[TraitFigures] = Field(default_factory=list)
    questions: TextFigures | None = None
    candidates: CandidateFigures | None = None
    judgments: JudgmentFigures | None = None
    gold: dict[str, GoldFigures] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)


class Timer:
    """Seconds spent per named step, summed over the step's runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


def headline(report: DiversityReport) -> dict[str, float]:
    """The numbers the run summary prints; NaN where the run has no such stage yet."""
    nan = float("nan")
    personas, candidates, judgments = report.personas, report.candidates, report.judgments
    return {
        "persona_vendi": personas.vendi if personas else nan,
        "persona_mean_cosine": personas.mean_cosine if personas else nan,
        "persona_near_duplicate_rate": personas.near_duplicate_rate if personas else nan,
        "candidate_similarity": candidates.mean_similarity if candidates else nan,
        "cross_user_label_entropy": judgments.cross_user_label_entropy if judgments else nan,
        # The personalization verdict's figure: 1.0 when every user labels alike.
        "mean_agreement": judgments.mean_agreement if judgments else nan,
        "near_duplicate_labellers": (
            float(len(judgments.near_duplicate_labellers)) if judgments else nan
        ),
    }


def text_figures(
    name: str, texts: list[str], vectors: np.ndarray, sample_size: int, seed: int, timer: Timer
) -> TextFigures:
    with timer(f"{name}.vendi"):
        vendi = dv.vendi_score(vectors)
    with timer(f"{name}.mean_cosine"):
        mean_cosine = dv.mean_pairwise_cosine(vectors)
    with timer(f"{name}.neighbours"):
        neighbours = dv.neighbour_stats(vectors, sample_size=sample_size, seed=seed)
    with timer(f"{name}.distinct_n"):
        distinct = dv.distinct_n(texts, (1, 2))
    return TextFigures(
        count=len(texts),
        vendi=vendi,
        mean_cosine=mean_cosine,
        mean_nn_cosine=neighbours.mean_nn_cosine,
        near_duplicate_rate=neighbours.near_duplicate_rate,
        near_duplicate_threshold=neighbours.threshold,
        neighbour_sample_size=neighbours.sample_size,
        distinct_1=distinct[1],
        distinct_2=distinct[2],
    )


def trait_figures(
    traits: pl.DataFrame, notes: list[str], domains_dir: Path | None = None
) -> list[TraitFigures]:
    """Per domain and taxonomy attribute, from (domain, name, value) rows, one per persona
    trait; what cannot be checked against a taxonomy goes to `notes`."""
    counts = traits.group_by("domain", "name", "value").len()
    out = []
    for domain in sorted(counts["domain"].unique().to_list()):
        try:
            taxonomy = load_taxonomy(load_domain(domain, domains_dir))
        except ValueError as exc:
            notes.append(f"traits: {exc}; trait figures for {domain!r} skipped")
            continue
        in_domain = counts.filter(pl.col("domain") == domain)
        unknown = set(in_domain["name"].unique().to_list()) - set(taxonomy.attributes)
        if unknown:
            notes.append(f"traits: {domain!r} attributes outside the taxonomy: {sorted(unknown)}")
        for attribute, weights in taxonomy.attributes.items():
            rows = in_domain.filter(pl.col("name") == attribute)
            stats = dv.trait_stats(dict(zip(rows["value"], rows["len"], strict=True)), weights)
            out.append(
                TraitFigures(domain=domain, attribute=attribute, weights=weights, **vars(stats))
            )
    return out


def candidate_figures(
    similarity: np.ndarray, by_writer: dv.WriterSimilarity, responses: TextFigures
) -> CandidateFigures:
    """`similarity`: per question, all pairs (`dv.candidate_similarity`); `by_writer`: split
    by the models that wrote each pair (`dv.writer_similarity`)."""
    valid = similarity[~np.isnan(similarity)]
    return CandidateFigures(
        questions=len(valid),
        mean_similarity=float(valid.mean()) if len(valid) else float("nan"),
        histogram=histogram(valid, 40, (0.0, 1.0)),
        responses=responses,
        by_model={name: _pair_similarity(s) for name, s in by_writer.within.items()},
        cross_model=_pair_similarity(by_writer.cross) if len(by_writer.within) > 1 else None,
    )


def _pair_similarity(per_question: np.ndarray) -> PairSimilarity:
    valid = per_question[~np.isnan(per_question)]
    return PairSimilarity(
        questions=len(valid), mean_similarity=float(valid.mean()) if len(valid) else None
    )


def judgment_figures(
    judgments: pl.DataFrame,
    flagged: list[str],
    flag_settings: JudgeConfig,
    sample_size: int,
    seed: int,
    timer: Timer,
) -> tuple[JudgmentFigures, dv.Agreement]:
    """Figures of the kept labels, and the sampled users' agreement matrix (for the plot).

    `flagged`: the near-duplicate labellers found by the run's one rule with `flag_settings`.
    """
    # A pair is unordered: name its responses in a canonical order and record which one won.
    first = pl.min_horizontal("response_x_uuid", "response_y_uuid")
    labels = judgments.filter(pl.col("kept")).select(
        pl.col("persona_uuid").alias("user"),
        "question_uuid",
        first.alias("first"),
        pl.max_horizontal("response_x_uuid", "response_y_uuid").alias("second"),
        (pl.col("chosen_uuid") == first).alias("chose_first"),
    )
    with timer("judgments.label_entropy"):
        pairs = labels.group_by(_PAIR).agg(n=pl.len(), k=pl.col("chose_first").sum())
        pairs = pairs.filter(pl.col("n") >= 2)
        entropy = dv.cross_user_label_entropy(pairs["k"].to_numpy(), pairs["n"].to_numpy())
    with timer("judgments.agreement"):
        users = labels["user"].unique().sort()
        picked = users.gather(dv.sample_indices(len(users), sample_size, seed))
        picked = picked.to_frame().with_row_index("u")
        sub = labels.join(picked, on="user")
        # Only items at least two sampled users labelled can count towards any agreement.
        items = sub.group_by(_PAIR).len().filter(pl.col("len") >= 2).sort(_PAIR)
        sub = sub.join(items.with_row_index("item").drop("len"), on=_PAIR)
        u, item, chose = (sub[c].to_numpy() for c in ("u", "item", "chose_first"))
        agreement = dv.agreement_matrix(u, item, chose, picked.height)
    off_diagonal = agreement.agreement[~np.eye(picked.height, dtype=bool)]
    finite = off_diagonal[~np.isnan(off_diagonal)]
    figures = JudgmentFigures(
        judgments=judgments.height,
        kept=labels.height,
        users=len(users),
        users_sampled=picked.height,
        shared_items=items.height,
        mean_agreement=float(finite.mean()) if len(finite) else float("nan"),
        near_duplicate_agreement=flag_settings.flag_agreement,
        min_shared_pairs=flag_settings.flag_min_shared,
        near_duplicate_labellers=flagged,
        multi_labelled_pairs=len(entropy),
        cross_user_label_entropy=float(entropy.mean()) if len(entropy) else float("nan"),
        cross_user_entropy_histogram=histogram(entropy, 20, (0.0, float(np.log(2)))),
    )
    return figures, agreement


def histogram(values: np.ndarray, bins: int, span: tuple[float, float]) -> Histogram:
    """Counts in `bins` equal bins over `span`; values outside (rounding) go to the end bins."""
    counts, edges = np.histogram(np.clip(values, *span), bins=bins, range=span)
    return Histogram(edges=edges.round(4).tolist(), counts=counts.tolist())


def colour_attribute(traits: pl.DataFrame) -> str | None:
    """The attribute with the most values that still fit a 10-colour legend."""
    sizes = traits.group_by("name").agg(pl.col("value").n_unique().alias("k"))
    sizes = sizes.filter(pl.col("k") <= 10).sort(["k", "name"], descending=[True, False])
    return sizes["name"][0] if sizes.height else None
