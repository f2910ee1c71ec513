"""The judge's cost under each prompt layout: the same judge shard, side by side in one run.

The shard's users, questions and candidate responses are read from a finished run (the
embedded demo by default: `fspo-data run configs/demo.yaml`), so the judge reads real texts.
One in-process vLLM engine (the job's model settings) judges the shard with each
`stages.judge.layout` in turn, its prefix cache emptied before each, and the bench prints
per layout: prompt tokens computed (not served from the cache) per label, the cached
fraction, the judge's wall time; then how often the two layouts' debiased margins have the
same sign on the same (user, pair); and, with --gold-per-user N, the gold stage's pairs
(answers known by construction, `stages/gold.py`) judged under each layout, with each
layout's gold accuracy and its 95% Wilson interval (`pipeline.gold`).

    python bench/judge_cost.py [--run-dir runs/demo] [--users 8] [--pairs-per-user 12]
                               [--questions 6] [--rounds 1] [--gold-per-user 0] [--gpu]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fspo_data.backends.vllm_engine import VLLMBackend
from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.records import Judgment, to_table
from fspo_data.core.shards import read_committed
from fspo_data.judging import LAYOUTS
from fspo_data.pipeline.gold import LEGEND, GoldFigures, figures_of
from fspo_data.stages import gold, judge, pairs
from fspo_data.stages.base import ShardSpec, StageContext


def shard_inputs(run_dir: Path, domain: str, users: int, questions: int) -> dict[str, pa.Table]:
    """The first `users` personas and `questions` questions (with their candidates) of a run."""
    personas = read_committed(run_dir, "personas", f"{domain}-")[0].slice(0, users)
    asked = read_committed(run_dir, "questions", f"{domain}-")[0].slice(0, questions)
    responses = read_committed(run_dir, "responses", f"{domain}-")[0]
    kept = pc.is_in(responses["question_uuid"], value_set=asked["question_uuid"])
    return {"personas": personas, "questions": asked, "responses": responses.filter(kept)}


def bench_config(base: JobConfig, layout: str, args: argparse.Namespace) -> JobConfig:
    model = {"cpus_per_replica": os.cpu_count()}
    if args.gpu:
        model = {"use_gpu": True, "dtype": "bfloat16", "enforce_eager": False}
    return base.model_copy(
        update={
            "counts": base.counts.model_copy(update={"pairs_per_user": args.pairs_per_user}),
            "model": base.model.model_copy(update=model),
            # No refinement: both layouts make exactly the same calls.
            "stages": base.stages.model_copy(
                update={
                    "judge": base.stages.judge.model_copy(
                        update={
                            "layout": layout,
                            "refine_rounds": 0,
                            "gold_pairs_per_user": args.gold_per_user,
                        }
                    )
                }
            ),
        }
    )


def judge_once(
    backend: VLLMBackend, config: JobConfig, spec: ShardSpec, inputs: dict[str, pa.Table]
) -> tuple[Counter[str], float, dict[str, float]]:
    # An empty cache for each layout, so neither is served by the other's prompts.
    backend._llm.reset_prefix_cache()
    started = time.perf_counter()
    output = judge.run(spec, inputs, StageContext(config=config, backend=backend))
    seconds = time.perf_counter() - started
    table = to_table(output.records, Judgment)
    margins = dict(
        zip(table["judgment_uuid"].to_pylist(), table["debiased_margin"].to_pylist(), strict=True)
    )
    return output.counters, seconds, margins


def gold_once(
    backend: VLLMBackend, config: JobConfig, spec: ShardSpec, inputs: dict[str, pa.Table]
) -> tuple[GoldFigures, float]:
    """The shard's gold pairs judged under `config`'s layout: gold figures and wall time."""
    backend._llm.reset_prefix_cache()
    started = time.perf_counter()
    output = gold.run(spec, inputs, StageContext(config=config, backend=backend))
    seconds = time.perf_counter() - started
    counters = output.counters
    judged, kept = counters["gold_pairs_judged"], counters["gold_pairs_kept"]
    return figures_of(judged, kept, counters["gold_pairs_right"]), seconds


def sign_agreement(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, int]:
    """Share of common judgments whose debiased margins have the same sign, with a 95% Wilson
    half-width, and how many were compared."""
    common = sorted(a.keys() & b.keys())
    same = sum(np.sign(a[k]) == np.sign(b[k]) for k in common)
    n = len(common)
    if not n:
        return math.nan, math.nan, 0
    p, z = same / n, 1.96
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, half, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--pairs-per-user", type=int, default=12)
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per layout")
    parser.add_argument(
        "--gold-per-user", type=int, default=0, help="gold pairs per user judged per layout"
    )
    parser.add_argument("--gpu", action="store_true", help="bfloat16 engine on a GPU")
    args = parser.parse_args()
    base = load_config(args.run_dir / "config.yaml")
    domain = base.domains[0]
    inputs = shard_inputs(args.run_dir, domain, args.users, args.questions)
    spec = ShardSpec(stage="judge", domain=domain, index=0, start=0, stop=args.users)
    configs = {layout: bench_config(base, layout, args) for layout in LAYOUTS}
    backend = VLLMBackend(next(iter(configs.values())).model)
    # Warm-up (lazy initialisation) on one user's first two pairs.
    warm_up = configs["persona_first"].model_copy(
        update={"counts": base.counts.model_copy(update={"pairs_per_user": 2})}
    )
    judge_once(
        backend,
        warm_up,
        spec.model_copy(update={"stop": 1}),
        {**inputs, "personas": inputs["personas"].slice(0, 1)},
    )

    totals = {layout: [Counter(), 0.0] for layout in LAYOUTS}
    margins: dict[str, dict[str, float]] = {}
    for round_index in range(args.rounds):
        for layout, config in configs.items():
            counters, seconds, margins[layout] = judge_once(backend, config, spec, inputs)
            totals[layout][0].update(counters)
            totals[layout][1] += seconds
            print(f"round {round_index + 1} {layout:>13}: {seconds:.1f} s")

    pool = len(pairs.shard_inputs(spec, inputs, configs["pair_first"]).pool)
    print(
        f"\nmachine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; model {base.model.model}; {args.users} users x "
        f"{args.pairs_per_user} pairs of a pool of {pool}, both orders, {args.rounds} round(s)"
    )
    print(f"{'layout':>13} {'labels':>7} {'prompt tok':>10} {'cached':>8} {'computed/label':>14} "
          f"{'cached frac':>11} {'wall s':>7}")  # fmt: skip
    for layout, (counters, seconds) in totals.items():
        labels, prompt = counters["pairs_judged"], counters["prompt_tokens"]
        cached = counters["cached_prompt_tokens"]
        print(
            f"{layout:>13} {labels:>7} {prompt:>10} {cached:>8} "
            f"{(prompt - cached) / labels:>14.1f} {cached / prompt:>11.3f} {seconds:>7.1f}"
        )
    ratio = totals["pair_first"][1] / totals["persona_first"][1]
    print(f"wall time pair_first / persona_first: {ratio:.3f}")
    p, half, n = sign_agreement(margins["persona_first"], margins["pair_first"])
    print(f"debiased-margin sign agreement between layouts: {p:.3f} +- {half:.3f} over {n} pairs")
    if args.gold_per_user:
        print(f"gold accuracy ({LEGEND}):")
        walls = {}
        for layout, config in configs.items():
            figures, walls[layout] = gold_once(backend, config, spec, inputs)
            print(f"{layout:>13}: {figures.describe()}, {walls[layout]:.1f} s")
        ratio = walls["pair_first"] / walls["persona_first"]
        print(f"gold wall time pair_first / persona_first: {ratio:.3f}")


if __name__ == "__main__":
    main()
