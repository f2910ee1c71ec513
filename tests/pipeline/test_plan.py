import argparse

import pytest

from fspo_data.core.config import JobConfig, load_config
from fspo_data.pipeline.plan import (
    DEFAULT_GEN_TOKENS_PER_S,
    DEFAULT_PROMPT_TOKENS_PER_S,
    domain_counts,
    job_loads,
    model_plans,
    sizing,
)
from fspo_data.pipeline.plan_command import add_plan_command
from fspo_data.stages.base import StageLoad
from tests.conftest import TESTS_DIR

MAX_TOKENS = {"personas": 50, "questions": 20, "views": 30, "responses": 40}


def small_config(**judge: object) -> JobConfig:
    return JobConfig(
        run_dir="x",
        domains=["roleplay", "review", "elix"],
        counts={
            "users": 6,
            "questions": 4,
            "candidates_per_question": 3,
            "pairs_per_user": 5,
            "shots": {"roleplay": 2, "review": 2, "elix": 2},
        },
        model={"replicas": 2, "tensor_parallel_size": 2},
        stages={
            **{stage: {"max_tokens": tokens} for stage, tokens in MAX_TOKENS.items()},
            "judge": {"samples_per_order": 2, "refine_rounds": 1, **judge},
        },
    )


def test_calls_per_stage_match_hand_counts():
    # roleplay: model personas, questions, views; review: templates and fixed views only;
    # elix: templated users, model questions, fixed views. 3 candidates -> 3 pairs per question,
    # pool 4 x 3 = 12 >= 5 pairs per user. Judge: 6 users x 5 pairs x 2 orders x 2 samples x
    # (1 + 1 refinement round) = 240 calls per domain. Gold: 6 users x 2 gold pairs x 2 orders
    # x 2 samples = 48 per domain, judged once (no refinement).
    loads = {s.stage: s for s in job_loads(small_config())}
    assert {stage: s.calls for stage, s in loads.items()} == {
        "personas": 6,
        "questions": 4 + 4,
        "views": 4,
        "responses": 3 * 4 * 3,
        "gold": 3 * 48,
        "judge": 3 * 240,
    }
    assert loads["personas"].generated_tokens == 6 * 50
    assert loads["questions"].generated_tokens == 8 * 20
    assert loads["views"].generated_tokens == 4 * 30
    assert loads["responses"].generated_tokens == 36 * 40
    assert loads["judge"].generated_tokens == 720  # one letter per call


def test_fixed_views_cap_candidates_and_pool_pairs_caps_pairs():
    config = small_config().model_copy(
        update={
            "counts": small_config().counts.model_copy(
                update={"candidates_per_question": 8, "pool_pairs": 7, "pairs_per_user": 20}
            )
        }
    )
    elix = domain_counts(config, "elix")  # 5 education levels
    assert (elix.candidates, elix.pool_pairs, elix.pairs_per_user) == (5, 7, 7)
    review = domain_counts(config, "review")  # 4 review styles: 4 x 6 = 24 pairs
    assert (review.candidates, review.pool_pairs) == (4, 7)
    roleplay = domain_counts(config, "roleplay")  # views from the model
    assert roleplay.candidates == 8


def test_judge_prompt_grows_by_both_responses():
    # Each response stand-in is max_tokens tokens, and a judge prompt holds two of them.
    short, long = small_config(), small_config()
    long = long.model_copy(
        update={
            "stages": long.stages.model_copy(
                update={"responses": long.stages.responses.model_copy(update={"max_tokens": 72})}
            )
        }
    )
    before, after = (next(s for s in job_loads(c) if s.stage == "judge") for c in (short, long))
    assert after.prompt_tokens - before.prompt_tokens == 720 * 2 * (72 - 40)


def test_prefix_cache_counts_the_persona_once_per_user_and_pass():
    cached = next(s for s in job_loads(small_config()) if s.stage == "judge")
    assert 0 < cached.cached_prompt_tokens < cached.prompt_tokens
    config = small_config()
    config = config.model_copy(
        update={"model": config.model.model_copy(update={"enable_prefix_caching": False})}
    )
    assert next(s for s in job_loads(config) if s.stage == "judge").cached_prompt_tokens == 0


def test_gpu_hours_and_sizing():
    load = StageLoad("x", calls=10, prompt_tokens=10_000, cached_prompt_tokens=4_000,
                     generated_tokens=500)  # fmt: skip
    assert load.gpu_hours(3000, 250) == pytest.approx((6000 / 3000 + 500 / 250) / 3600)
    config = small_config()
    loads = job_loads(config)
    size = sizing(config, loads, model_plans(config, (5000, 1000)))
    assert (size.personas, size.questions, size.candidates) == (18, 12, 36)
    assert (size.judged_pairs, size.judge_calls) == (3 * 6 * 5, 720)
    assert size.llm_calls == sum(s.calls for s in loads)
    assert size.wall_hours == pytest.approx(size.gpu_hours / 4)  # 2 replicas x 2 GPUs


def test_plan_command_prints_both_tables(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("run_dir: x\ncounts: {users: 6, questions: 4, pairs_per_user: 9}\n")
    parser = argparse.ArgumentParser()
    add_plan_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", str(path), "--gen-tokens-per-s", "123"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "LLM work per stage" in out and "sizing" in out and "123 generated tok/s" in out


def test_pair_first_plan_leaves_only_the_users_text_uncached():
    # One shard of 100 users who all draw the same 3 pairs: 6 pair-orders, 600 calls. Every
    # call after its pair-order's first computes only what follows the shared prefix: the
    # 50-token description and the short answer cue, not the instruction (which comes before).
    config = JobConfig(
        run_dir="x",
        counts={"users": 100, "questions": 3, "candidates_per_question": 2, "pairs_per_user": 3},
        sharding={"users_per_shard": 100},
        stages={
            "personas": {"max_tokens": 50},
            "judge": {"layout": "pair_first", "refine_rounds": 0},
        },
    )
    judge = next(s for s in job_loads(config) if s.stage == "judge")
    shared = judge.cached_prompt_tokens / (600 - 6)
    computed_after_prefix = judge.prompt_tokens / 600 - shared
    assert 50 <= computed_after_prefix <= 50 + 8


def test_million_config_plans_its_judge_within_the_cost_targets():
    # Issue 17's targets for the shipped million-pair config: at least 70% of judge prompt
    # tokens from the prefix cache, at most half of the 89.7 judge GPU-hours of the
    # persona-first layout, at the plan's default rates. Its pair blocks are what reach them.
    config = load_config(TESTS_DIR.parent / "configs" / "million.yaml")
    judge = next(s for s in job_loads(config) if s.stage == "judge")
    assert judge.cached_prompt_tokens / judge.prompt_tokens >= 0.70
    hours = judge.gpu_hours(DEFAULT_PROMPT_TOKENS_PER_S, DEFAULT_GEN_TOKENS_PER_S)
    assert hours <= 89.7 / 2
    one_pool = config.model_copy(
        update={"counts": config.counts.model_copy(update={"pair_blocks": 1})}
    )
    before = next(s for s in job_loads(one_pool) if s.stage == "judge")
    assert before.cached_prompt_tokens < 0.70 * before.prompt_tokens
