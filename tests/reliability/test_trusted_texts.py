"""A whole job on the instant double that cuts some texts at max_tokens: nothing cut reaches
an episode, no episode's query question is among its shots, repeats stay distinct."""

import re

import pyarrow.parquet as pq
import pytest

from fspo_data.core.shards import committed_files
from fspo_data.pipeline.orchestrator import run_job
from tests.reliability.conftest import instant_config

# The double's whole text ends with its third view; a cut one stops before.
WHOLE = re.compile(r"View of novice [0-9a-f]{6}$")


@pytest.mark.slow
def test_no_truncated_text_in_any_episode(tmp_path, local_ray):
    base = instant_config(tmp_path)
    config = instant_config(
        tmp_path / "run",
        model=base.model.model_copy(update={"simulate_truncation": True}).model_dump(),
        stages={"questions": {"max_tokens": 60}, "responses": {"max_tokens": 40}},
        episodes={"repeats": 2},
    )
    summary = run_job(config, progress=False)
    counters = {s.stage: s.counters for s in summary.stages}
    assert counters["responses"]["responses_regenerated_truncated"] > 0
    assert counters["responses"]["responses_dropped_truncated"] > 0
    assert counters["questions"]["questions_regenerated_truncated"] > 0
    responses = [
        text
        for file in committed_files(config.run_dir, "responses")
        for text in pq.read_table(file, columns=["response"])["response"].to_pylist()
    ]
    assert responses and all(WHOLE.search(text) for text in responses)
    episodes = [
        row
        for file in committed_files(config.run_dir, "episodes")
        for row in pq.read_table(file).to_pylist()
    ]
    assert episodes
    for e in episodes:
        texts = [e["query_chosen"], e["query_rejected"]]
        texts += [s[k] for s in e["shots"] for k in ("chosen", "rejected")]
        assert all(WHOLE.search(t) for t in texts)
        assert e["query_question"] not in {s["question"] for s in e["shots"]}
    assert len({e["episode_uuid"] for e in episodes}) == len(episodes)
