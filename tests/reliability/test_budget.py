"""The budget cap through the CLI on the instant backend: a cap stops the run mid-stage in one
line with exit 1, keeping every committed shard; a raised cap resumes with nothing recomputed.

The instant backend counts generated tokens (40 per text, 1 per judge call) but no prompt
tokens, so the test prices output only: at $1,000 per million, the stages before the judge
cost $2.866 on tests/data/instant.yaml (personas 0.36, questions 0.40, responses 2.00, gold
0.106: 53 gold pairs x 2 orders x 1 token) and each of the 9 judge shards about $0.06.
"""

from __future__ import annotations

import json

import pytest

from fspo_data import cli
from fspo_data.core.model_config import Prices
from fspo_data.core.shards import load_manifest
from fspo_data.pipeline.cost import counter_dollars
from fspo_data.stages import STAGES
from tests.reliability.conftest import (
    assert_run_is_whole,
    committed_shards,
    instant_config,
    write_config,
)

PRICES = Prices(output_per_million=1000)
BEFORE_JUDGE = 2.866
CAP = 3.2  # responses fit at their dearest shard, then some judge shards, not all nine


def capped(run_dir, budget_usd: float):
    model = instant_config(run_dir).model.model_dump(mode="json") | {"prices": PRICES.model_dump()}
    return instant_config(run_dir, model=model, budget_usd=budget_usd)


def spent(run_dir) -> dict[str, float]:
    dollars = {}
    for stage in STAGES:
        manifest = load_manifest(run_dir / stage.name)
        entries = manifest.shards.values() if manifest else []
        dollars[stage.name] = sum(counter_dollars(PRICES, e.counters) or 0.0 for e in entries)
    return dollars


@pytest.mark.slow
def test_a_budget_stops_mid_stage_in_one_line_and_a_raised_one_resumes(tmp_path, local_ray, capsys):
    run_dir = tmp_path / "run"
    path = write_config(tmp_path / "job.yaml", capped(run_dir, CAP))
    assert cli.main(["run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert err.startswith("error: budget: spent $"), err
    assert "of budget_usd 3.20" in err and "the next judge shard would cost about $0.0" in err
    assert "raise budget_usd to go on; committed shards are kept" in err

    committed = committed_shards(run_dir)  # every listed shard whole on disk
    assert 0 < len(committed["judge"]) < 9, committed["judge"]
    assert not committed["episodes"]
    dollars = spent(run_dir)
    assert sum(dollars.values()) <= CAP
    assert sum(dollars.values()) == pytest.approx(BEFORE_JUDGE + dollars["judge"])
    judge_before = load_manifest(run_dir / "judge").shards

    write_config(path, capped(run_dir, 10.0))
    assert cli.main(["run", str(path), "--quiet"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    ran_now = {s["stage"]: s["shards_run_now"] for s in summary["stages"]}
    assert ran_now["judge"] == 9 - len(judge_before)
    assert {ran_now[s] for s in ("personas", "questions", "responses")} == {0}
    judge_after = load_manifest(run_dir / "judge").shards
    for name, entry in judge_before.items():  # kept as committed, not recomputed
        assert judge_after[name].sha256 == entry.sha256
    assert_run_is_whole(run_dir, capped(run_dir, 10.0))  # no duplicate ids anywhere
    assert summary["dollars"]["total"] == pytest.approx(sum(spent(run_dir).values()))
    assert summary["dollars"]["total"] <= 10.0
