"""Model roles on instant doubles standing for distinct models (each `model` string answers
differently): gen-a writes personas, questions and views, gen-a and gen-b write candidates,
judge-x labels pairs, gen-b writes rationales. Assignment policies, per-model pools and
counters, kill -9 and resume with two pools, a role change recomputing only its stages, and
pools that cannot be placed refused in one line before anything runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fspo_data import cli
from fspo_data.backends import make_backend
from fspo_data.core.chat import counters_by_model
from fspo_data.core.config import JobConfig
from fspo_data.core.records import Question, Response
from fspo_data.core.shards import load_manifest
from fspo_data.domains import load_domain
from fspo_data.pipeline.dataset_card import render_card
from fspo_data.pipeline.orchestrator import run_job
from fspo_data.stages import STAGES, STAGES_BY_NAME, plan_shards
from fspo_data.stages.base import records_from_table
from fspo_data.stages.responses import candidates_per_question, response_request
from tests.reliability.conftest import assert_run_is_whole, instant_config, write_config
from tests.reliability.test_kill_resume import check_kill_and_resume

pytestmark = pytest.mark.usefixtures("local_ray")

ROLES: dict[str, Any] = {
    "default": "gen-a",
    "candidates": ["gen-a", "gen-b"],
    "judge": "judge-x",
    "rationales": "gen-b",
}


def double(name: str, **settings: object) -> dict[str, object]:
    """An instant double answering as model `name`."""
    return {"backend": "instant-benchmark-double", "model": name, "cpus_per_replica": 1} | settings


def roles_config(
    run_dir: Path, roles: dict[str, Any] | None = None, **updates: object
) -> JobConfig:
    """instant.yaml with three named models (and gen-c, judge-y to switch to) and `roles`."""
    models = {name: double(name) for name in ("gen-a", "gen-b", "gen-c", "judge-x", "judge-y")}
    stages = instant_config(run_dir).stages.model_dump(mode="json")
    stages["rationales"] |= {"enabled": True}
    return instant_config(
        run_dir,
        **{"model": None, "models": models, "roles": roles or ROLES, "stages": stages} | updates,
    )


def stage_table(run_dir: Path, stage: str) -> pa.Table:
    files = sorted((run_dir / stage).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def responses_by_question(run_dir: Path) -> dict[str, list[Response]]:
    by_question: dict[str, list[Response]] = {}
    for response in records_from_table(stage_table(run_dir, "responses"), Response):
        by_question.setdefault(response.question_uuid, []).append(response)
    return by_question


def check_writers(config: JobConfig) -> None:
    """Each candidate's text is what its recorded model writes for its question and view,
    and not what the ensemble's other model would."""
    questions = {
        q.question_uuid: q
        for q in records_from_table(stage_table(config.run_dir, "questions"), Question)
    }
    roster = config.roster()
    engines = {name: make_backend(roster.models[name]) for name in roster.roles["candidates"]}
    for responses in responses_by_question(config.run_dir).values():
        for r in responses:
            domain = load_domain(r.domain, config.domains_dir)
            request = response_request(
                domain, questions[r.question_uuid], r.view, config.stages.responses
            )
            texts = {n: e.complete([request])[0].text for n, e in engines.items()}
            assert r.response == texts[r.model], (r.model, r.response_uuid)
            assert list(texts.values()).count(r.response) == 1


def ran_now(summary) -> dict[str, int]:
    return {s.stage: s.shards_run_now for s in summary.stages if s.shards_planned}


def test_round_robin_shares_every_question_between_the_models(tmp_path):
    config = roles_config(tmp_path / "run")
    run_job(config, progress=False)
    assert_run_is_whole(config.run_dir, config)
    per_model: Counter[str] = Counter()
    for responses in responses_by_question(config.run_dir).values():
        mix = Counter(r.model for r in responses)
        per_model += mix
        # 3 views dealt over 2 models: 2 and 1, both models in every question.
        assert set(mix) == {"gen-a", "gen-b"} and max(mix.values()) - min(mix.values()) <= 1
    # Question i starts at model i mod 2: over a domain's questions the two stay within one.
    assert abs(per_model["gen-a"] - per_model["gen-b"]) <= len(config.domains)
    check_writers(config)


