"""Candidate responses: the model lists viewpoints per question, then answers once per view.

View steering is what makes candidates differ (paper: mean pairwise similarity 0.94 for one
model at temperature 1.0, 0.78 with view steering).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from fspo_data.core.chat import ChatRequest, complete_all
from fspo_data.core.config import JobConfig, SamplingConfig
from fspo_data.core.records import Question, Response, derived_seed, stable_id
from fspo_data.core.shards import read_committed
from fspo_data.domains import DomainSpec, load_domain
from fspo_data.prompts import render
from fspo_data.stages.base import (
    ShardOutput,
    ShardSpec,
    Stage,
    StageContext,
    clean_line,
    records_from_table,
    require_columns,
)
from fspo_data.stages.questions import plan as question_plan

# Used when a small model lists fewer distinct views than asked; counted as `views_fallback`.
FALLBACK_VIEWS = (
    "a budget-conscious pragmatist",
    "an adventurous enthusiast",
    "a cautious traditionalist",
    "a busy parent",
    "an expert who loves detail",
    "a minimalist",
    "a social extrovert",
    "an environmentally minded person",
)


def views_request(question: Question, count: int, sampling: SamplingConfig) -> ChatRequest:
    return ChatRequest(
        messages=render("viewpoints", count=str(count), question=question.question),
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=derived_seed("views", question.question_uuid),
    )


def parse_views(text: str, count: int) -> tuple[list[str], int]:
    """Up to `count` distinct views from a listing, topped up from FALLBACK_VIEWS.

    Returns the views and how many came from the fallback list.
    """
    views: list[str] = []
    for line in text.splitlines():
        view = clean_line(line).rstrip(".:")
        if 3 <= len(view) <= 80 and view.lower() not in {v.lower() for v in views}:
            views.append(view)
        if len(views) == count:
            return views, 0
    missing = count - len(views)
    views.extend([v for v in FALLBACK_VIEWS if v not in views][:missing])
    return views, missing


def fixed_views(domain: DomainSpec, question: Question, count: int) -> list[str]:
    """A seeded choice of `count` of the domain's views (all of them if it has fewer)."""
    views = domain.responses.views
    rng = np.random.default_rng(derived_seed("views", question.question_uuid))
    return [views[i] for i in sorted(rng.choice(len(views), min(count, len(views)), replace=False))]


def choose_views(
    domain: DomainSpec,
    questions: list[Question],
    count: int,
    ctx: StageContext,
    counters: Counter[str],
) -> list[list[str]]:
    if not domain.responses.views_from_model:
        return [fixed_views(domain, q, count) for q in questions]
    sampling = ctx.config.stages.views
    listings = complete_all(
        ctx.llm(), [views_request(q, count, sampling) for q in questions], counters, "views"
    )
    chosen = []
    for listing in listings:
        views, fallback = parse_views(listing.text if listing.ok else "", count)
        counters["views_fallback"] += fallback
        chosen.append(views)
    return chosen


def response_request(
    domain: DomainSpec, question: Question, view: str, sampling: SamplingConfig
) -> ChatRequest:
    return ChatRequest(
        messages=domain.render(domain.responses.prompt, view=view, question=question.question),
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=derived_seed("response", question.question_uuid, view),
    )


def plan(config: JobConfig) -> list[ShardSpec]:
    return [spec.model_copy(update={"stage": "responses"}) for spec in question_plan(config)]


def run(spec: ShardSpec, ctx: StageContext) -> ShardOutput:
    config = ctx.config
    count = config.counts.candidates_per_question
    table = read_committed(ctx.run_dir, "questions", prefix=spec.name)
    require_columns("responses", f"questions/{spec.name}", table, Question)
    questions = records_from_table(table, Question)
    domain = load_domain(spec.domain, config.domains_dir)
    counters: Counter[str] = Counter()
    views = choose_views(domain, questions, count, ctx, counters)
    planned = [(q, view) for q, q_views in zip(questions, views, strict=True) for view in q_views]
    requests = [response_request(domain, q, v, config.stages.responses) for q, v in planned]
    completions = complete_all(ctx.llm(), requests, counters, "responses")
    records = []
    for (question, view), completion in zip(planned, completions, strict=True):
        text = completion.text.strip() if completion.ok else ""
        if not text:
            counters["responses_dropped_empty"] += 1
            continue
        records.append(
            Response(
                response_uuid=stable_id("response", question.question_uuid, view),
                question_uuid=question.question_uuid,
                domain=spec.domain,
                view=view,
                response=text,
                model=ctx.llm().model_name,
                completion_tokens=completion.completion_tokens,
            )
        )
    return ShardOutput(records=records, counters=counters)


STAGE = Stage(name="responses", record_type=Response, needs_llm=True, plan=plan, run=run)
