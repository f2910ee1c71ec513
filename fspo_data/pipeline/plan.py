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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fspo_data.core.config import JobConfig
from fspo_data.pipeline.cost import load_dollars

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


# Per-GPU rates: prompt (prefill) tokens per second, generated (decode) tokens per second.
Rates = tuple[float, float]
# The role whose model does each kind of work a `Stage.estimate` sizes; any other kind of
# work is its own role's (personas, questions, views, judge, rationales).
ROLE_OF_WORK = {"responses": "candidates", "gold": "judge"}


@dataclass(frozen=True)
class DomainCounts:
    users: int
    questions: int
    candidates: int  # per question
    pool_pairs: int
    pairs_per_user: int


def _estimate(
    config: JobConfig, name: str, chars_per_token: float = CHARS_PER_TOKEN
) -> tuple[dict[str, list[StageLoad]], dict[str, int]]:
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
    return loads, est.counts


def domain_counts(config: JobConfig, name: str) -> DomainCounts:
    counts = _estimate(config, name)[1]
    keys = ("candidates", "pool_pairs", "pairs_per_user")
    return DomainCounts(config.counts.users, config.counts.questions, *map(counts.get, keys))


def split_by_model(
    config: JobConfig, load: StageLoad, counts: Mapping[str, int]
) -> list[tuple[str, StageLoad]]:
    """`load` as the work of each model serving its role: the candidates' answers as the
    ensemble deals them (`counts["candidates/<model>"]`, set by the responses estimate);
    every call of a kind is one size, so tokens split like calls."""
    from fspo_data.stages.base import StageLoad

    roster = config.roster()
    role = ROLE_OF_WORK.get(load.stage, load.stage)
    if role != "candidates":
        return [(roster.name_of(role), load)]
    parts = []
    for name in roster.roles["candidates"]:
        calls = counts.get(f"candidates/{name}", 0)
        tokens = (load.prompt_tokens, load.cached_prompt_tokens, load.generated_tokens)
        shares = [n * calls // load.calls if load.calls else 0 for n in tokens]
        parts.append((name, StageLoad(load.stage, calls, *shares)))
    return parts


def model_stage_loads(
    config: JobConfig, chars_per_token: float = CHARS_PER_TOKEN
) -> dict[str, dict[tuple[str, str], StageLoad]]:
    """Stage -> (kind of work, model) -> its StageLoad, summed over the job's domains."""
    totals: dict[str, dict[tuple[str, str], StageLoad]] = {}
    for domain in config.domains:
        loads, counts = _estimate(config, domain, chars_per_token)
        for stage, stage_loads_ in loads.items():
            work = totals.setdefault(stage, {})
            for load in stage_loads_:
                for model, part in split_by_model(config, load, counts):
                    key = (load.stage, model)
                    work[key] = work[key] + part if key in work else part
    return totals


def stage_loads(
    config: JobConfig, chars_per_token: float = CHARS_PER_TOKEN
) -> dict[str, list[StageLoad]]:
    """Each LLM stage's StageLoads, one per kind of work, summed over the job's domains and
    models."""
    return loads_by_kind(model_stage_loads(config, chars_per_token))


def loads_by_kind(
    work: Mapping[str, Mapping[tuple[str, str], StageLoad]],
) -> dict[str, list[StageLoad]]:
    totals: dict[str, list[StageLoad]] = {}
    for stage, parts in work.items():
        kinds: dict[str, StageLoad] = {}
        for (kind, _), load in parts.items():
            kinds[kind] = kinds[kind] + load if kind in kinds else load
        totals[stage] = list(kinds.values())
    return totals


def job_loads(config: JobConfig, chars_per_token: float = CHARS_PER_TOKEN) -> list[StageLoad]:
    """One StageLoad per kind of model work (personas, questions, views, responses, judge),
    summed over the job's domains."""
    return [load for loads in stage_loads(config, chars_per_token).values() for load in loads]


def work_cost(
    config: JobConfig,
    parts: list[tuple[str, StageLoad]],
    rates: Rates,
    model_rates: Mapping[str, Rates] | None,
) -> tuple[float, float | None]:
    """GPU-hours of some models' work, each at its model's rates (`model_rates`, else
    `rates`), and its dollars, each at its model's prices; None when none has prices."""
    models = config.roster().models
    hours, dollars = 0.0, []
    for name, load in parts:
        gpu_hours = load.gpu_hours(*(model_rates or {}).get(name, rates))
        hours += gpu_hours
        dollars.append(load_dollars(models[name], load, gpu_hours))
    priced = [d for d in dollars if d is not None]
    return hours, sum(priced) if priced else None


def stage_dollars(
    config: JobConfig,
    prompt_per_s: float = DEFAULT_PROMPT_TOKENS_PER_S,
    gen_per_s: float = DEFAULT_GEN_TOKENS_PER_S,
    chars_per_token: float = CHARS_PER_TOKEN,
    model_rates: Mapping[str, Rates] | None = None,
) -> dict[str, float]:
    """Estimated dollars of each LLM stage, each model's work at its own prices ({} without
    prices); an hourly rate is charged on the work's GPU-hours at the model's per-GPU rates
    (`model_rates`, else the given ones)."""
    if not any(m.prices.given for m in config.roster().models.values()):
        return {}
    return {
        stage: work_cost(config, model_parts(work), (prompt_per_s, gen_per_s), model_rates)[1]
        or 0.0
        for stage, work in model_stage_loads(config, chars_per_token).items()
    }


def model_parts(
    work: Mapping[tuple[str, str], StageLoad], kind: str | None = None
) -> list[tuple[str, StageLoad]]:
    """(model, load) of each (kind of work, model) of `work`, or of one kind."""
    return [(m, load) for (k, m), load in work.items() if kind in (None, k)]


@dataclass(frozen=True)
class ModelPlan:
    """One model's share of the job: every kind of work of the roles it serves."""

    model: str
    roles: list[str]
    load: StageLoad
    gpu_hours: float  # at its rates
    gpus: int  # replicas x tensor_parallel_size
    dollars: float | None  # at its prices

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / self.gpus


def model_plans(
    config: JobConfig,
    rates: Rates = (DEFAULT_PROMPT_TOKENS_PER_S, DEFAULT_GEN_TOKENS_PER_S),
    model_rates: Mapping[str, Rates] | None = None,
    chars_per_token: float = CHARS_PER_TOKEN,
) -> list[ModelPlan]:
    """Each model's calls, tokens, GPU-hours and dollars, in the roster's order."""
    from fspo_data.stages.base import StageLoad

    roster = config.roster()
    work: dict[str, list[StageLoad]] = {name: [] for name in roster.models}
    for parts in model_stage_loads(config, chars_per_token).values():
        for model, load in model_parts(parts):
            work[model].append(load)
    plans = []
    for name, loads in work.items():
        model = roster.models[name]
        gpu_hours, dollars = work_cost(config, [(name, s) for s in loads], rates, model_rates)
        plans.append(
            ModelPlan(
                model=name,
                roles=roster.roles_of(name),
                load=sum(loads, StageLoad(name)),
                gpu_hours=gpu_hours,
                gpus=model.replicas * model.tensor_parallel_size,
                dollars=dollars,
            )
        )
    return plans


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


def sizing(config: JobConfig, loads: list[StageLoad], plans: list[ModelPlan]) -> Sizing:
    """The job's totals; GPU-hours are each model's at its rates, and wall hours each model's
    on its own GPUs, one model after another (stages run in turn)."""
    counts = [domain_counts(config, d) for d in config.domains]
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
        gpu_hours=sum(p.gpu_hours for p in plans),
        wall_hours=sum(p.wall_hours for p in plans),
    )