def test_every_view_is_answered_by_every_model(tmp_path):
    roles = ROLES | {"candidates": {"models": ["gen-a", "gen-b"], "assign": "every"}}
    config = roles_config(tmp_path / "run", roles)
    run_job(config, progress=False)
    ids = assert_run_is_whole(config.run_dir, config)["responses"]
    by_question = responses_by_question(config.run_dir)
    for responses in by_question.values():
        domain = load_domain(responses[0].domain, config.domains_dir)
        assert len(responses) == candidates_per_question(config, domain) * 2
        views = Counter(r.view for r in responses)
        assert set(views.values()) == {2}
        assert {(r.view, r.model) for r in responses} == {
            (v, m) for v in views for m in ("gen-a", "gen-b")
        }
    assert len(ids) == len(set(ids)) == sum(map(len, by_question.values()))
    check_writers(config)


def test_each_model_is_counted_only_on_the_stages_its_roles_serve(tmp_path):
    config = roles_config(tmp_path / "run")
    summary = run_job(config, progress=False)
    served = {
        "personas": {"gen-a"},
        "questions": {"gen-a"},
        "responses": {"gen-a", "gen-b"},
        "gold": {"judge-x"},
        "judge": {"judge-x"},
        "rationales": {"gen-b"},
    }
    for stage in STAGES:
        manifest = load_manifest(config.run_dir / stage.name)
        assert manifest is not None and manifest.shards, stage.name
        seen: set[str] = set()
        for entry in manifest.shards.values():
            # A shard making no calls (templated personas of a domain) counts no model.
            by_model = counters_by_model(entry.counters)
            assert all(fields["requests"] > 0 for fields in by_model.values()), entry.file
            seen |= set(by_model)
        assert seen == served.get(stage.name, set()), stage.name
    # The stage's totals are its models' counters added up.
    totals = next(s for s in summary.stages if s.stage == "responses").counters
    by_model = counters_by_model(totals)
    for field in ("completion_tokens", "prompt_tokens", "retries", "engine_ms"):
        assert sum(fields[field] for fields in by_model.values()) == totals[field], field
    assert sum(fields["requests"] for fields in by_model.values()) == (
        totals["views_requests"] + totals["responses_requests"]
    )


def shard_files(run_dir: Path, stages: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    """`stage/file` -> (sha256 in the manifest, the file's mtime in ns)."""
    files = {}
    for stage in stages:
        manifest = load_manifest(run_dir / stage)
        assert manifest is not None
        for entry in manifest.shards.values():
            path = run_dir / stage / entry.file
            files[f"{stage}/{entry.file}"] = (entry.sha256, path.stat().st_mtime_ns)
    return files


def test_a_role_change_recomputes_only_its_stages_and_what_reads_them(tmp_path):
    run_dir = tmp_path / "run"
    planned = {s.name: len(plan_shards(s, roles_config(run_dir))) for s in STAGES}
    run_job(roles_config(run_dir), progress=False)
    generated = shard_files(run_dir, ("personas", "questions", "responses"))
    # A model no role uses changes no recipe.
    models = roles_config(run_dir).models | {"gen-d": double("gen-d")}
    unused = run_job(roles_config(run_dir, models=models), progress=False)
    assert set(ran_now(unused).values()) == {0}

    judged = run_job(roles_config(run_dir, ROLES | {"judge": "judge-y"}), progress=False)
    rejudged = {"gold", "judge", "episodes", "rationales"}
    assert ran_now(judged) == {s: planned[s] if s in rejudged else 0 for s in ran_now(judged)}
    assert shard_files(run_dir, ("personas", "questions", "responses")) == generated
    gold = next(s for s in judged.stages if s.stage == "gold")
    assert any("roles.judge" in note for note in gold.notes), gold.notes

    roles = ROLES | {"judge": "judge-y", "candidates": ["gen-a", "gen-c"]}
    rewritten = run_job(roles_config(run_dir, roles), progress=False)
    redone = rejudged | {"responses"}
    assert ran_now(rewritten) == {s: planned[s] if s in redone else 0 for s in ran_now(rewritten)}
    assert shard_files(run_dir, ("personas", "questions")) == {
        k: v for k, v in generated.items() if not k.startswith("responses/")
    }
    models = set(stage_table(run_dir, "responses").column("model").to_pylist())
    assert models == {"gen-a", "gen-c"}

    # The same roles again from a clean folder give the same records.
    fresh = tmp_path / "fresh"
    run_job(roles_config(fresh, roles), progress=False)
    assert assert_run_is_whole(fresh, roles_config(fresh, roles)) == assert_run_is_whole(
        run_dir, roles_config(run_dir, roles)
    )


def test_kill_9_and_resume_with_two_pools(tmp_path):
    # Enough shards that a kill a moment after a new shard file finds work left; aimed at
    # the stages reaching two pools (responses) or a pool of its own (judge).
    base = roles_config(tmp_path / "run")
    counts = base.counts.model_dump() | {"users": 15, "questions": 8}
    config = roles_config(tmp_path / "run", counts=counts)
    stages = [STAGES_BY_NAME["responses"], STAGES_BY_NAME["judge"]]
    check_kill_and_resume(tmp_path, config, kills=2, seed=3, max_delay_s=0.3, stages=stages)
    models = Counter(stage_table(config.run_dir, "responses").column("model").to_pylist())
    assert set(models) == {"gen-a", "gen-b"}


def test_a_pool_too_large_for_the_machine_fails_in_one_line(tmp_path, capsys):
    models = roles_config(tmp_path).models | {
        "judge-x": double("judge-x", replicas=8, cpus_per_replica=2)
    }
    config = roles_config(tmp_path / "run", models=models, ray={"num_cpus": 2})
    path = write_config(tmp_path / "job.yaml", config)
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"error: {path}: models.judge-x.cpus_per_replica: 8 replica(s) x 2 CPU need 16 CPU, "
        "but Ray has 2"
    )
    assert not config.run_dir.exists()


