"""Per-shard invalidation as pure rules: recipes, their readable differences, staleness."""

from __future__ import annotations

from fspo_data.core.config import JobConfig
from fspo_data.core.shards import ShardEntry
from fspo_data.pipeline.resume import recipe_changes, shard_recipe, stale_reason
from fspo_data.stages import STAGES_BY_NAME
from fspo_data.stages.base import ShardSpec

JUDGE = STAGES_BY_NAME["judge"]
SPEC = ShardSpec(stage="judge", domain="roleplay", index=0, start=0, stop=4)


def entry(recipe: dict[str, str], inputs: dict[str, str] | None = None) -> ShardEntry:
    return ShardEntry(
        file="roleplay-00000.parquet",
        rows=1,
        bytes=1,
        sha256="x",
        start=0,
        stop=4,
        recipe=recipe,
        inputs=inputs or {},
    )


def test_a_recipe_holds_settings_prompts_domain_and_model():
    recipe = shard_recipe(JUDGE, "roleplay", JobConfig(run_dir="x"))
    assert recipe["stages.judge.min_margin"] == "0.05"
    assert "stages.judge.flag_agreement" not in recipe
    assert {"prompt:judge", "domain:roleplay", "model.model", "seed"} <= recipe.keys()
    # Where and how fast the model runs is not what it writes.
    faster = JobConfig(run_dir="y", model={"replicas": 4, "cpus_per_replica": 3})
    assert shard_recipe(JUDGE, "roleplay", faster) == recipe
    episodes = shard_recipe(STAGES_BY_NAME["episodes"], "roleplay", JobConfig(run_dir="x"))
    assert not any(key.startswith("model.") for key in episodes)


def test_recipe_changes_read_as_one_line_each():
    old = {"stages.judge.min_margin": "0.05", "prompt:judge": "aaa", "seed": "0"}
    new = {"stages.judge.min_margin": "0.1", "prompt:judge": "bbb", "seed": "0", "x": "1"}
    assert recipe_changes(old, new) == [
        "prompt template judge changed",
        "stages.judge.min_margin 0.05 -> 0.1",
        "x (unset) -> 1",
    ]


def test_stale_reasons_in_order_of_what_a_reader_can_act_on():
    recipe = {"seed": "0"}
    digest = {"personas/roleplay-00000": "d1"}.get
    fresh = entry(recipe, {"personas/roleplay-00000": "d1"})
    assert stale_reason(fresh, SPEC, recipe, digest) is None
    assert stale_reason(fresh, None, recipe, digest) == "no longer planned, discarded"
    grown = SPEC.model_copy(update={"stop": 5})
    assert stale_reason(fresh, grown, recipe, digest) == "planned range is now [0, 5)"
    assert stale_reason(fresh, SPEC, {"seed": "1"}, digest) == "seed 0 -> 1"
    moved = entry(recipe, {"personas/roleplay-00000": "d0"})
    assert stale_reason(moved, SPEC, recipe, digest) == "its input personas changed"
    older = entry({})
    assert stale_reason(older, SPEC, recipe, digest) == (
        "committed before shards recorded their recipe"
    )
