"""Persona dedup across shards: the per-shard dedup cannot see another shard's users."""

import pyarrow as pa

from fspo_data.core.config import JobConfig
from fspo_data.core.records import Persona, to_table
from fspo_data.stages import STAGES_BY_NAME, persona_duplicates, plan_shards
from fspo_data.stages.base import StageContext

DESCRIPTIONS = [
    "A retired farmer who keeps bees, reads history books and loves quiet evenings at home.",
    "A young nurse who works night shifts, runs marathons and cooks spicy food on weekends.",
    "A retired farmer who keeps bees, reads history books and loves quiet evenings at home!",
    "A young nurse who works night shifts, runs marathons and cooks spicy food on Sundays.",
    "A jazz pianist who travels for concerts and collects vintage maps of coastal cities.",
]


def shard(start: int, stop: int) -> pa.Table:
    """Personas [start, stop) of roleplay, as one committed persona shard holds them."""
    return to_table(
        [
            Persona(
                persona_uuid=f"p{i}",
                domain="roleplay",
                index=i,
                traits=[],
                persona_description=DESCRIPTIONS[i],
            )
            for i in range(start, stop)
        ],
        Persona,
    )


def test_a_near_duplicate_description_in_another_shard_is_caught(tmp_path):
    config = JobConfig(run_dir=tmp_path, counts={"users": 5}, sharding={"users_per_shard": 2})
    (spec,) = plan_shards(persona_duplicates.STAGE, config)
    assert (spec.domain, spec.start, spec.stop) == ("roleplay", 0, 5)
    # The domain's shards as the orchestrator reads them for a 'domain' input, in any order.
    personas = pa.concat_tables([shard(4, 5), shard(2, 4), shard(0, 2)])
    output = persona_duplicates.run(spec, {"personas": personas}, StageContext(config))
    flagged = {(d.persona_uuid, d.duplicate_of, d.reason) for d in output.records}
    # p2 repeats p0 but for its punctuation; p3 differs from p1 in one word of fifteen.
    assert flagged == {("p2", "p0", "exact"), ("p3", "p1", "minhash")}
    assert output.counters["personas_cross_shard_duplicates"] == 2


def test_templated_descriptions_are_alike_on_purpose_and_never_flagged(tmp_path):
    config = JobConfig(run_dir=tmp_path, domains=["review"], counts={"users": 5})
    (spec,) = plan_shards(persona_duplicates.STAGE, config)
    personas = pa.concat_tables([shard(0, 5)] * 2)  # every description twice
    output = persona_duplicates.run(spec, {"personas": personas}, StageContext(config))
    assert output.records == []


def test_the_flags_are_read_by_episodes_and_follow_the_dedup_thresholds():
    episodes = STAGES_BY_NAME["episodes"]
    assert ("persona_duplicates", "domain") in {(i.stage, i.align) for i in episodes.inputs}
    settings = persona_duplicates.STAGE.settings
    before = JobConfig(run_dir="x")
    after = JobConfig(run_dir="x", stages={"persona_checks": {"minhash_threshold": 0.5}})
    assert settings(before) != settings(after)
    assert settings(before) == settings(
        JobConfig(run_dir="x", stages={"judge": {"mode": "strict"}})
    )
