"""The diversity report: the figures of `personas.diversity` on a run's committed Parquet.

Writes RUN_DIR/report/diversity.json (every figure, sample sizes, timings) and a self-contained
RUN_DIR/report/diversity.html (plots as embedded PNGs, each with a note on how to read it).
A stage with no committed shards skips its sections and says so in `notes`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from fspo_data.core.config import JobConfig
from fspo_data.core.shards import load_manifest
from fspo_data.domains import load_domain
from fspo_data.personas import diversity as dv
from fspo_data.personas.embeddings import DEFAULT_EMBEDDER, TextEmbedder, make_embedder
from fspo_data.personas.taxonomy import load_taxonomy
from fspo_data.pipeline.summary import RunSummary, write_summary

NEAR_DUPLICATE_AGREEMENT = 0.95
MIN_SHARED_PAIRS = 10
HEATMAP_USERS = 100
MAP_POINTS = 5000
_PAIR = ["question_uuid", "first", "second"]
_COLUMNS = {
    "personas": ["persona_uuid", "domain", "traits", "persona_description"],
    "questions": ["question_uuid", "question"],
    "responses": ["question_uuid", "response"],
    "judge": [
        "persona_uuid",
        "question_uuid",
        "response_x_uuid",
        "response_y_uuid",
        "chosen_uuid",
        "kept",
    ],
}


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


class CandidateFigures(BaseModel):
    """mean_similarity: mean over questions with two or more candidates of their mean pairwise
    cosine; responses: the diversity of all candidate responses together."""

    questions: int
    mean_similarity: float
    histogram: Histogram
    responses: TextFigures


class JudgmentFigures(BaseModel):
    """Kept labels only. Agreement is over `users_sampled` users and the `shared_items` pairs
    two or more of them labelled; mean_agreement averages the user pairs sharing any item.
    Cross-user label entropy covers every pair labelled by two or more users
    (`multi_labelled_pairs`); it is not the judge-uncertainty entropy of the run summary."""

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
    notes: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class ReportResult:
    report: DiversityReport
    json_path: Path
    html_path: Path


@dataclass(frozen=True)
class _Section:
    title: str
    figures: dict[str, Any]
    image: str | None  # base64 PNG
    how_to_read: str


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


def headline_figures(result: ReportResult) -> dict[str, float]:
    """The numbers the run summary prints; NaN where the run has no such stage yet."""
    return _headline(result.report)


def add_diversity_to_summary(summary: RunSummary, config: JobConfig) -> RunSummary:
    """Write the run's diversity report and put its headline figures into the summary (and
    its summary.json); a figure the run has no data for yet is None."""
    result = build_report(
        config.run_dir,
        make_embedder(config.stages.persona_checks.embedder),
        sample_size=config.report.sample_size,
        seed=config.seed,
        domains_dir=config.domains_dir,
    )
    figures = {k: None if math.isnan(v) else v for k, v in headline_figures(result).items()}
    summary = summary.model_copy(update={"diversity": figures})
    write_summary(config.run_dir, summary)
    return summary


def build_report(
    run_dir: Path,
    embedder: TextEmbedder | None = None,
    sample_size: int = 2000,
    seed: int = 0,
    domains_dir: Path | None = None,
) -> ReportResult:
    """Compute every figure and write RUN_DIR/report/diversity.{json,html}.

    Every text is embedded (the costly part on CPU; `embedder` defaults to all-MiniLM-L6-v2);
    `sample_size` caps what the quadratic figures look at (nearest-neighbour queries, users in
    the agreement matrix), drawn with `seed`; the trait figures read the taxonomies of the
    run's domains, from `domains_dir` as the run did.
    """
    run_dir = Path(run_dir)
    timer = _Timer()
    with timer("read"):
        personas, questions, responses, judgments = (_read(run_dir, s) for s in _COLUMNS)
    if embedder is None and any(t is not None for t in (personas, questions, responses)):
        embedder = make_embedder(DEFAULT_EMBEDDER)

    def embed(name: str, texts: list[str]) -> np.ndarray:
        with timer(f"embed.{name}"):
            return embedder.embed(texts)

    def figures(name: str, texts: list[str], vectors: np.ndarray) -> TextFigures:
        return _text_figures(name, texts, vectors, sample_size, seed, timer)

    report = DiversityReport(
        run_dir=str(run_dir),
        embedder=embedder.name if embedder else "",
        sample_size=sample_size,
        seed=seed,
    )
    sections: list[_Section] = []
    if personas is None:
        report.notes.append("personas: no committed shards; persona and trait figures skipped")
    else:
        texts = personas["persona_description"].to_list()
        vectors = embed("personas", texts)
        report.personas = figures("personas", texts, vectors)
        traits = personas.select("persona_uuid", "domain", "traits").explode("traits")
        traits = traits.unnest("traits")
        with timer("traits"):
            report.traits = _trait_figures(traits, report.notes, domains_dir)
        with timer("plots"):
            sections.append(_persona_section(report.personas, personas, traits, vectors, seed))
            if report.traits:
                sections.append(_trait_section(report.traits))
    if questions is None:
        report.notes.append("questions: no committed shards; question figures skipped")
    else:
        texts = questions["question"].to_list()
        report.questions = figures("questions", texts, embed("questions", texts))
        sections.append(_text_section("Questions", report.questions))
    if responses is None:
        report.notes.append("responses: no committed shards; candidate figures skipped")
    else:
        texts = responses["response"].to_list()
        vectors = embed("responses", texts)
        groups = responses["question_uuid"].rank("dense").cast(pl.Int64).to_numpy() - 1
        with timer("candidates"):
            similarity = dv.candidate_similarity(vectors, groups)
        report.candidates = _candidate_figures(similarity, figures("responses", texts, vectors))
        with timer("plots"):
            sections.append(_candidate_section(report.candidates))
    if judgments is None:
        report.notes.append("judge: no committed shards; agreement and label entropy skipped")
    elif not judgments["kept"].any():
        report.notes.append("judge: no kept judgments; agreement and label entropy skipped")
    else:
        report.judgments, judgment_sections = _judgments(judgments, sample_size, seed, timer)
        sections += judgment_sections
    report.timings_s = timer.seconds
    return _write(run_dir / "report", report, sections)


def _read(run_dir: Path, stage: str) -> pl.DataFrame | None:
    """The stage's committed shards (those its manifest lists; every *.parquet without one)."""
    stage_dir = run_dir / stage
    manifest = load_manifest(stage_dir)
    if manifest is None:
        files = sorted(stage_dir.glob("*.parquet"))
    else:
        files = [stage_dir / entry.file for _, entry in sorted(manifest.shards.items())]
    if not files:
        return None
    frame = pl.read_parquet(files, columns=_COLUMNS[stage])
    return frame if frame.height else None


