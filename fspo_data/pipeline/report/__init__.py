"""The diversity report: the figures of `personas.diversity` on a run's committed Parquet.

Writes RUN_DIR/report/diversity.json (every figure, sample sizes, timings) and a self-contained
RUN_DIR/report/diversity.html (plots as embedded PNGs, each with a note on how to read it).
A stage with no committed shards skips its sections and says so in `notes`. `figures` computes,
`plots` draws, `html` lays out the page; this module reads the run and ties them together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from fspo_data.core import storage
from fspo_data.core.checks_config import ChecksConfig
from fspo_data.core.config import JobConfig, JudgeConfig
from fspo_data.core.shards import atomic_write_bytes, committed_files, make_dir, scan_committed
from fspo_data.core.storage import Location
from fspo_data.personas import diversity as dv
from fspo_data.personas.embeddings import DEFAULT_EMBEDDER, TextEmbedder, make_embedder
from fspo_data.pipeline.consistency import near_duplicate_labellers
from fspo_data.pipeline.gold import summarize_gold
from fspo_data.pipeline.report import html, plots
from fspo_data.pipeline.report.figures import (
    CandidateFigures,
    DiversityReport,
    Histogram,
    JudgmentFigures,
    TextFigures,
    Timer,
    TraitFigures,
    candidate_figures,
    headline,
    judgment_figures,
    text_figures,
    trait_figures,
)
from fspo_data.pipeline.summary import RunSummary, write_summary
from fspo_data.pipeline.verdicts import with_verdicts

__all__ = [
    "CandidateFigures",
    "DiversityReport",
    "Histogram",
    "JudgmentFigures",
    "ReportResult",
    "TextFigures",
    "TraitFigures",
    "add_diversity_to_summary",
    "build_report",
    "headline_figures",
]

_COLUMNS = {
    "personas": ["persona_uuid", "domain", "traits", "persona_description"],
    "questions": ["question_uuid", "question"],
    "responses": ["question_uuid", "response", "model"],
    "judge": [
        "persona_uuid",
        "question_uuid",
        "response_x_uuid",
        "response_y_uuid",
        "chosen_uuid",
        "kept",
    ],
}


@dataclass(frozen=True)
class ReportResult:
    report: DiversityReport
    json_path: Location
    html_path: Location
    summary: RunSummary  # the run summary given, with this report's figures and the verdicts


def headline_figures(result: ReportResult) -> dict[str, float]:
    """The numbers the run summary prints; NaN where the run has no such stage yet."""
    return headline(result.report)


def add_diversity_to_summary(summary: RunSummary, config: JobConfig) -> RunSummary:
    """Write the run's diversity report and put its headline figures and the verdicts into
    the summary (and its summary.json); a figure the run has no data for yet is None."""
    result = build_report(
        config.run_dir,
        make_embedder(config.stages.persona_checks.embedder),
        sample_size=config.report.sample_size,
        seed=config.seed,
        flag_settings=config.stages.judge,
        domains_dir=config.domains_dir,
        summary=summary,
        checks=config.checks,
    )
    write_summary(config.run_dir, result.summary)
    return result.summary


def build_report(
    run_dir: Location,
    embedder: TextEmbedder | None = None,
    sample_size: int = 2000,
    seed: int = 0,
    *,
    flag_settings: JudgeConfig,
    domains_dir: Path | None = None,
    summary: RunSummary | None = None,
    checks: ChecksConfig | None = None,
) -> ReportResult:
    """Compute every figure and write RUN_DIR/report/diversity.{json,html}.

    Every text is embedded (the costly part on CPU; `embedder` defaults to all-MiniLM-L6-v2);
    `sample_size` caps what the quadratic figures look at (nearest-neighbour queries, users in
    the agreement matrix), drawn with `seed`. `flag_settings` is the run's judge config: its
    `flag_agreement` and `flag_min_shared` decide the near-duplicate labellers, as in the run
    summary. The trait figures read the taxonomies of the run's domains, from `domains_dir` as
    the run did. The page opens with the verdicts of `summary` (the run's summary.json; none:
    the report's own figures only) with this report's figures, against `checks` (default:
    the config's defaults) and the judge's gate.
    """
    run_dir = storage.location(run_dir)
    timer = Timer()
    with timer("read"):
        personas, questions, responses, judgments = (_read(run_dir, s) for s in _COLUMNS)
    if embedder is None and any(t is not None for t in (personas, questions, responses)):
        embedder = make_embedder(DEFAULT_EMBEDDER)

    def embed(name: str, texts: list[str]) -> np.ndarray:
        with timer(f"embed.{name}"):
            return embedder.embed(texts)

    def figures(name: str, texts: list[str], vectors: np.ndarray) -> TextFigures:
        return text_figures(name, texts, vectors, sample_size, seed, timer)

    report = DiversityReport(
        run_dir=str(run_dir),
        embedder=embedder.name if embedder else "",
        sample_size=sample_size,
        seed=seed,
    )
    sections: list[html.Section] = []
    if personas is None:
        report.notes.append("personas: no committed shards; persona and trait figures skipped")
    else:
        texts = personas["persona_description"].to_list()
        vectors = embed("personas", texts)
        report.personas = figures("personas", texts, vectors)
        traits = personas.select("persona_uuid", "domain", "traits").explode("traits")
        traits = traits.unnest("traits")
        with timer("traits"):
            report.traits = trait_figures(traits, report.notes, domains_dir)
        with timer("plots"):
            image = plots.persona_map(personas, traits, vectors, seed)
            sections.append(html.persona_section(report.personas, image))
            if report.traits:
                sections.append(html.trait_section(report.traits, plots.trait_bars(report.traits)))
    if questions is None:
        report.notes.append("questions: no committed shards; question figures skipped")
    else:
        texts = questions["question"].to_list()
        report.questions = figures("questions", texts, embed("questions", texts))
        sections.append(html.text_section("Questions", report.questions))
    if responses is None:
        report.notes.append("responses: no committed shards; candidate figures skipped")
    else:
        texts = responses["response"].to_list()
        vectors = embed("responses", texts)
        groups = responses["question_uuid"].rank("dense").cast(pl.Int64).to_numpy() - 1
        with timer("candidates"):
            similarity = dv.candidate_similarity(vectors, groups)
            by_writer = dv.writer_similarity(vectors, groups, responses["model"].to_numpy())
        report.candidates = candidate_figures(
            similarity, by_writer, figures("responses", texts, vectors)
        )
        with timer("plots"):
            image = plots.candidate_histogram(report.candidates)
            sections.append(html.candidate_section(report.candidates, image))
            sections.append(html.candidate_model_section(report.candidates))
    if judgments is None:
        report.notes.append("judge: no committed shards; agreement and label entropy skipped")
    elif not judgments["kept"].any():
        report.notes.append("judge: no kept judgments; agreement and label entropy skipped")
    else:
        with timer("judgments.near_duplicates"):
            judge_shards = scan_committed(run_dir, "judge", require_manifest=False)
            flagged = near_duplicate_labellers(judge_shards, flag_settings)
        report.judgments, agreement = judgment_figures(
            judgments, flagged, flag_settings, sample_size, seed, timer
        )
        with timer("plots"):
            heatmap = plots.agreement_heatmap(report.judgments, agreement)
            histogram = plots.cross_user_entropy_histogram(report.judgments)
            sections += html.judgment_sections(report.judgments, heatmap, histogram)
    report.gold = summarize_gold(run_dir)
    if report.gold:
        sections.append(html.gold_section(report.gold))
    report.timings_s = timer.seconds
    summary = summary or RunSummary(
        run_dir=str(run_dir), config_fingerprint="", wall_seconds=0.0, stages=[]
    )
    figures = {k: None if math.isnan(v) else v for k, v in headline(report).items()}
    by_model = report.candidates.by_model if report.candidates else {}
    summary = summary.model_copy(
        update={
            "diversity": figures,
            "candidate_similarity_by_model": {
                name: s.mean_similarity for name, s in by_model.items()
            },
        }
    )
    summary = with_verdicts(summary, checks or ChecksConfig(), flag_settings.gate)
    return _write(run_dir / "report", report, sections, summary)


def _read(run_dir: Location, stage: str) -> pl.DataFrame | None:
    """The stage's committed shards (a hand-made folder with no manifest: all its Parquet)."""
    files = committed_files(run_dir, stage, require_manifest=False)
    if not files:
        return None
    frame = pl.read_parquet([storage.polars_source(f) for f in files], columns=_COLUMNS[stage])
    return frame if frame.height else None


def _write(
    out_dir: Location, report: DiversityReport, sections: list[html.Section], summary: RunSummary
) -> ReportResult:
    make_dir(out_dir)
    result = ReportResult(report, out_dir / "diversity.json", out_dir / "diversity.html", summary)
    atomic_write_bytes(result.json_path, report.model_dump_json(indent=2).encode())
    page = html.page(report, sections, summary.verdicts)
    atomic_write_bytes(result.html_path, page.encode())
    return result
