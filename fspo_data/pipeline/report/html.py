"""The report's page: a self-contained HTML file, one section per figure group, each with
its table, its plot (an embedded PNG) and a note on how to read it."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from fspo_data.pipeline.gold import GoldFigures
from fspo_data.pipeline.report.figures import (
    CandidateFigures,
    DiversityReport,
    JudgmentFigures,
    TextFigures,
    TraitFigures,
    headline,
)
from fspo_data.pipeline.verdicts import CSS_COLOURS, Check


@dataclass(frozen=True)
class Section:
    title: str
    figures: dict[str, Any]
    image: str | None  # base64 PNG
    how_to_read: str


def persona_section(figures: TextFigures, image: str) -> Section:
    return Section("Personas", figures.model_dump(), image, HOW_TO_READ["personas"])


def trait_section(traits: list[TraitFigures], image: str) -> Section:
    table = {
        f"{t.domain}/{t.attribute}": f"{t.values_seen}/{t.values_total} seen; entropy "
        f"{t.entropy:.3f} (target {t.reference_entropy:.3f}); KL {t.kl:.4f} (noise "
        f"~{t.kl_sampling_noise:.4f}); off-taxonomy {t.off_taxonomy}"
        for t in traits
    }
    return Section("Trait coverage", table, image, HOW_TO_READ["traits"])


def text_section(title: str, figures: TextFigures) -> Section:
    return Section(title, figures.model_dump(), None, HOW_TO_READ["texts"])


def candidate_section(figures: CandidateFigures, image: str) -> Section:
    table = figures.model_dump(exclude={"histogram", "responses", "by_model", "cross_model"})
    table |= {f"responses: {k}": v for k, v in figures.responses.model_dump().items()}
    return Section("Candidate responses", table, image, HOW_TO_READ["candidates"])


def candidate_model_section(figures: CandidateFigures) -> Section:
    """Candidate similarity per model that wrote them, for the ensemble and across models."""
    rows = {"ensemble (all pairs)": (figures.questions, figures.mean_similarity)}
    rows |= {
        f"model {name}": (s.questions, s.mean_similarity) for name, s in figures.by_model.items()
    }
    if figures.cross_model is not None:
        cross = figures.cross_model
        rows["cross-model pairs"] = (cross.questions, cross.mean_similarity)
    table = {
        pairs: "n/a (no question with such a pair)"
        if mean is None or math.isnan(mean)
        else f"{mean:.4f} over {questions} questions"
        for pairs, (questions, mean) in rows.items()
    }
    return Section("Candidate similarity per model", table, None, HOW_TO_READ["models"])


def judgment_sections(figures: JudgmentFigures, heatmap: str, histogram: str) -> list[Section]:
    agreement_table = figures.model_dump(
        exclude={"near_duplicate_labellers", "multi_labelled_pairs", "cross_user_label_entropy"}
        | {"cross_user_entropy_histogram"}
    )
    flagged = ", ".join(figures.near_duplicate_labellers) or "none"
    agreement_table["near_duplicate_labellers"] = flagged
    entropy_table = figures.model_dump(include={"multi_labelled_pairs", "cross_user_label_entropy"})
    return [
        Section("User agreement", agreement_table, heatmap, HOW_TO_READ["agreement"]),
        Section("Label entropy across users", entropy_table, histogram, HOW_TO_READ["entropy"]),
    ]


HOW_TO_READ = {
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
    "models": (
        "The same mean pairwise cosine per question, over some of its candidate pairs: all pairs "
        "(the ensemble's figure, the one the verdict reads), pairs both written by one model, "
        "and pairs written by two different models. A model whose own candidates are much more "
        "alike than the ensemble's adds little by itself; cross-model pairs below each model's "
        "own figure are the diversity an ensemble buys. Each model's figure covers only the "
        "questions where it wrote two or more candidates (round-robin deals few per question)."
    ),
    "agreement": (
        "Rows and columns are the sampled users who share the most pairs with others; a cell is "
        "the share of the pairs both labelled on which they chose the same response (grey: none "
        "shared; with few shared pairs a cell is noisy). Users are ordered so that alike "
        "labellers sit together. Bright off-diagonal blocks are groups with the same taste. "
        "The near-duplicate labellers listed are the run summary's flagged users, over all "
        "users, not only those shown: agreement with another user above the job's "
        "stages.judge.flag_agreement on at least flag_min_shared shared pairs. They teach "
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
    "gold": (
        "Gold pairs have a right answer known by construction (the domain's gold rule: review, "
        "the candidate sharing more of the user's stated style; elix, the one written at the "
        "user's level against one two or more levels away; roleplay, probe users whose "
        "description states which of the two views they prefer). They are judged like every "
        "other pair, in both orders and the same mode, and never enter an episode. Accuracy "
        "counts a dropped pair as 0.5, so chance, and a judge that only follows the slot, "
        "score 0.50 whatever the mode; the interval is Wilson's at 95 %. Near 0.5 the labels "
        "of this run say nothing about the users; a low figure can also mean the candidates "
        "do not follow the view they were written for."
    ),
}


def gold_section(gold: dict[str, GoldFigures]) -> Section:
    table = {domain: figures.describe() for domain, figures in gold.items()}
    return Section("Gold accuracy of the judge", table, None, HOW_TO_READ["gold"])


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


def _verdicts(checks: list[Check]) -> str:
    """The verdict lines, each coloured by its status; the page opens with them."""
    items = "".join(
        f'<li style="color:{CSS_COLOURS[c.status]}">{html.escape(c.line())}</li>' for c in checks
    )
    return f'<ul class="verdicts">{items}</ul>'


def page(report: DiversityReport, sections: list[Section], checks: list[Check]) -> str:
    parts = [
        "<h1>Diversity report</h1>",
        _verdicts(checks),
        f"<p>{html.escape(report.run_dir)}: embedder "
        f"{html.escape(report.embedder or 'none')}, sample size {report.sample_size}, seed "
        f"{report.seed}</p>",
        _table(headline(report)),
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
.verdicts{font-family:monospace;list-style:none;padding:0}
</style></head><body>
{body}
</body></html>
"""
