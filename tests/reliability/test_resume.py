"""Resume on the instant backend: a run folder grows with its counts, and a config change
recomputes exactly the shards whose range, recipe (config slice, prompts, model) or inputs
changed, saying so in one line per stage; only another seed is refused; the manifest is
checked against the files, never trusted alone."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fspo_data import cli
from fspo_data.core.config import JobConfig
from fspo_data.core.shards import MANIFEST, file_sha256, load_manifest
from fspo_data.pipeline.orchestrator import run_job
from fspo_data.prompts import PROMPT_DIR
from fspo_data.stages import STAGES_BY_NAME, plan_shards
from tests.reliability.conftest import assert_run_is_whole, instant_config, write_config


def sized(run_dir, users: int = 9, questions: int = 5) -> JobConfig:
    counts = instant_config(run_dir).counts.model_dump() | {"users": users, "questions": questions}
    return instant_config(run_dir, counts=counts)


def ran_now(summary) -> dict[str, int]:
    return {s.stage: s.shards_run_now for s in summary.stages if s.shards_planned}


def test_counts_that_only_extend_the_run_are_not_in_the_fingerprint(tmp_path):
    base = sized(tmp_path)
    assert base.fingerprint() == sized(tmp_path, users=90, questions=50).fingerprint()
    # Quotas are dealt over all users: there the user count shapes every persona.
    stratified = JobConfig.model_validate(
        base.model_dump() | {"personas": {"stratify": ["gender"]}}
    )
    grown = stratified.model_copy(update={"counts": sized(tmp_path, users=10).counts})
    assert stratified.fingerprint() != grown.fingerprint()
    counts = base.counts.model_dump() | {"pairs_per_user": 7}
    assert base.fingerprint() != instant_config(tmp_path, counts=counts).fingerprint()


@pytest.mark.slow
def test_growing_users_recomputes_only_the_recut_shards(tmp_path, local_ray):
    # 8 users in shards of 3: the last shard is [6, 8); with 9 it becomes [6, 9).
    run_job(sized(tmp_path / "run", users=8), progress=False)
    again = run_job(sized(tmp_path / "run", users=8), progress=False)
    assert set(ran_now(again).values()) == {0}
    grown = run_job(sized(tmp_path / "run", users=9), progress=False)
    assert ran_now(grown) == {
        "personas": 3,
        "questions": 0,
        "responses": 0,
        "gold": 3,
        "judge": 3,
        "persona_duplicates": 3,
        "episodes": 3,
    }
    assert any("planned range is now [6, 9)" in n for s in grown.stages for n in s.notes)
    run_job(sized(tmp_path / "fresh", users=9), progress=False)
    expected = assert_run_is_whole(tmp_path / "fresh", sized(tmp_path / "fresh", users=9))
    assert assert_run_is_whole(tmp_path / "run", sized(tmp_path / "run", users=9)) == expected


@pytest.mark.slow
def test_growing_questions_rejudges_every_user_of_the_domain(tmp_path, local_ray):
    # Questions in shards of 2: [4, 5) becomes [4, 6); the candidate pool of each domain grows.
    run_job(sized(tmp_path / "run", questions=5), progress=False)
    grown = run_job(sized(tmp_path / "run", questions=6), progress=False)
    assert ran_now(grown) == {
        "personas": 0,
        "questions": 3,
        "responses": 3,
        "gold": 9,
        "judge": 9,
        "persona_duplicates": 0,
        "episodes": 9,
    }
    assert any("its input questions" in n for s in grown.stages for n in s.notes)
    run_job(sized(tmp_path / "fresh", questions=6), progress=False)
    expected = assert_run_is_whole(tmp_path / "fresh", sized(tmp_path / "fresh", questions=6))
    assert assert_run_is_whole(tmp_path / "run", sized(tmp_path / "run", questions=6)) == expected


@pytest.mark.slow
def test_shrinking_discards_shards_no_longer_planned(tmp_path, local_ray):
    run_job(sized(tmp_path / "run", users=9), progress=False)
    shrunk = run_job(sized(tmp_path / "run", users=6), progress=False)
    assert any("no longer planned" in n for s in shrunk.stages for n in s.notes)
    ids = assert_run_is_whole(tmp_path / "run", sized(tmp_path / "run", users=6))
    assert len(ids["personas"]) == 6 * 3
    judge_files = sorted((tmp_path / "run" / "judge").glob("*.parquet"))
    judged_users = set(pq.read_table(judge_files).column("persona_uuid").to_pylist())
    assert judged_users == set(ids["personas"])


def untouched_files(run_dir: Path, stages: list[str]) -> dict[str, tuple[int, int, str]]:
    """file -> (inode, mtime, sha256) of every committed shard of `stages`."""
    return {
        f"{stage}/{path.name}": (path.stat().st_ino, path.stat().st_mtime_ns, file_sha256(path))
        for stage in stages
        for path in sorted((run_dir / stage).glob("*.parquet"))
    }


UPSTREAM_OF_JUDGE = ["personas", "questions", "responses"]


@pytest.mark.slow
def test_a_judge_setting_recomputes_only_the_judge_and_what_follows(tmp_path, local_ray, capsys):
    config = sized(tmp_path / "run").model_dump(mode="json")
    config["stages"]["rationales"]["enabled"] = True
    config = JobConfig.model_validate(config)
    path = write_config(tmp_path / "job.yaml", config)
    assert cli.main(["run", str(path), "--quiet"]) == 0
    before = untouched_files(config.run_dir, UPSTREAM_OF_JUDGE)
    changed = config.model_dump(mode="json")
    changed["stages"]["judge"]["min_margin"] = 0.1
    changed = JobConfig.model_validate(changed)
    capsys.readouterr()
    summary = run_job(changed, progress=True)
    shards = len(plan_shards(STAGES_BY_NAME["judge"], config))
    ran = ran_now(summary)
    assert ran | {"episodes": 0, "rationales": 0} == {
        "personas": 0,
        "questions": 0,
        "responses": 0,
        "gold": shards,  # gold pairs are judged with the same settings and template
        "judge": shards,
        "persona_duplicates": 0,
        "episodes": 0,
        "rationales": 0,
    }
    # Episodes follow only the judge shards whose labels moved (the rest re-made byte for byte).
    assert 0 < ran["episodes"] == ran["rationales"] <= shards
    printed = capsys.readouterr()
    printed = printed.out + printed.err
    line = f"judge: stages.judge.min_margin 0.05 -> 0.1, {shards} of {shards} shards recomputed"
    assert line in printed
    assert f"episodes: its input judge changed, {ran['episodes']} of {shards}" in printed
    assert untouched_files(config.run_dir, UPSTREAM_OF_JUDGE) == before
    # The same config again: nothing to do.
    assert set(ran_now(run_job(changed, progress=False)).values()) == {0}


@pytest.mark.slow
def test_an_edited_judge_template_rejudges(tmp_path, local_ray):
    config = sized(tmp_path / "run")
    run_job(config, progress=False)
    before = untouched_files(config.run_dir, UPSTREAM_OF_JUDGE)
    template = PROMPT_DIR / "judge.txt"
    original = template.read_bytes()
    try:
        # A real edit of the package's template, restored whatever happens; engine workers
        # start afresh with each run, so they render the edited text.
        template.write_bytes(original + b"\nAnswer with the letter only.\n")
        summary = run_job(config, progress=False)
    finally:
        template.write_bytes(original)
    shards = len(plan_shards(STAGES_BY_NAME["judge"], config))
    assert ran_now(summary) == {
        "personas": 0,
        "questions": 0,
        "responses": 0,
        "gold": shards,  # gold pairs are judged with the same settings and template
        "judge": shards,
        "persona_duplicates": 0,
        "episodes": shards,
    }
    line = f"judge: prompt template judge changed, {shards} of {shards} shards recomputed"
    assert line in [note for s in summary.stages for note in s.notes]
    assert untouched_files(config.run_dir, UPSTREAM_OF_JUDGE) == before


@pytest.mark.slow
def test_another_seed_is_refused_in_one_line_unless_forced(tmp_path, local_ray, capsys):
    config = sized(tmp_path / "run")
    path = write_config(tmp_path / "job.yaml", config)
    assert cli.main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    write_config(path, JobConfig.model_validate(config.model_dump(mode="json") | {"seed": 4}))
    assert cli.main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "seed: 3 -> 4" in err and "--force-new-config" in err
    assert cli.main(["run", str(path), "--force-new-config", "--quiet"]) == 0
    # Nothing of the old seed is kept: the run is the one a fresh folder gets.
    fresh = config.model_copy(update={"seed": 4, "run_dir": tmp_path / "fresh"})
    run_job(fresh, progress=False)
    expected = assert_run_is_whole(fresh.run_dir, fresh)
    assert (
        assert_run_is_whole(config.run_dir, fresh.model_copy(update={"run_dir": config.run_dir}))
        == expected
    )


@pytest.mark.slow
def test_manifest_is_checked_against_the_files(tmp_path, local_ray):
    config = sized(tmp_path / "run")
    run_job(config, progress=False)
    before = assert_run_is_whole(config.run_dir, config)
    run_dir = config.run_dir
    # An altered committed shard, a deleted one, a stray file, a partial temp file, and a
    # manifest that no longer parses.
    pq.write_table(pa.table({"x": [1]}), run_dir / "judge" / "review-00001.parquet")
    (run_dir / "personas" / "elix-00000.parquet").unlink()
    (run_dir / "questions" / "roleplay-00099.parquet").write_bytes(b"stray")
    (run_dir / "responses" / ".review-00000.parquet.tmp-1").write_bytes(b"partial")
    (run_dir / "episodes" / MANIFEST).write_text('{"stage": "episodes", "shards": {')
    summary = run_job(config, progress=False)
    notes = [n for s in summary.stages for n in s.notes]
    assert any("judge/review-00001.parquet: missing or altered" in n for n in notes)
    assert any("personas/elix-00000.parquet: missing or altered" in n for n in notes)
    assert any("questions/roleplay-00099.parquet: not committed" in n for n in notes)
    assert any("corrupt manifest" in n for n in notes)
    # The re-made persona shard is byte-identical (seeded), so its judge shard's input digest
    # is unchanged: only the altered judge shard and the stage with no manifest are redone.
    assert ran_now(summary) == {
        "personas": 1,
        "questions": 0,
        "responses": 0,
        "gold": 0,
        "judge": 1,
        "persona_duplicates": 0,
        "episodes": 9,
    }
    assert assert_run_is_whole(run_dir, config) == before
    assert load_manifest(run_dir / "episodes") is not None
