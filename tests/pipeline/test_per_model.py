"""The figures of a job with several models: the run summary's per-model table, `plan` sizing
each model's work, the report's candidate similarity per model, the card's models per role."""

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from fspo_data.core.config import JobConfig
from fspo_data.core.records import Response, to_table
from fspo_data.core.shards import Manifest, ShardEntry
from fspo_data.pipeline.cost import counter_dollars, usd
from fspo_data.pipeline.dataset_card import _limitations, _provenance
from fspo_data.pipeline.dataset_card import _summary as card_summary
from fspo_data.pipeline.plan import ModelPlan, model_plans, stage_dollars, stage_loads
from fspo_data.pipeline.plan_command import add_plan_command, cmd_plan, render
from fspo_data.pipeline.report import build_report
from fspo_data.pipeline.summary import RunSummary, StageSummary, model_summaries
from fspo_data.pipeline.summary import render as render_summary
from tests.pipeline.test_report import FLAGS, HashEmbedder, make

JUDGE_PRICES = {"input_per_million": 3.0, "output_per_million": 15.0}
GEN_PRICES = {"per_replica_hour": 2.0}


def two_model_job(assign: str = "round_robin", **counts: int) -> JobConfig:
    """A cheap generator for everything but the judge (a priced 2 x 4-GPU fleet), and
    candidates from an ensemble of the generator and a second model."""
    return JobConfig(
        run_dir="x",
        domains=["roleplay"],
        counts={
            "users": 6,
            "questions": 5,
            "candidates_per_question": 3,
            "pairs_per_user": 5,
            "shots": {"roleplay": 2},
            **counts,
        },
        models={
            "gen": {"model": "/models/gen", "prices": GEN_PRICES},
            "other": {"model": "/models/other", "replicas": 3},
            "strong": {
                "model": "/models/strong",
                "replicas": 2,
                "tensor_parallel_size": 4,
                "prices": JUDGE_PRICES,
            },
        },
        roles={
            "default": "gen",
            "judge": "strong",
            "candidates": {"models": ["gen", "other"], "assign": assign},
        },
    )


# --- the run summary -------------------------------------------------------------------------


def shard(**counters: int) -> ShardEntry:
    return ShardEntry(file="f", rows=1, bytes=1, sha256="s", counters=counters)


def manifest(stage: str, *shards: ShardEntry) -> Manifest:
    m = Manifest(stage=stage, schema="", config_fingerprint="f", package_versions={})
    m.shards = {f"roleplay-{i:05d}": s for i, s in enumerate(shards)}
    return m


def per_model(name: str, **fields: int) -> dict[str, int]:
    return {f"model/{name}/{field}": n for field, n in fields.items()}


