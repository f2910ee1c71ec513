"""`fspo-data plan CONFIG`: LLM calls and tokens per stage, and GPU-hours, before anything runs.

Calls are counted from the config exactly, with two upper bounds where the run decides:
refinement relabels only users left with an unsettled pair (counted as every user, every
round), and rejected persona descriptions are regenerated (counted once; up to
`persona_checks.max_attempts` times). Tokens are estimates: each stage's own request builder
renders its prompt with stand-in values, generated text is taken at its `max_tokens`, and
characters become tokens at `--chars-per-token` (about 4 for English with Llama-3-style
tokenizers); chat-template tokens are not counted. With prefix caching the judge's persona
prefix (its system message) is computed once per user and pass, so it is counted as cached.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from fspo_data.core.config import JobConfig
from fspo_data.pipeline.validate import load_job

# The CLI imports this module to register `plan` on every start, so the stage modules (and
# with them polars and pyarrow) are imported where the planning needs them.
if TYPE_CHECKING:
    from fspo_data.core.chat import ChatMessage
    from fspo_data.domains import DomainSpec

CHARS_PER_TOKEN = 4.0
# A model-listed viewpoint is a few words ("a budget-conscious parent").
VIEW_TOKENS = 8
# Assumed per-GPU rates for the default model; measure yours (vllm bench throughput) and pass
# them. Prefill: 8B params x 2 FLOP/token at ~45% of an L40S's 181 dense bf16 TFLOPS ~ 5k
# tokens/s. Decode: MLPerf Inference v5.1 (Red Hat, vLLM, Llama-3.1-8B FP8, offline) reports
# 1,642 output tokens/s on one L40S; bf16 is slower, hence 1,000.
DEFAULT_MODEL = "Llama-3.1-8B-Instruct, bf16, vLLM, one L40S (ray_cluster.yaml's GPU)"
DEFAULT_PROMPT_TOKENS_PER_S = 5000.0
DEFAULT_GEN_TOKENS_PER_S = 1000.0


@dataclass(frozen=True)
class StageLoad:
    """Model work of one stage: calls, prompt tokens (of which served from the prefix cache)
    and generated tokens."""

    stage: str
    calls: int
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int

    def __add__(self, other: StageLoad) -> StageLoad:
        return StageLoad(
            self.stage,
            self.calls + other.calls,
            self.prompt_tokens + other.prompt_tokens,
            self.cached_prompt_tokens + other.cached_prompt_tokens,
            self.generated_tokens + other.generated_tokens,
        )

    def gpu_hours(self, prompt_per_s: float, gen_per_s: float) -> float:
        """Prefill of the uncached prompt plus decode, at per-GPU rates; summing the two is an
        upper bound, since continuous batching overlaps them."""
        prefill = (self.prompt_tokens - self.cached_prompt_tokens) / prompt_per_s
        return (prefill + self.generated_tokens / gen_per_s) / 3600


@dataclass(frozen=True)
class DomainCounts:
    users: int
    questions: int
    candidates: int  # per question
    pool_pairs: int
    pairs_per_user: int


def domain_counts(config: JobConfig, domain: DomainSpec) -> DomainCounts:
    counts = config.counts
    candidates = counts.candidates_per_question
    if not domain.responses.views_from_model:
        candidates = min(candidates, len(domain.responses.views))
    pool = counts.questions * math.comb(candidates, 2)
    if counts.pool_pairs is not None:
        pool = min(pool, counts.pool_pairs)
    return DomainCounts(
        counts.users, counts.questions, candidates, pool, min(counts.pairs_per_user, pool)
    )


class _Tokens:
    def __init__(self, chars_per_token: float) -> None:
        self.chars_per_token = chars_per_token

    def of(self, messages: list[ChatMessage]) -> int:
        return math.ceil(sum(len(m.content) for m in messages) / self.chars_per_token)

    def text(self, tokens: int) -> str:
        """A stand-in for generated text of `tokens` tokens."""
        return "x" * round(tokens * self.chars_per_token)


def domain_loads(config: JobConfig, name: str, chars_per_token: float) -> list[StageLoad]:
    from fspo_data.core.records import Question
    from fspo_data.domains import load_domain
    from fspo_data.personas.taxonomy import load_taxonomy, sample_traits
    from fspo_data.stages.personas import persona_request
    from fspo_data.stages.questions import question_request, question_topic
    from fspo_data.stages.responses import response_request, views_request

    domain, stages = load_domain(name, config.domains_dir), config.stages
    n = domain_counts(config, domain)
    tok = _Tokens(chars_per_token)
    traits = sample_traits(load_taxonomy(domain), config.seed, 0)
    if domain.persona.describe_with_model:
        prompt = tok.of(persona_request(traits, stages.personas, 0).messages)
        personas = StageLoad(
            "personas", n.users, n.users * prompt, 0, n.users * stages.personas.max_tokens
        )
        description = tok.text(stages.personas.max_tokens)
    else:
        personas = StageLoad("personas", 0, 0, 0, 0)
        description = domain.templated_description(traits)
    topic = question_topic(domain, 0)
    if domain.questions.fixed_question:
        questions = StageLoad("questions", 0, 0, 0, 0)
        question = Template(domain.questions.fixed_question).substitute(topic=topic)
    else:
        prompt = tok.of(question_request(domain, topic, stages.questions, 0).messages)
        questions = StageLoad(
            "questions",
            n.questions,
            n.questions * prompt,
            0,
            n.questions * stages.questions.max_tokens,
        )
        question = tok.text(stages.questions.max_tokens)
    stand_in = Question(
        question_uuid="q",
        domain=name,
        index=0,
        question=question,
        selected_trait="",
        trait_varied=topic,
        question_type="",
    )
    if domain.responses.views_from_model:
        prompt = tok.of(views_request(stand_in, n.candidates, stages.views).messages)
        views = StageLoad(
            "views", n.questions, n.questions * prompt, 0, n.questions * stages.views.max_tokens
        )
        view = tok.text(VIEW_TOKENS)
    else:
        views = StageLoad("views", 0, 0, 0, 0)
        view = domain.responses.views[0]
    candidates = n.questions * n.candidates
    prompt = tok.of(response_request(domain, stand_in, view, stages.responses).messages)
    responses = StageLoad(
        "responses",
        candidates,
        candidates * prompt,
        0,
        candidates * stages.responses.max_tokens,
    )
    judge = judge_load(config, domain, n, description, question, view, tok)
    return [personas, questions, views, responses, judge]


def judge_load(
    config: JobConfig,
    domain: DomainSpec,
    n: DomainCounts,
    description: str,
    question: str,
    view: str,
    tok: _Tokens,
) -> StageLoad:
    """Both orders x samples_per_order per pair, for the first pass and each refinement round
    (whose descriptions carry the preferences stated so far)."""
    from fspo_data.judging import judge_requests

    settings = config.stages.judge
    response = tok.text(config.stages.responses.max_tokens)
    calls_per_user = n.pairs_per_user * 2 * settings.samples_per_order
    statement = domain.state_preference(view, view)
    total = StageLoad("judge", 0, 0, 0, 0)
    for round_ in range(settings.refine_rounds + 1):
        stated = [statement] * (round_ * settings.stated_preferences_per_round)
        persona = "\n".join([description, *stated])
        request = judge_requests(persona, question, response, response, settings, 0)[0]
        per_call = tok.of(request.messages)
        cached = 0
        if config.model.enable_prefix_caching and calls_per_user:
            cached = n.users * (calls_per_user - 1) * tok.of(request.messages[:1])
        calls = n.users * calls_per_user
        total = total + StageLoad("judge", calls, calls * per_call, cached, calls)
    return total


def job_loads(config: JobConfig, chars_per_token: float = CHARS_PER_TOKEN) -> list[StageLoad]:
    """One StageLoad per stage (personas, questions, views, responses, judge), over domains."""
    per_domain = [domain_loads(config, d, chars_per_token) for d in config.domains]
    return [sum(loads[1:], loads[0]) for loads in zip(*per_domain, strict=True)]


@dataclass(frozen=True)
class Sizing:
    personas: int
    questions: int
    candidates: int
    judged_pairs: int
    llm_calls: int
    judge_calls: int
    prompt_tokens: int
    uncached_prompt_tokens: int
    generated_tokens: int
    gpu_hours: float
    wall_hours: float


def sizing(
    config: JobConfig, loads: list[StageLoad], prompt_per_s: float, gen_per_s: float
) -> Sizing:
    from fspo_data.domains import load_domain

    counts = [domain_counts(config, load_domain(d, config.domains_dir)) for d in config.domains]
    gpus = config.model.replicas * config.model.tensor_parallel_size
    gpu_hours = sum(s.gpu_hours(prompt_per_s, gen_per_s) for s in loads)
    return Sizing(
        personas=sum(c.users for c in counts),
        questions=sum(c.questions for c in counts),
        candidates=sum(c.questions * c.candidates for c in counts),
        judged_pairs=sum(c.users * c.pairs_per_user for c in counts),
        llm_calls=sum(s.calls for s in loads),
        judge_calls=next(s.calls for s in loads if s.stage == "judge"),
        prompt_tokens=sum(s.prompt_tokens for s in loads),
        uncached_prompt_tokens=sum(s.prompt_tokens - s.cached_prompt_tokens for s in loads),
        generated_tokens=sum(s.generated_tokens for s in loads),
        gpu_hours=gpu_hours,
        wall_hours=gpu_hours / gpus,
    )


def render(config: JobConfig, args: argparse.Namespace, console: Console) -> None:
    loads = job_loads(config, args.chars_per_token)
    rates = (args.prompt_tokens_per_s, args.gen_tokens_per_s)
    stages = Table(title=f"LLM work per stage ({', '.join(config.domains)})")
    for column in ("stage", "calls", "prompt tok", "of which cached", "gen tok", "GPU-h"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for s in loads:
        stages.add_row(
            s.stage,
            f"{s.calls:,}",
            f"{s.prompt_tokens:,}",
            f"{s.cached_prompt_tokens:,}",
            f"{s.generated_tokens:,}",
            f"{s.gpu_hours(*rates):,.2f}",
        )
    console.print(stages)
    size = sizing(config, loads, *rates)
    table = Table(title="sizing")
    table.add_column("figure")
    table.add_column("value", justify="right")
    gpus = config.model.replicas * config.model.tensor_parallel_size
    for label, value in (
        ("personas (users)", f"{size.personas:,}"),
        ("questions", f"{size.questions:,}"),
        ("candidate responses", f"{size.candidates:,}"),
        ("judged pairs (preferences)", f"{size.judged_pairs:,}"),
        ("judge calls (both orders x samples x passes)", f"{size.judge_calls:,}"),
        ("LLM calls, all stages", f"{size.llm_calls:,}"),
        ("prompt tokens (uncached)", f"{size.prompt_tokens:,} ({size.uncached_prompt_tokens:,})"),
        ("generated tokens", f"{size.generated_tokens:,}"),
        ("GPU-hours", f"{size.gpu_hours:,.1f}"),
        (
            f"wall hours on {gpus} GPU(s) (replicas x tensor_parallel_size)",
            f"{size.wall_hours:,.1f}",
        ),
    ):
        table.add_row(label, value)
    console.print(table)
    console.print(
        f"rates: {args.prompt_tokens_per_s:,.0f} prompt tok/s and {args.gen_tokens_per_s:,.0f} "
        f"generated tok/s per GPU for {args.model_label}; tokens estimated at "
        f"{args.chars_per_token} characters each. Upper bounds: every user relabelled in each "
        f"of {config.stages.judge.refine_rounds} refinement round(s); persona descriptions "
        f"counted once (rejected ones are regenerated, up to "
        f"{config.stages.persona_checks.max_attempts} tries)."
    )
    if config.stages.rationales.enabled:
        console.print("not sized: the rationales stage (one call per episode).")


def cmd_plan(args: argparse.Namespace) -> int:
    render(load_job(args.config), args, Console(width=max(Console().width, 120)))
    return 0


def add_plan_command(commands: argparse._SubParsersAction) -> None:
    """Register `plan` on the CLI's subcommands."""
    plan = commands.add_parser(
        "plan",
        help="print LLM calls, tokens and GPU-hours per stage for a config, before running it",
        description="Count the model calls and estimate the tokens of every stage of CONFIG, "
        "and the GPU-hours they take at the given per-GPU rates. Nothing runs.",
    )
    plan.add_argument("config", help="job config YAML")
    plan.add_argument(
        "--prompt-tokens-per-s",
        type=float,
        default=DEFAULT_PROMPT_TOKENS_PER_S,
        help=f"prefill rate per GPU (default {DEFAULT_PROMPT_TOKENS_PER_S:,.0f}: assumed for "
        f"{DEFAULT_MODEL})",
    )
    plan.add_argument(
        "--gen-tokens-per-s",
        type=float,
        default=DEFAULT_GEN_TOKENS_PER_S,
        help=f"decode rate per GPU (default {DEFAULT_GEN_TOKENS_PER_S:,.0f}: assumed for "
        f"{DEFAULT_MODEL})",
    )
    plan.add_argument(
        "--model-label",
        default=DEFAULT_MODEL,
        help="what the rates were measured on, printed with the table",
    )
    plan.add_argument(
        "--chars-per-token",
        type=float,
        default=CHARS_PER_TOKEN,
        help=f"characters per token when estimating (default {CHARS_PER_TOKEN})",
    )
    plan.set_defaults(handler=cmd_plan)
