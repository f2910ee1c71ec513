"""The gold gate on the instant backend (a judge at chance): a gate above its gold accuracy
stops the run in one line before any judge shard, keeping the gold shards; lowering the gate
resumes without judging a gold pair again; gold pairs never reach an episode."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fspo_data import cli
from fspo_data.core.config import JobConfig
from fspo_data.core.shards import committed_files, load_manifest
from fspo_data.pipeline import dataset_card
from fspo_data.pipeline.gold import GoldFigures, summarize_gold
from fspo_data.pipeline.report import build_report
from fspo_data.stages import STAGES_BY_NAME, plan_shards
from tests.reliability.conftest import instant_config, write_config


def gated(run_dir: Path, min_accuracy: float | None, min_pairs: int = 10) -> JobConfig:
    judge = {
        "gold_pairs_per_user": 2,
        "gate": {"min_accuracy": min_accuracy, "min_pairs": min_pairs},
    }
    return instant_config(run_dir, stages={"judge": judge})


@pytest.mark.slow
def test_a_gate_above_the_judge_stops_before_the_judge_stage_and_resumes(
    tmp_path, local_ray, capsys
):
    config = gated(tmp_path / "run", min_accuracy=0.9)
    path = write_config(tmp_path / "job.yaml", config)
    assert cli.main(["run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "gold accuracy" in err and "below stages.judge.gate.min_accuracy 0.9" in err
    assert load_manifest(config.run_dir / "judge") is None  # not one judge shard spent
    # Stopped as soon as a domain had min_pairs judged: its gold stage was not finished.
    gold_shards = load_manifest(config.run_dir / "gold").shards
    planned = len(plan_shards(STAGES_BY_NAME["gold"], config))
    assert 2 <= len(gold_shards) < planned
    gold = summarize_gold(config.run_dir)
    failed = next(d for d in config.domains if f"gate: {d} gold accuracy" in err)
    assert gold[failed].pairs >= 10 and gold[failed].accuracy < 0.9

    # At chance, a domain's first dozen gold pairs can score well under 0.5 (the instant
    # double's review domain: 2 right of 11 kept); 0.1 lets every domain through.
    write_config(path, gated(config.run_dir, min_accuracy=0.1))
    assert cli.main(["run", str(path), "--quiet"]) == 0
    resumed = load_manifest(config.run_dir / "gold").shards
    assert len(resumed) == planned
    assert {name: resumed[name] for name in gold_shards} == gold_shards  # none judged again
    gold = summarize_gold(config.run_dir)
    assert gold["overall"].pairs == 3 * 9 * 2 - 1  # one elix user has a single gold pair
    assert 0.3 < gold["overall"].accuracy < 0.7  # the instant judge is at chance
    gold_ids = {
        uuid
        for file in committed_files(config.run_dir, "gold")
        for uuid in pq.read_table(file, columns=["judgment_uuid"]).column(0).to_pylist()
    }
    episode_ids = set()
    for file in committed_files(config.run_dir, "episodes"):
        episodes = pq.read_table(file, columns=["query_judgment_uuid", "shots"]).to_pylist()
        for episode in episodes:
            episode_ids.add(episode["query_judgment_uuid"])
            episode_ids.update(shot["judgment_uuid"] for shot in episode["shots"])
    assert episode_ids and gold_ids and not gold_ids & episode_ids

    # The summary, the report and the card give the one figure.
    summary = json.loads((config.run_dir / "summary.json").read_text())
    line = GoldFigures.model_validate(summary["gold"]["overall"]).describe()
    assert line == gold["overall"].describe()
    assert f"| overall | {line} |" in dataset_card._summary(summary, config)
    report = build_report(config.run_dir, None, flag_settings=config.stages.judge)
    assert report.report.gold["overall"].describe() == line
    assert "Gold accuracy of the judge" in report.html_path.read_text()


def test_a_gate_that_can_never_be_checked_is_refused_before_anything_runs(tmp_path, capsys):
    config = gated(tmp_path / "run", min_accuracy=0.7, min_pairs=19)  # 9 users x 2 = 18
    path = write_config(tmp_path / "job.yaml", config)
    assert cli.main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stages.judge.gate.min_pairs: 19" in err
    assert not config.run_dir.exists()