def test_two_pools_one_stage_needs_at_once_that_do_not_fit_fail_in_one_line(tmp_path, capsys):
    # Each pool fits alone, but responses needs gen-a (2 CPUs) and gen-b (1 CPU) together.
    models = roles_config(tmp_path).models | {"gen-a": double("gen-a", cpus_per_replica=2)}
    config = roles_config(tmp_path / "run", models=models, ray={"num_cpus": 2})
    path = write_config(tmp_path / "job.yaml", config)
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"error: {path}: roles: the responses stage needs the pools of gen-a, gen-b at once, "
        "3 CPU in all, but Ray has 2"
    )
    assert not config.run_dir.exists()


# Found while writing configs/ensemble.yaml, when both still read the one `model:` (None once
# a job names its models).
def test_plan_sizes_a_job_with_named_models(tmp_path, capsys):
    path = write_config(tmp_path / "job.yaml", roles_config(tmp_path / "run"))
    assert cli.main(["plan", str(path)]) == 0


def test_the_dataset_card_of_a_job_with_named_models(tmp_path):
    write_config(tmp_path / "config.yaml", roles_config(tmp_path))
    card = render_card(tmp_path, "org/set", {"pretty_name": "x"}, {"default": {}}, pa.schema([]))
    assert "judge-x" in card


def test_a_peer_pool_answers_through_a_lost_replica(tmp_path):
    """An ensemble's other model is reached through its pool (`PeerPool`): a replica of it
    lost for good (its restarts spent) costs no call and no answer, its run of the requests
    going to the next replica."""
    import ray

    from fspo_data.pipeline.workers import PeerPool, ShardWorker, actor_options

    config = roles_config(tmp_path / "run")
    model = config.roster().models["gen-b"]
    actor_class = ray.remote(ShardWorker).options(**actor_options(model))
    actors = [actor_class.remote(config, "gen-b") for _ in range(2)]
    ray.get([a.ready.remote() for a in actors])
    domain = load_domain("roleplay", config.domains_dir)
    question = Question(question_uuid="q", domain="roleplay", index=0, question="Which tent?",
                        selected_trait="", trait_varied="", question_type="")  # fmt: skip
    requests = [
        response_request(domain, question, f"view {i}", config.stages.responses) for i in range(8)
    ]
    expected = [c.text for c in make_backend(model).complete(requests)]
    ray.kill(actors[0], no_restart=True)  # its calls fail with RayActorError
    assert [c.text for c in PeerPool("gen-b", actors).complete(requests)] == expected
    for actor in actors:
        ray.kill(actor)