def test_the_summary_sums_each_models_counters_over_stages_at_its_own_prices():
    config = two_model_job()
    models = config.roster().models
    # responses: gen answered in both shards, other in the first; judge: the strong model.
    gen_first = per_model(
        "gen", requests=4, prompt_tokens=400, completion_tokens=200, engine_ms=1_800_000
    )
    other_first = per_model(
        "other", requests=2, prompt_tokens=200, completion_tokens=100, retries=1, engine_ms=500
    )
    gen_second = per_model(
        "gen", requests=1, prompt_tokens=100, completion_tokens=50, engine_ms=1_800_000
    )
    responses = manifest("responses", shard(**gen_first, **other_first), shard(**gen_second))
    strong = per_model(
        "strong",
        requests=10,
        prompt_tokens=1_000_000,
        cached_prompt_tokens=400_000,
        completion_tokens=10,
        engine_ms=4000,
    )
    judge = manifest("judge", shard(**strong))
    stages = [
        StageSummary.from_manifest(m.stage, m, 2, 2, 10.0, [], models) for m in (responses, judge)
    ]
    figures = {m.model: m for m in model_summaries(config.roster(), stages)}
    assert list(figures) == ["gen", "other", "strong"]
    gen, other, big = figures.values()
    assert (gen.requests, gen.prompt_tokens, gen.completion_tokens) == (5, 500, 250)
    assert gen.engine_seconds == 3600.0 and gen.gen_tokens_per_engine_second == 250 / 3600
    assert gen.dollars == pytest.approx(2.0)  # one engine hour at $2 per replica-hour
    assert (other.retries, other.dollars, other.roles) == (1, None, ["candidates"])
    # No cached price: cached prompt tokens at the input price; 1M x 3 + 10 x 15, per million.
    assert big.dollars == pytest.approx(3.0 + 10 * 15 / 1e6)
    assert big.roles == ["judge"] and "personas" in gen.roles and "candidates" in gen.roles
    # The stages' dollars are the same arithmetic, split by stage instead of model.
    assert stages[0].dollars + stages[1].dollars == pytest.approx(gen.dollars + big.dollars)

    summary = RunSummary(
        run_dir="r",
        config_fingerprint="f",
        wall_seconds=1.0,
        stages=stages,
        models=list(figures.values()),
    )
    stored = json.loads(summary.model_dump_json())
    assert [m["model"] for m in stored["models"]] == ["gen", "other", "strong"]
    assert RunSummary.model_validate(stored).models == summary.models
    console = Console(record=True, width=220)
    render_summary(summary, console)
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.startswith("│ strong "))
    assert "1000000" in row and "400000" in row and usd(big.dollars) in row
    assert "0.1" in next(line for line in text.splitlines() if line.startswith("│ gen "))
    assert text.index("per model") > text.index("responses")  # after the stage table


def test_a_one_model_run_has_one_row_named_by_its_served_name():
    config = JobConfig(run_dir="x", model={"backend": "instant-benchmark-double"})
    models = config.roster().models
    new = manifest(
        "judge", shard(**per_model("instant-benchmark-double", requests=3, completion_tokens=30))
    )
    # A shard written before models had counters of their own: its totals are the model's.
    old = manifest("questions", shard(questions_requests=2, completion_tokens=20))
    stages = [StageSummary.from_manifest(m.stage, m, 1, 1, 1.0, [], models) for m in (new, old)]
    (row,) = model_summaries(config.roster(), stages)
    assert (row.model, row.requests, row.completion_tokens) == ("instant-benchmark-double", 5, 50)
    assert "judge" in row.roles and "eval_judge" in row.roles


# --- plan ------------------------------------------------------------------------------------


def plans_by_name(config: JobConfig, **rates: tuple[float, float]) -> dict[str, ModelPlan]:
    return {p.model: p for p in model_plans(config, (5000.0, 1000.0), rates)}


def test_plan_deals_round_robin_candidates_as_the_stage_does():
    # 5 questions x 3 views over [gen, other]: view j of question i to (i + j) mod 2, so gen
    # writes 2 + 1 + 2 + 1 + 2 = 8 and other 7. The views are listed by gen (personas' model).
    config = two_model_job()
    plans = plans_by_name(config)
    loads = {s.stage: s for s in stage_loads(config)["responses"]}
    per_answer = loads["responses"].prompt_tokens // 15
    gen_calls = 6 + 5 + 5 + 8  # personas, questions, views, answers
    assert plans["gen"].load.calls == gen_calls
    assert plans["other"].load.calls == 7
    assert plans["other"].load.prompt_tokens == 7 * per_answer
    judge_calls = sum(s.calls for k in ("gold", "judge") for s in stage_loads(config)[k])
    assert plans["strong"].load.calls == judge_calls
    # Every call is some model's: the per-model table adds up to the per-stage one.
    every = [s for kinds in stage_loads(config).values() for s in kinds]
    for field in ("calls", "prompt_tokens", "cached_prompt_tokens", "generated_tokens"):
        per_stage = sum(getattr(s, field) for s in every)
        assert sum(getattr(p.load, field) for p in plans.values()) == per_stage
    assert (plans["gen"].gpus, plans["other"].gpus, plans["strong"].gpus) == (1, 3, 8)


