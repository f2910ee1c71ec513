"""The `fspo-data plan` command: its arguments and the tables it prints (pipeline/plan.py
computes the figures)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from fspo_data.core.config import JobConfig
from fspo_data.pipeline.cost import usd
from fspo_data.pipeline.plan import (
    CHARS_PER_TOKEN,
    DEFAULT_GEN_TOKENS_PER_S,
    DEFAULT_MODEL,
    DEFAULT_PROMPT_TOKENS_PER_S,
    ModelPlan,
    Rates,
    loads_by_kind,
    model_parts,
    model_plans,
    model_stage_loads,
    sizing,
    stage_dollars,
    work_cost,
)
from fspo_data.pipeline.validate import load_job


def render(config: JobConfig, args: argparse.Namespace, console: Console) -> None:
    rates, model_rates = (args.prompt_tokens_per_s, args.gen_tokens_per_s), args.model_rates
    work = model_stage_loads(config, args.chars_per_token)
    stages = Table(title=f"LLM work per stage ({', '.join(config.domains)})")
    columns = ("stage", "calls", "prompt tok", "of which cached", "cached", "gen tok", "GPU-h", "$")
    for column in columns:
        stages.add_column(column, justify="left" if column == "stage" else "right")
    loads = [load for kinds in loads_by_kind(work).values() for load in kinds]
    for s in loads:
        parts = [part for stage in work.values() for part in model_parts(stage, s.stage)]
        hours, dollars = work_cost(config, parts, rates, model_rates)
        stages.add_row(
            s.stage,
            f"{s.calls:,}",
            f"{s.prompt_tokens:,}",
            f"{s.cached_prompt_tokens:,}",
            f"{s.cached_prompt_tokens / s.prompt_tokens:.0%}" if s.prompt_tokens else "-",
            f"{s.generated_tokens:,}",
            f"{hours:,.2f}",
            usd(dollars),
        )
    console.print(stages)
    plans = model_plans(config, rates, model_rates, args.chars_per_token)
    render_models(plans, console)
    size = sizing(config, loads, plans)
    table = Table(title="sizing")
    table.add_column("figure")
    table.add_column("value", justify="right")
    dollars = stage_dollars(config, *rates, args.chars_per_token, model_rates)
    total = sum(dollars.values()) if dollars else None
    per_pair = usd(total / size.judged_pairs) if total is not None else "-"
    gpus = " + ".join(str(p.gpus) for p in plans)
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
            f"wall hours on {gpus} GPU(s) (replicas x tensor_parallel_size; models in turn)",
            f"{size.wall_hours:,.1f}",
        ),
        ("dollars at the config's prices (per judged pair)", f"{usd(total)} ({per_pair})"),
    ):
        table.add_row(label, value)
    console.print(table)
    own = "".join(f"; {m}: {p:,.0f} and {g:,.0f}" for m, (p, g) in (model_rates or {}).items())
    console.print(
        f"rates: {args.prompt_tokens_per_s:,.0f} prompt tok/s and {args.gen_tokens_per_s:,.0f} "
        f"generated tok/s per GPU for {args.model_label}{own}; tokens estimated at "
        f"{args.chars_per_token} characters each. Upper bounds: every user relabelled in each "
        f"of {config.stages.judge.refine_rounds} refinement round(s); persona descriptions "
        f"counted once (rejected ones are regenerated, up to "
        f"{config.stages.persona_checks.max_attempts} tries)."
    )
    if config.stages.rationales.enabled:
        console.print("not sized: the rationales stage (one call per episode).")


def render_models(plans: list[ModelPlan], console: Console) -> None:
    table = Table(title="LLM work per model")
    columns = ("model", "roles", "calls", "prompt tok", "of which cached", "gen tok", "GPU-h",
               "GPUs", "wall h", "$")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "roles") else "right")
    for p in plans:
        table.add_row(
            p.model,
            ", ".join(p.roles),
            f"{p.load.calls:,}",
            f"{p.load.prompt_tokens:,}",
            f"{p.load.cached_prompt_tokens:,}",
            f"{p.load.generated_tokens:,}",
            f"{p.gpu_hours:,.2f}",
            str(p.gpus),
            f"{p.wall_hours:,.2f}",
            usd(p.dollars),
        )
    console.print(table)


def model_rates_arg(text: str) -> tuple[str, Rates]:
    """`NAME=PROMPT_PER_S,GEN_PER_S` of `--model-rates`."""
    name, _, rates = text.rpartition("=")
    prompt, _, gen = rates.partition(",")
    try:
        parsed = (float(prompt), float(gen))
    except ValueError:
        parsed = (0.0, 0.0)
    if not name or min(parsed) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give NAME=PROMPT_TOKENS_PER_S,GEN_TOKENS_PER_S, both rates above 0"
        )
    return name, parsed


def cmd_plan(args: argparse.Namespace) -> int:
    config = load_job(args.config)
    args.model_rates = dict(args.model_rates or [])
    unknown = [name for name in args.model_rates if name not in config.roster().models]
    if unknown:
        known = ", ".join(config.roster().models)
        print(f"plan: --model-rates names {unknown[0]!r}, not a model of the config ({known})")
        return 2
    render(config, args, Console(width=max(Console().width, 120)))
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
        "--model-rates",
        type=model_rates_arg,
        action="append",
        metavar="NAME=PROMPT_PER_S,GEN_PER_S",
        help="one model's own per-GPU prefill and decode rates (repeatable; NAME as under "
        "`models:`, or the served name of a single `model:`); others take the rates above",
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