def _text_figures(
    name: str, texts: list[str], vectors: np.ndarray, sample_size: int, seed: int, timer: _Timer
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


def _trait_figures(
    traits: pl.DataFrame, notes: list[str], domains_dir: Path | None
) -> list[TraitFigures]:
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


def _candidate_figures(similarity: np.ndarray, responses: TextFigures) -> CandidateFigures:
    valid = similarity[~np.isnan(similarity)]
    return CandidateFigures(
        questions=len(valid),
        mean_similarity=float(valid.mean()) if len(valid) else float("nan"),
        histogram=_histogram(valid, 40, (0.0, 1.0)),
        responses=responses,
    )


def _judgments(
    judgments: pl.DataFrame, sample_size: int, seed: int, timer: _Timer
) -> tuple[JudgmentFigures, list[_Section]]:
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
        entropy = dv.label_entropy(pairs["k"].to_numpy(), pairs["n"].to_numpy())
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
        flagged = dv.near_duplicate_labellers(agreement, NEAR_DUPLICATE_AGREEMENT, MIN_SHARED_PAIRS)
    off_diagonal = agreement.agreement[~np.eye(picked.height, dtype=bool)]
    finite = off_diagonal[~np.isnan(off_diagonal)]
    result = JudgmentFigures(
        judgments=judgments.height,
        kept=labels.height,
        users=len(users),
        users_sampled=picked.height,
        shared_items=items.height,
        mean_agreement=float(finite.mean()) if len(finite) else float("nan"),
        near_duplicate_agreement=NEAR_DUPLICATE_AGREEMENT,
        min_shared_pairs=MIN_SHARED_PAIRS,
        near_duplicate_labellers=picked["user"].gather(flagged).to_list(),
        multi_labelled_pairs=len(entropy),
        cross_user_label_entropy=float(entropy.mean()) if len(entropy) else float("nan"),
        cross_user_entropy_histogram=_histogram(entropy, 20, (0.0, float(np.log(2)))),
    )
    with timer("plots"):
        sections = _judgment_sections(result, agreement)
    return result, sections


def _histogram(values: np.ndarray, bins: int, span: tuple[float, float]) -> Histogram:
    """Counts in `bins` equal bins over `span`; values outside (rounding) go to the end bins."""
    counts, edges = np.histogram(np.clip(values, *span), bins=bins, range=span)
    return Histogram(edges=edges.round(4).tolist(), counts=counts.tolist())


def _figure(width: float, height: float) -> Any:
    # matplotlib's object API needs no pyplot state or global backend; imported here because it
    # is slow to import and only the report draws.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def _colour_attribute(traits: pl.DataFrame) -> str | None:
    """The attribute with the most values that still fit a 10-colour legend."""
    sizes = traits.group_by("name").agg(pl.col("value").n_unique().alias("k"))
    sizes = sizes.filter(pl.col("k") <= 10).sort(["k", "name"], descending=[True, False])
    return sizes["name"][0] if sizes.height else None


def _persona_section(
    figures: TextFigures,
    personas: pl.DataFrame,
    traits: pl.DataFrame,
    vectors: np.ndarray,
    seed: int,
) -> _Section:
    shown = dv.sample_indices(len(vectors), MAP_POINTS, seed)
    xy = dv.pca_2d(vectors)[shown]
    attribute = _colour_attribute(traits)
    coloured = traits.filter(pl.col("name") == attribute).select("persona_uuid", "value")
    value_of = dict(coloured.iter_rows())
    colours = np.array([value_of.get(u, "(none)") for u in personas["persona_uuid"].gather(shown)])
    figure = _figure(8, 5.5)
    ax = figure.add_subplot()
    for value in sorted(set(colours)):
        at = colours == value
        ax.scatter(xy[at, 0], xy[at, 1], s=8, alpha=0.7, label=value)
    ax.legend(title=attribute, loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8)
    ax.set(xlabel="principal axis 1", ylabel="principal axis 2")
    ax.set_title(f"{len(shown)} of {len(vectors)} personas, coloured by {attribute}")
    return _Section("Personas", figures.model_dump(), _png(figure), _HOW_TO_READ["personas"])


def _trait_section(traits: list[TraitFigures]) -> _Section:
    many_domains = len({t.domain for t in traits}) > 1
    cols = 4
    rows = -(-len(traits) // cols)
    figure = _figure(4 * cols, 3.4 * rows)
    for i, t in enumerate(traits):
        ax = figure.add_subplot(rows, cols, i + 1)
        x = np.arange(len(t.weights))
        ax.bar(x, [t.shares[v] for v in t.weights], color="tab:blue")
        ax.scatter(x, list(t.weights.values()), marker="_", s=150, color="black", zorder=3)
        ax.set_xticks(x, list(t.weights), rotation=60, ha="right", fontsize=7)
        name = f"{t.domain}: {t.attribute}" if many_domains else t.attribute
        ax.set_title(f"{name}\n{t.values_seen}/{t.values_total} seen, KL {t.kl:.3f}", fontsize=9)
    table = {
        f"{t.domain}/{t.attribute}": f"{t.values_seen}/{t.values_total} seen; entropy "
        f"{t.entropy:.3f} (target {t.reference_entropy:.3f}); KL {t.kl:.4f} (noise "
        f"~{t.kl_sampling_noise:.4f}); off-taxonomy {t.off_taxonomy}"
        for t in traits
    }
    return _Section("Trait coverage", table, _png(figure), _HOW_TO_READ["traits"])


def _text_section(title: str, figures: TextFigures) -> _Section:
    return _Section(title, figures.model_dump(), None, _HOW_TO_READ["texts"])


def _candidate_section(figures: CandidateFigures) -> _Section:
    figure = _figure(7, 4)
    ax = figure.add_subplot()
    edges = figures.histogram.edges
    ax.stairs(figures.histogram.counts, edges, fill=True)
    ax.axvline(figures.mean_similarity, color="black", linestyle="--", label="mean")
    ax.set(xlabel="mean pairwise cosine of a question's candidates", ylabel="questions")
    ax.legend()
    table = figures.model_dump(exclude={"histogram", "responses"})
    table |= {f"responses: {k}": v for k, v in figures.responses.model_dump().items()}
    return _Section("Candidate responses", table, _png(figure), _HOW_TO_READ["candidates"])


def _judgment_sections(figures: JudgmentFigures, agreement: dv.Agreement) -> list[_Section]:
    import matplotlib

    # The users who share the most pairs with others: random ones would show mostly grey.
    sharing = agreement.shared.sum(axis=1) - np.diag(agreement.shared)
    shown = np.sort(np.argsort(-sharing, kind="stable")[:HEATMAP_USERS])
    matrix = agreement.agreement[np.ix_(shown, shown)]
    # Order users along the leading eigenvector so that users who label alike sit together.
    order = np.argsort(np.linalg.eigh(np.nan_to_num(matrix - 0.5))[1][:, -1])
    heat = _figure(6.5, 5.5)
    ax = heat.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(matrix[np.ix_(order, order)]), cmap=cmap, vmin=0, vmax=1)
    heat.colorbar(image, ax=ax, label="share of shared pairs labelled the same")
    ax.set_title(f"{len(shown)} of {figures.users} users: those sharing the most pairs")
    ax.set(xlabel="user", ylabel="user")
    hist = _figure(7, 4)
    ax = hist.add_subplot()
    histogram = figures.cross_user_entropy_histogram
    ax.stairs(histogram.counts, histogram.edges, fill=True)
    ax.axvline(np.log(2), color="black", linestyle=":", label="ln 2 (even split)")
    ax.set(xlabel="label entropy of a pair across users (nats)", ylabel="pairs")
    ax.legend()
    agreement_table = figures.model_dump(
        exclude={"near_duplicate_labellers", "multi_labelled_pairs", "cross_user_label_entropy"}
        | {"cross_user_entropy_histogram"}
    )
    flagged = ", ".join(figures.near_duplicate_labellers) or "none"
    agreement_table["near_duplicate_labellers"] = flagged
    entropy_table = figures.model_dump(include={"multi_labelled_pairs", "cross_user_label_entropy"})
    return [
        _Section("User agreement", agreement_table, _png(heat), _HOW_TO_READ["agreement"]),
        _Section("Label entropy across users", entropy_table, _png(hist), _HOW_TO_READ["entropy"]),
    ]


_HOW_TO_READ = {
    "personas": (
        "Each dot is a persona description, placed along the two directions in which the "
        "embeddings vary most (PCA); colour is one trait. A single dense blob means the "
        "descriptions are paraphrases of each other whatever the traits; same-colour islands "
        "mean that trait dominates the text; evenly mixed colours mean it barely shows. The map "
        "keeps a small part of the variance: read distances loosely and trust the numbers. "
        "Vendi is the effective number of distinct personas (1 if all alike; at most the "
        "embedding dimension), comparable only between runs with the same embedder. Near-"
        "duplicate rate is the share of personas with another at cosine >= the threshold: those "
        "users will label alike. distinct-n is the share of unique words (1) or word pairs (2); "
        "it falls as a corpus grows, so compare runs of similar size."
    ),
    "traits": (
        "One panel per attribute: bars are the share of personas with each value, black ticks "
        "the taxonomy's target weight. An empty bar under a tick is a user type the data never "
        "shows. KL(observed || target) in nats measures the skew; sampling alone gives about "
        "(k - 1) / (2 n) for k values and n personas (the 'noise' figure), so a KL many times "
        "the noise means the sampler, a filter (dedup, refinement) or the model skewed the "
        "population. Off-taxonomy counts values the taxonomy does not list."
    ),
    "texts": (
        "The same figures as for personas, on the questions: Vendi (effective number of "
        "distinct questions), mean and nearest-neighbour cosine, near-duplicate rate, distinct-n."
    ),
    "candidates": (
        "Per question, the mean pairwise cosine of its candidate responses: the FSPO paper's "
        "diversity measure. Lower means more different candidates for users to disagree about. "
        "The paper reports 0.96 for one model at temperature 0.3, 0.94 at 1.0, 0.81 with persona "
        "steering, 0.78 with view steering and 0.71 with a model ensemble plus view steering, "
        "with its own embedder, so compare loosely. A tail near 1 marks questions whose "
        "viewpoints collapsed into one answer."
    ),
    "agreement": (
        "Rows and columns are the sampled users who share the most pairs with others; a cell is "
        "the share of the pairs both labelled on which they chose the same response (grey: none "
        "shared; with few shared pairs a cell is noisy). Users are ordered so that alike "
        "labellers sit together. Bright off-diagonal blocks are groups with the same taste; "
        "users above the near-duplicate agreement on enough shared pairs are listed: they teach "
        "the model nothing the other does not, and should be regenerated. A uniformly bright "
        "matrix means the labels follow the judge's general taste, not the persona."
    ),
    "entropy": (
        "For each candidate pair labelled by two or more users: the binary entropy of the share "
        "of users preferring one response, 0 when all agree and ln 2 = 0.69 nats for an even "
        "split. A pile at 0 is pairs with a universally better answer, which carry no personal "
        "signal; FSPO needs users to disagree on shared pairs, so mass away from 0 is the goal, "
        "provided the agreement matrix shows it comes from structured tastes, not coin flips. "
        "This is not the run summary's label entropy (the judge's uncertainty per user and "
        "pair, the paper's 0.64 -> 0.13 nats), which should be low."
    ),
}


def _headline(report: DiversityReport) -> dict[str, float]:
    nan = float("nan")
    personas, candidates, judgments = report.personas, report.candidates, report.judgments
    return {
        "persona_vendi": personas.vendi if personas else nan,
        "persona_mean_cosine": personas.mean_cosine if personas else nan,
        "persona_near_duplicate_rate": personas.near_duplicate_rate if personas else nan,
        "candidate_similarity": candidates.mean_similarity if candidates else nan,
        "cross_user_label_entropy": judgments.cross_user_label_entropy if judgments else nan,
        "near_duplicate_labellers": (
            float(len(judgments.near_duplicate_labellers)) if judgments else nan
        ),
    }


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(figures: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_format(v))}</td></tr>"
        for k, v in figures.items()
    )
    return f"<table>{rows}</table>"