def test_plan_counts_every_view_answered_by_every_model():
    robin, every = two_model_job("round_robin"), two_model_job("every", pairs_per_user=40)
    answers = {s.stage: s for s in stage_loads(every)["responses"]}["responses"]
    assert answers.calls == 5 * 3 * 2
    plans = plans_by_name(every)
    assert plans["other"].load.calls == 15 and plans["gen"].load.calls == 16 + 15
    # Six candidates a question: 15 pairs each, so a user can get 40 of the 75.
    judge = {s.stage: s for s in stage_loads(every)["judge"]}["judge"]
    robin_judge = {s.stage: s for s in stage_loads(robin)["judge"]}["judge"]
    assert judge.calls == robin_judge.calls * 40 // 5


def test_plan_prices_and_times_each_model_at_its_own_rates():
    config = two_model_job()
    plans = plans_by_name(config)
    judge = plans["strong"]
    assert judge.gpu_hours == pytest.approx(judge.load.gpu_hours(5000, 1000))
    assert judge.wall_hours == pytest.approx(judge.gpu_hours / 8)
    at_input_price = judge.load.prompt_tokens * 3.0 + judge.load.generated_tokens * 15.0
    assert judge.dollars == pytest.approx(at_input_price / 1e6)
    gen = plans["gen"]
    assert gen.dollars == pytest.approx(gen.gpu_hours * 2.0)  # one GPU per replica
    assert plans["other"].dollars is None  # no prices
    slower = plans_by_name(config, strong=(2500.0, 500.0))
    assert slower["strong"].gpu_hours == pytest.approx(judge.gpu_hours * 2)
    assert slower["gen"].gpu_hours == pytest.approx(gen.gpu_hours)
    stages = stage_dollars(config)
    assert sum(stages.values()) == pytest.approx(gen.dollars + judge.dollars)


def test_plan_prints_the_per_model_table_and_refuses_unknown_model_rates(tmp_path: Path, capsys):
    parser = argparse.ArgumentParser()
    add_plan_command(parser.add_subparsers())
    args = parser.parse_args(["plan", "x.yaml", "--model-rates", "strong=2000,500"])
    assert args.model_rates == [("strong", (2000.0, 500.0))]
    args.model_rates = dict(args.model_rates)
    console = Console(record=True, width=250)
    render(two_model_job(), args, console)
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.startswith("│ strong "))
    assert "judge" in row and "│    8 │" in row
    assert "strong: 2,000 and 500" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["plan", "x.yaml", "--model-rates", "strong=fast"])
    capsys.readouterr()
    path = tmp_path / "job.yaml"
    path.write_text("run_dir: x\nmodel: {backend: instant-benchmark-double}\n")
    args = parser.parse_args(["plan", str(path), "--model-rates", "judge=1,1"])
    assert cmd_plan(args) == 2
    assert (
        "'judge', not a model of the config (instant-benchmark-double)" in capsys.readouterr().out
    )


# --- the diversity report --------------------------------------------------------------------


