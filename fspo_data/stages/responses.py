"""Candidate responses: the model lists viewpoints per question, then answers once per view.

View steering is what makes candidates differ (paper: mean pairwise similarity 0.94 for one
model at temperature 1.0, 0.78 with view steering).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from fspo_data.core.chat import ChatRequest, Completion
from fspo_data.core.config import JobConfig, SamplingConfig
from fspo_data.core.records import Question, Response, derived_seed, stable_id
from fspo_data.domains import DomainSpec, load_domain
from fspo_data.prompts import render
from fspo_data.stages.base import (
    Estimate,
    Inputs,
    ShardOutput,
    ShardSpec,
    Stage,
    StageContext,
    StageInput,
    StageLoad,
    clean_line,
    complete_whole,
    config_slice,
    records_from_table,
)

# A model-listed viewpoint is a few words ("a budget-conscious parent"), for `fspo-data plan`.
VIEW_TOKENS = 8
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


def plausible_view(view: str) -> bool:
    """A point of view is a short description of someone ("a budget-conscious pragmatist"),
    not an answer, a question or a header, which small models write instead of a listing
    ("The answer to this question would be: 3", "Is there a question better suited...?",
    "Clarify"): those would steer a candidate nowhere and state nonsense preferences."""
    return (
        3 <= len(view) <= 80
        and 2 <= len(view.split()) <= 12
        and not any(mark in view for mark in ':?"')
    )


def parse_views(text: str, count: int) -> tuple[list[str], int]:
    """Up to `count` distinct, plausible views from a listing, topped up from FALLBACK_VIEWS.

    Returns the views and how many came from the fallback list.
    """
    views: list[str] = []
    for line in text.splitlines():
        view = clean_line(line).rstrip(".")
        if plausible_view(view) and view.lower() not in {v.lower() for v in views}:
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
    requests = [views_request(q, count, sampling) for q in questions]
    listings = complete_whole(
        ctx, ctx.config.roster().name_of("views"), requests, counters, "views"
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


def candidates_per_question(config: JobConfig, domain: DomainSpec) -> int:
    """Candidates a question gets: as asked, or every fixed view of the domain if fewer."""
    count = config.counts.candidates_per_question
    return count if domain.responses.views_from_model else min(count, len(domain.responses.views))


def prompts(domain: DomainSpec) -> tuple[str, ...]:
    listing = ("viewpoints",) if domain.responses.views_from_model else ()
    return (*listing, domain.responses.prompt)


def estimate(config: JobConfig, domain: DomainSpec, est: Estimate) -> list[StageLoad]:
    """A view listing per question (model-listed views), then one answer per view, or one per
    view and model of an ensemble assigned 'every'. Each candidate model's share of the
    answers goes to `est.counts["candidates/<model>"]`, dealt as the stage deals them."""
    questions, stages = config.counts.questions, config.stages
    count = candidates_per_question(config, domain)
    roster = config.roster()
    writers = list(roster.roles["candidates"])
    est.counts["candidates"] = count * (len(writers) if roster.assign == "every" else 1)
    stand_in = Question(
        question_uuid="q",
        domain=domain.name,
        index=0,
        question=est.stand_ins["question"],
        selected_trait="",
        trait_varied=est.stand_ins["topic"],
        question_type="",
    )
    views = StageLoad("views")
    view = domain.responses.views[0] if domain.responses.views else ""
    if domain.responses.views_from_model:
        views = est.load("views", questions, views_request(stand_in, count, stages.views))
        view = est.text(VIEW_TOKENS)
    est.stand_ins["view"] = view
    est.stand_ins["response"] = est.text(stages.responses.max_tokens)
    numbered = [stand_in.model_copy(update={"index": i}) for i in range(questions)]
    dealt = assign_writers(numbered, [[view] * count] * questions, writers, roster.assign)
    for writer, calls in Counter(w for _, _, w in dealt).items():
        est.counts[f"candidates/{writer}"] = calls
    request = response_request(domain, stand_in, view, stages.responses)
    return [views, est.load("responses", len(dealt), request)]


def assign_writers(
    questions: list[Question], views: list[list[str]], writers: list[str], policy: str
) -> list[tuple[Question, str, str]]:
    """(question, view, model) for every candidate to write. 'round_robin' deals view j of
    question i to writer (i + j) mod n, so an ensemble's models share every question and every
    view position evenly; 'every' has each view answered by each writer."""
    if policy == "every":
        return [
            (q, v, w)
            for q, q_views in zip(questions, views, strict=True)
            for v in q_views
            for w in writers
        ]
    return [
        (q, v, writers[(q.index + j) % len(writers)])
        for q, q_views in zip(questions, views, strict=True)
        for j, v in enumerate(q_views)
    ]


def response_uuid(question: Question, view: str, model: str, policy: str) -> str:
    # A view is answered once unless every writer answers it; only then does the model tell
    # the candidates apart (so a one-model job keeps its ids).
    if policy == "every":
        return stable_id("response", question.question_uuid, view, model)
    return stable_id("response", question.question_uuid, view)


def run(spec: ShardSpec, inputs: Inputs, ctx: StageContext) -> ShardOutput:
    config = ctx.config
    roster = config.roster()
    count = config.counts.candidates_per_question
    questions = records_from_table(inputs["questions"], Question)
    domain = load_domain(spec.domain, config.domains_dir)
    counters: Counter[str] = Counter()
    views = choose_views(domain, questions, count, ctx, counters)
    planned = assign_writers(questions, views, list(roster.roles["candidates"]), roster.assign)
    completions: dict[int, Completion] = {}
    for writer in roster.roles["candidates"]:
        mine = [i for i, (_, _, w) in enumerate(planned) if w == writer]
        requests = [
            response_request(domain, planned[i][0], planned[i][1], config.stages.responses)
            for i in mine
        ]
        for i, completion in zip(
            mine, complete_whole(ctx, writer, requests, counters, "responses"), strict=True
        ):
            completions[i] = completion
    records = []
    for i, (question, view, writer) in enumerate(planned):
        completion = completions[i]
        if not completion.ok:  # already counted: responses_failed or _dropped_truncated
            continue
        text = completion.text.strip()
        if not text:
            counters["responses_dropped_empty"] += 1
            continue
        records.append(
            Response(
                response_uuid=response_uuid(question, view, writer, roster.assign),
                question_uuid=question.question_uuid,
                domain=spec.domain,
                view=view,
                response=text,
                model=writer,
                completion_tokens=completion.completion_tokens,
            )
        )
    return ShardOutput(records=records, counters=counters)


STAGE = Stage(
    name="responses",
    record_type=Response,
    roles=("views", "candidates"),
    inputs=(StageInput(stage="questions", align="shard"),),
    settings=config_slice(
        "counts.candidates_per_question", "stages.views", "stages.responses", "stages.truncation"
    ),
    prompts=prompts,
    run=run,
    estimate=estimate,
)
