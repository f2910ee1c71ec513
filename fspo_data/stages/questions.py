"""Questions: per domain, topics cycled evenly, phrased by the model or by a fixed template."""

from __future__ import annotations

import re
from collections import Counter
from string import Template

from fspo_data.core.chat import ChatRequest
from fspo_data.core.config import JobConfig, SamplingConfig
from fspo_data.core.records import Question, derived_seed, stable_id
from fspo_data.domains import DomainSpec, load_domain
from fspo_data.personas.taxonomy import load_taxonomy
from fspo_data.stages.base import (
    Estimate,
    Inputs,
    ShardOutput,
    ShardSpec,
    Stage,
    StageContext,
    StageLoad,
    complete_whole,
    config_slice,
    cut_shards,
)


def topics(domain: DomainSpec) -> list[str]:
    spec = domain.questions
    if spec.topics_from_trait:
        return sorted(load_taxonomy(domain).attributes[spec.topics_from_trait])
    return list(spec.topics)


def question_topic(domain: DomainSpec, index: int) -> str:
    """Topics cycle so questions cover all of them evenly."""
    options = topics(domain)
    return options[index % len(options)]


def question_request(
    domain: DomainSpec, topic: str, sampling: SamplingConfig, seed: int
) -> ChatRequest:
    return ChatRequest(
        messages=domain.render(domain.questions.prompt, topic=topic),
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=seed,
    )


QUESTION = re.compile(r"[A-Z][^.!?:\"“”\n]*\?")
# What a user would not ask: a question about questions, answers or the assistant, or the
# assistant's own offer to the user. The embedded model writes these ("Is there a question
# asking the best?", "Would you like me to suggest ...?"); a candidate can only answer them
# with nonsense, and every pair built on them is noise.
NOT_A_USERS_QUESTION = re.compile(
    r"\b(questions?|answers?|assistants?|AI|chatbots?|language models?)\b"
    r"|^(Would you like me|Do you want me|Shall I|Should I|May I|Can I help|How can I help|"
    r"Are you looking for)\b",
    re.IGNORECASE,
)


def parse_question(text: str) -> str | None:
    """The first question sentence in the text that a user would ask; None if there is none.

    Small models wrap their question (`A person might ask, "Which ...?"`) or chat around it,
    so the first capitalised run ending in "?" with no quote, colon or sentence end is taken,
    unless it is about questions, answers or the assistant, or the assistant's offer.
    """
    for match in QUESTION.finditer(text):
        question = match.group().strip()
        if len(question) >= 10 and not NOT_A_USERS_QUESTION.search(question):
            return question
    return None


def phrase_questions(
    domain: DomainSpec,
    chosen: list[str],
    ids: list[str],
    ctx: StageContext,
    counters: Counter[str],
) -> list[str | None]:
    if domain.questions.fixed_question:
        template = Template(domain.questions.fixed_question)
        return [template.substitute(topic=topic) for topic in chosen]
    # Small models often answer instead of asking: retry those with a new seed, bounded.
    sampling = ctx.config.stages.questions
    phrased: list[str | None] = [None] * len(ids)
    for attempt in range(ctx.config.stages.persona_checks.max_attempts):
        pending = [i for i, text in enumerate(phrased) if text is None]
        if not pending:
            break
        if attempt:
            counters["questions_regenerated"] += len(pending)
        requests = [
            question_request(domain, chosen[i], sampling, derived_seed(ids[i], attempt))
            for i in pending
        ]
        completions = complete_whole(
            ctx, ctx.config.roster().name_of("questions"), requests, counters, "questions"
        )
        for i, c in zip(pending, completions, strict=True):
            phrased[i] = parse_question(c.text) if c.ok else None
    return phrased


def cut(config: JobConfig) -> list[ShardSpec]:
    return cut_shards(
        "questions", config.domains, config.counts.questions, config.sharding.questions_per_shard
    )


def prompts(domain: DomainSpec) -> tuple[str, ...]:
    return () if domain.questions.fixed_question else (domain.questions.prompt,)


def estimate(config: JobConfig, domain: DomainSpec, est: Estimate) -> list[StageLoad]:
    """One call per question; the question stand-in is what later prompts carry."""
    topic = question_topic(domain, 0)
    est.stand_ins["topic"] = topic
    if domain.questions.fixed_question:
        est.stand_ins["question"] = Template(domain.questions.fixed_question).substitute(
            topic=topic
        )
        return [StageLoad("questions")]
    sampling = config.stages.questions
    est.stand_ins["question"] = est.text(sampling.max_tokens)
    request = question_request(domain, topic, sampling, 0)
    return [est.load("questions", config.counts.questions, request)]


def run(spec: ShardSpec, inputs: Inputs, ctx: StageContext) -> ShardOutput:
    domain = load_domain(spec.domain, ctx.config.domains_dir)
    indices = range(spec.start, spec.stop)
    chosen = [question_topic(domain, i) for i in indices]
    ids = [stable_id("question", spec.domain, ctx.config.seed, i) for i in indices]
    counters: Counter[str] = Counter()
    texts = phrase_questions(domain, chosen, ids, ctx, counters)
    records = []
    for index, qid, topic, question in zip(indices, ids, chosen, texts, strict=True):
        if question is None:
            counters["questions_dropped_unparsable"] += 1
            continue
        records.append(
            Question(
                question_uuid=qid,
                domain=spec.domain,
                index=index,
                question=question,
                selected_trait=domain.questions.topics_from_trait or "topic",
                trait_varied=topic,
                question_type=domain.responses.prompt,
            )
        )
    return ShardOutput(records=records, counters=counters)


STAGE = Stage(
    name="questions",
    record_type=Question,
    roles=("questions",),
    # Unparsable questions are retried up to the persona checks' attempts.
    settings=config_slice(
        "seed", "stages.questions", "stages.persona_checks.max_attempts", "stages.truncation"
    ),
    prompts=prompts,
    cut=cut,
    run=run,
    estimate=estimate,
)