def _html(report: DiversityReport, sections: list[_Section]) -> str:
    parts = [
        f"<h1>Diversity report</h1><p>{html.escape(report.run_dir)}: embedder "
        f"{html.escape(report.embedder or 'none')}, sample size {report.sample_size}, seed "
        f"{report.seed}</p>",
        _table(_headline(report)),
    ]
    if report.notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>{_table(s.figures)}")
        if s.image:
            alt = html.escape(s.title)
            parts.append(f'<img alt="{alt}" src="data:image/png;base64,{s.image}">')
        parts.append(f'<p class="read"><b>How to read this.</b> {html.escape(s.how_to_read)}</p>')
    return _PAGE.replace("{body}", "\n".join(parts))


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Diversity report</title><style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 8px}
th{text-align:left;font-weight:normal;color:#555}td{text-align:right}img{max-width:100%}
.read{background:#f5f5f5;border-left:3px solid #888;padding:.5em 1em}
</style></head><body>
{body}
</body></html>
"""


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def _write(out_dir: Path, report: DiversityReport, sections: list[_Section]) -> ReportResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ReportResult(report, out_dir / "diversity.json", out_dir / "diversity.html")
    _write_atomic(result.json_path, report.model_dump_json(indent=2))
    _write_atomic(result.html_path, _html(report, sections))
    return result
