"""The stage declarations: every stage cuts or follows shards, reads only earlier stages, and
declares the config it depends on precisely enough for per-stage invalidation."""

from __future__ import annotations

import pytest

from fspo_data.core.config import JobConfig
from fspo_data.domains import load_domain
from fspo_data.stages import STAGES, STAGES_BY_NAME, plan_shards
from fspo_data.stages.base import ShardSpec, StageInput


def config(**updates: object) -> JobConfig:
    base = {"run_dir": "x", "domains": ["roleplay", "elix"], "counts": {"users": 5}}
    return JobConfig.model_validate(base | updates)


def test_stages_that_follow_an_input_plan_its_shards():
    job = config(sharding={"users_per_shard": 2})
    personas = plan_shards(STAGES_BY_NAME["personas"], job)
    assert [s.name for s in personas] == [
        f"{d}-0000{i}" for d in ("roleplay", "elix") for i in (0, 1, 2)
    ]
    for name in ("judge", "episodes"):
        specs = plan_shards(STAGES_BY_NAME[name], job)
        assert [(s.name, s.start, s.stop, s.stage) for s in specs] == [
            (s.name, s.start, s.stop, name) for s in personas
        ]
    assert plan_shards(STAGES_BY_NAME["rationales"], job) == []
    enabled = config(stages={"rationales": {"enabled": True}})
    assert len(plan_shards(STAGES_BY_NAME["rationales"], enabled)) == 2


def test_inputs_name_earlier_stages_and_align_by_shard_or_domain():
    seen: set[str] = set()
    for stage in STAGES:
        assert all(i.stage in seen for i in stage.inputs), stage.name
        assert (stage.cut is None) == (stage.shard_input() is not None), stage.name
        seen.add(stage.name)
    spec = ShardSpec(stage="judge", domain="elix", index=3, start=6, stop=8)
    assert StageInput(stage="personas", align="shard").prefix(spec) == "elix-00003"
    # The trailing dash keeps a domain "elix" from reading a domain "elix2".
    assert StageInput(stage="responses", align="domain").prefix(spec) == "elix-"


@pytest.mark.parametrize(
    ("stage", "changed", "reached"),
    [
        ("judge", {"stages": {"judge": {"min_margin": 0.2}}}, True),
        # Statistics thresholds do not change a label.
        ("judge", {"stages": {"judge": {"flag_agreement": 0.5}}}, False),
        ("personas", {"stages": {"judge": {"min_margin": 0.2}}}, False),
        ("episodes", {"splits": {"test_user_fraction": 0.5}}, True),
        ("responses", {"stages": {"responses": {"max_tokens": 10}}}, True),
        ("questions", {"stages": {"responses": {"max_tokens": 10}}}, False),
        # Growing users only re-cuts the last persona shard, unless quotas deal over all.
        ("personas", {"counts": {"users": 9}}, False),
        ("personas", {"counts": {"users": 9}, "personas": {"stratify": ["gender"]}}, True),
    ],
)
def test_settings_name_what_changes_a_stages_records(stage, changed, reached):
    before = config(personas={"stratify": ["gender"]}) if "personas" in changed else config()
    after = config(**changed)
    settings = STAGES_BY_NAME[stage].settings
    assert (settings(before) != settings(after)) is reached


def test_prompts_are_declared_per_domain():
    roleplay, review = load_domain("roleplay"), load_domain("review")
    assert STAGES_BY_NAME["questions"].prompts(roleplay) == ("question_roleplay",)
    assert STAGES_BY_NAME["questions"].prompts(review) == ()  # a fixed question template
    assert STAGES_BY_NAME["responses"].prompts(roleplay) == ("viewpoints", "response_view")
    assert STAGES_BY_NAME["episodes"].prompts(roleplay) == ()