def test_the_report_shows_candidate_similarity_per_model_and_across(tmp_path: Path):
    # Question 0: a wrote two alike answers, b one of its own; question 1: one answer each.
    texts = [
        ("q0", "a", "cheap plan"),
        ("q0", "a", "cheap plan now"),
        ("q0", "b", "lavish trip"),
        ("q1", "a", "stay home"),
        ("q1", "b", "stay home today"),
    ]
    rows = [
        make(
            Response,
            response_uuid=f"r{i}",
            question_uuid=q,
            domain="roleplay",
            model=m,
            response=text,
        )
        for i, (q, m, text) in enumerate(texts)
    ]
    (tmp_path / "responses").mkdir()
    pq.write_table(to_table(rows, Response), tmp_path / "responses" / "part-00000.parquet")
    result = build_report(tmp_path, HashEmbedder(), sample_size=10, flag_settings=FLAGS)
    x = HashEmbedder().embed([t for _, _, t in texts])
    q0_all = np.mean([x[0] @ x[1], x[0] @ x[2], x[1] @ x[2]])
    candidates = result.report.candidates
    assert candidates.mean_similarity == pytest.approx((q0_all + x[3] @ x[4]) / 2)
    assert candidates.by_model["a"].mean_similarity == pytest.approx(x[0] @ x[1])
    assert candidates.by_model["a"].questions == 1
    assert candidates.by_model["b"].mean_similarity is None  # never two for one question
    cross = np.mean([(x[0] @ x[2] + x[1] @ x[2]) / 2, x[3] @ x[4]])
    assert candidates.cross_model.mean_similarity == pytest.approx(cross)
    summary = result.summary
    assert summary.diversity["candidate_similarity"] == pytest.approx(candidates.mean_similarity)
    assert summary.candidate_similarity_by_model == {
        "a": pytest.approx(x[0] @ x[1]),
        "b": None,
    }
    # The verdict reads the ensemble's figure.
    verdict = next(c for c in summary.verdicts if c.name == "candidate similarity")
    assert verdict.value == pytest.approx(candidates.mean_similarity)
    page = result.html_path.read_text()
    assert "Candidate similarity per model" in page and "cross-model pairs" in page
    assert "model b</th><td>n/a (no question with such a pair)" in page
    console = Console(record=True, width=300)
    render_summary(summary, console)
    line = next(x for x in console.export_text().splitlines() if x.startswith("diversity:"))
    assert "candidate_similarity_by_model a " in line and "b n/a" in line


# --- the dataset card ------------------------------------------------------------------------


def test_the_card_lists_the_model_of_each_role_and_each_models_tokens():
    config = two_model_job()
    provenance = _provenance(config, {})
    assert (
        "| judge | `strong` | backend vllm, weights `/models/strong`, dtype float32 |" in provenance
    )
    assert "| candidates (round_robin) | `other` | backend vllm, weights `/models/other`" in (
        provenance
    )
    assert "| personas | `gen` |" in provenance and "| eval_judge | `gen` |" in provenance
    stage = StageSummary.from_manifest(
        "judge",
        manifest(
            "judge",
            shard(
                **per_model(
                    "strong",
                    requests=4,
                    prompt_tokens=1200,
                    cached_prompt_tokens=200,
                    completion_tokens=4,
                )
            ),
        ),
        1,
        1,
        1.0,
        [],
        config.roster().models,
    )
    summary = RunSummary(
        run_dir="r",
        config_fingerprint="f",
        wall_seconds=1.0,
        stages=[stage],
        models=model_summaries(config.roster(), [stage]),
    )
    text = card_summary(json.loads(summary.model_dump_json()), config)
    expected_dollars = usd(
        counter_dollars(
            config.roster().models["strong"].prices,
            {"prompt_tokens": 1200, "cached_prompt_tokens": 200, "completion_tokens": 4},
        )
    )
    assert (
        f"`strong`: 4 calls, 1,200 prompt tokens (200 cached), 4 generated, {expected_dollars}"
        in text
    )
    assert "`other`: 0 calls" in text
    # The demo model's caveat names the roles it served, and only calls it a weak judge if it
    # judged.
    embedded = JobConfig(run_dir="x")
    assert "Model: backend vllm, weights `embedded:SmolLM2-135M-Instruct`" in _provenance(
        embedded, {}
    )
    assert "(every role): short, often generic texts and a weak judge" in _limitations(embedded)
    demo_gen = JobConfig(
        run_dir="x",
        models={"small": {}, "big": {"model": "/models/judge"}},
        roles={"default": "small", "judge": "big"},
    )
    note = next(line for line in _limitations(demo_gen).splitlines() if "SmolLM2" in line)
    assert "(personas, questions, views, candidates, rationales, eval_judge)" in note
    assert "weak judge" not in note
    assert "SmolLM2" not in _limitations(config)
    double = JobConfig(run_dir="x", model={"backend": "instant-benchmark-double"})
    assert "SmolLM2" not in _limitations(double)  # its `model` default names no weights it loads
