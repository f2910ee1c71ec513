"""`fspo-data plan CONFIG`: LLM calls and tokens per stage, GPU-hours and dollars (at the
config's `model.prices`, pipeline/cost.py), before anything runs.

Each stage sizes its own work (`Stage.estimate`); this module runs them in order per domain,
adds them up and prints them. Calls are counted from the config exactly, with two upper
bounds where the run decides:
refinement relabels only users left with an unsettled pair (counted as every user, every
round), and rejected persona descriptions are regenerated (counted once; up to
`persona_checks.max_attempts` times). Tokens are estimates: each stage's own request builder
renders its prompt with stand-in values, generated text is taken at its `max_tokens`, and
characters become tokens at `--chars-per-token` (about 4 for English with Llama-3-style
tokenizers); chat-template tokens are not counted. With prefix caching the judge's shared
prefix (a user's description, or a pair in one order: `stages.judge.layout`) is computed once
per shard and pass, the rest of its calls counted as cached (stages/judge.py `estimate`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from fspo_data.core.config import JobConfig
from fspo_data.pipeline.cost import load_dollars, usd
from fspo_data.pipeline.validate import load_job

# The CLI imports this module to register `plan` on every start, so the stage modules (and
# with them polars and pyarrow) are imported where the planning needs them.
if TYPE_CHECKING:
    from fspo_data.stages.base import StageLoad

CHARS_PER_TOKEN = 4.0
# Assumed per-GPU rates for the default model; measure yours (vllm bench throughput) and pass
# them. Prefill: 8B params x 2 FLOP/token at ~45% of an L40S's 181 dense bf16 TFLOPS ~ 5k
# tokens/s. Decode: MLPerf Inference v5.1 (Red Hat, vLLM, Llama-3.1-8B FP8, offline) reports
# 1,642 output tokens/s on one L40S; bf16 is slower, hence 1,000.
DEFAULT_MODEL = "Llama-3.1-8B-Instruct, bf16, vLLM, one L40S (ray_cluster.yaml's GPU)"
DEFAULT_PROMPT_TOKENS_PER_S = 5000.0
DEFAULT_GEN_TOKENS_PER_S = 1000.0


@dataclass(frozen=True)
class DomainCounts:
    users: int
    questions: int
    candidates: int  # per question
    pool_pairs: int
    pairs_per_user: int


def domain_plan(
    config: JobConfig, name: str, chars_per_token: float = CHARS_PER_TOKEN
) -> tuple[dict[str, list[StageLoad]], DomainCounts]:
    """Each stage's `estimate` in run order over one domain, by the stage that runs it (a stage
    may size several kinds of work: responses sizes 'views' and 'responses'), and the counts
    they settled."""
    from fspo_data.domains import load_domain
    from fspo_data.stages import STAGES
    from fspo_data.stages.base import Estimate

    domain, est = load_domain(name, config.domains_dir), Estimate(chars_per_token)
    # In run order: each estimate reads the stand-ins and counts the ones before it left.
    loads = {
        stage.name: stage.estimate(config, domain, est)
        for stage in STAGES
        if stage.estimate is not None and stage.enabled(config)
    }
    counts = DomainCounts(
        config.counts.users,
        config.counts.questions,
        est.counts["candidates"],
        est.counts["pool_pairs"],
        est.counts["pairs_per_user"],
    )
    return loads, counts


def domain_counts(config: JobConfig, name: str) -> DomainCounts:
    return domain_plan(config, name)[1]


def stage_loads(
    config: JobConfig, chars_per_token: float = CHARS_PER_TOKEN
) -> dict[str, list[StageLoad]]:
    """Each LLM stage's StageLoads, one per kind of work, summed over the job's domains."""
    totals: dict[str, dict[str, StageLoad]] = {}
    for domain in config.domains:
        for stage, loads in domain_plan(config, domain, chars_per_token)[0].items():
            kinds = totals.setdefault(stage, {})
            for load in loads:
                kinds[load.stage] = kinds[load.stage] + load if load.stage in kinds else load
    return {stage: list(kinds.values()) for stage, kinds in totals.items()}


def job_loads(config: JobConfig, chars_per_token: float = CHARS_PER_TOKEN) -> list[StageLoad]:
    """One StageLoad per kind of model work (personas, questions, views, responses, judge),
    summed over the job's domains."""
    return [load for loads in stage_loads(config, chars_per_token).values() for load in loads]


def stage_dollars(
    config: JobConfig,
    prompt_per_s: float = DEFAULT_PROMPT_TOKENS_PER_S,
    gen_per_s: float = DEFAULT_GEN_TOKENS_PER_S,
    chars_per_token: float = CHARS_PER_TOKEN,
) -> dict[str, float]:
    """Estimated dollars of each LLM stage at the config's prices ({} without prices); an
    hourly rate is charged on the stage's GPU-hours at the given per-GPU rates."""
    if not config.model.prices.given:
        return {}
    return {
        stage: sum(
            load_dollars(config.model, s, s.gpu_hours(prompt_per_s, gen_per_s)) or 0.0
            for s in loads
        )
        for stage, loads in stage_loads(config, chars_per_token).items()
    }


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
    counts = [domain_counts(config, d) for d in config.domains]
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
    columns = ("stage", "calls", "prompt tok", "of which cached", "cached", "gen tok", "GPU-h", "$")
    for column in columns:
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for s in loads:
        stages.add_row(
            s.stage,
            f"{s.calls:,}",
            f"{s.prompt_tokens:,}",
            f"{s.cached_prompt_tokens:,}",
            f"{s.cached_prompt_tokens / s.prompt_tokens:.0%}" if s.prompt_tokens else "-",
            f"{s.generated_tokens:,}",
            f"{s.gpu_hours(*rates):,.2f}",
            usd(load_dollars(config.model, s, s.gpu_hours(*rates))),
        )
    console.print(stages)
    size = sizing(config, loads, *rates)
    table = Table(title="sizing")
    table.add_column("figure")
    table.add_column("value", justify="right")
    gpus = config.model.replicas * config.model.tensor_parallel_size
    dollars = stage_dollars(config, *rates, args.chars_per_token)
    total = sum(dollars.values()) if dollars else None
    per_pair = usd(total / size.judged_pairs) if total is not None else "-"
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
        ("dollars at the config's prices (per judged pair)", f"{usd(total)} ({per_pair})"),
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
        help="print LLM calls, tokens, GPU-hours and dollars per stage for a config, before "
        "running it",
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
