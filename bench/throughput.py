"""Generated tokens/s: the raw vLLM engine vs the pipeline's generation stage, side by side.

Both sides generate the same candidate responses (review domain: fixed questions and views,
so the stage's requests are known in advance):
- raw: `vllm.LLM.chat` called directly in this process with those requests;
- pipeline: the `responses` stage run by a `ShardWorker` Ray actor exactly as `fspo-data run`
  does (reads the question shard, builds requests, generates, writes the Parquet shard).
Engine start-up is excluded on both sides; rounds alternate to spread machine noise.

    python bench/throughput.py [--questions 16] [--max-tokens 48] [--rounds 2] [--gpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import ray

from fspo_data.backends.vllm_engine import VLLMBackend
from fspo_data.core.config import JobConfig
from fspo_data.core.records import Question, to_table
from fspo_data.core.shards import Manifest, save_manifest, write_shard
from fspo_data.domains import load_domain
from fspo_data.pipeline.orchestrator import init_ray
from fspo_data.pipeline.workers import EnginePools
from fspo_data.stages import responses
from fspo_data.stages.base import ShardSpec
from fspo_data.stages.questions import question_topic
from fspo_data.stages.responses import fixed_views, response_request


def make_config(run_dir: Path, args: argparse.Namespace) -> JobConfig:
    # The same threads on both sides: the actor gets every CPU, as the raw engine does.
    model = {"kv_cache_gib": 1, "cpus_per_replica": os.cpu_count()}
    if args.gpu:
        model = {"use_gpu": True, "dtype": "bfloat16"}
    return JobConfig.model_validate(
        {
            "run_dir": run_dir,
            "domains": ["review"],
            "counts": {"questions": args.questions, "candidates_per_question": 3},
            "sharding": {"questions_per_shard": args.questions},
            "model": model,
            "stages": {"responses": {"max_tokens": args.max_tokens, "temperature": 0.7}},
            "ray": {"num_cpus": os.cpu_count()},
        }
    )


def write_questions(config: JobConfig) -> list[Question]:
    domain = load_domain("review")
    questions = [
        Question(
            question_uuid=f"q{i}",
            domain="review",
            index=i,
            question=f"Write a review of the movie {question_topic(domain, i)}.",
            selected_trait="topic",
            trait_varied=question_topic(domain, i),
            question_type="bench",
        )
        for i in range(config.counts.questions)
    ]
    stage_dir = config.run_dir / "questions"
    manifest = Manifest(stage="questions", schema="", config_fingerprint="", package_versions={})
    manifest.shards["review-00000"] = write_shard(
        stage_dir, "review-00000", to_table(questions, Question)
    )
    save_manifest(stage_dir, manifest)
    return questions


def raw_round(
    backend: VLLMBackend, config: JobConfig, questions: list[Question]
) -> tuple[int, float]:
    domain = load_domain("review")
    requests = [
        response_request(domain, q, view, config.stages.responses)
        for q in questions
        for view in fixed_views(domain, q, config.counts.candidates_per_question)
    ]
    started = time.perf_counter()
    completions = backend.complete(requests)
    return sum(c.completion_tokens for c in completions), time.perf_counter() - started


def pipeline_round(actor: object, config: JobConfig) -> tuple[int, float]:
    spec = ShardSpec(
        stage="responses", domain="review", index=0, start=0, stop=config.counts.questions
    )
    shutil.rmtree(config.run_dir / "responses", ignore_errors=True)
    started = time.perf_counter()
    entry = ray.get(actor.run_shard.remote(spec))
    return entry.counters["completion_tokens"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="bfloat16 engines on a GPU")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="fspo-throughput-"))
    config = make_config(run_dir, args)
    questions = write_questions(config)

    init_ray(config)
    pools = EnginePools(config)
    (actor,), _ = pools.for_stage(responses.STAGE)
    raw = VLLMBackend(config.model)
    # Warm-up on both sides: first calls pay for lazy initialisation.
    raw_round(raw, config, questions[:2])
    pipeline_round(actor, config)

    totals = {"raw": [0, 0.0], "pipeline": [0, 0.0]}
    for round_index in range(args.rounds):
        for name, measure in (
            ("raw", lambda: raw_round(raw, config, questions)),
            ("pipeline", lambda: pipeline_round(actor, config)),
        ):
            tokens, seconds = measure()
            totals[name][0] += tokens
            totals[name][1] += seconds
            print(
                f"round {round_index + 1} {name:>8}: {tokens} tokens in {seconds:.1f} s "
                f"= {tokens / seconds:.1f} tok/s"
            )
    pools.release()
    ray.shutdown()
    shutil.rmtree(run_dir, ignore_errors=True)

    raw_rate = totals["raw"][0] / totals["raw"][1]
    pipe_rate = totals["pipeline"][0] / totals["pipeline"][1]
    requests = args.questions * 3
    print(
        f"\nmachine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; {requests} requests x <= {args.max_tokens} tokens, "
        f"{args.rounds} rounds each"
    )
    print(f"raw engine      : {raw_rate:8.1f} generated tok/s")
    print(f"pipeline stage  : {pipe_rate:8.1f} generated tok/s")
    print(f"pipeline / raw  : {pipe_rate / raw_rate:8.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
