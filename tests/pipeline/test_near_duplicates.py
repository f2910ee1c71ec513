"""One near-duplicate-labeller rule: the run summary, the diversity report and the dataset card
give the same flagged users for the same run, with the thresholds of the run's config.yaml."""

import json
import re
from pathlib import Path

from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.config_files import dump_config
from fspo_data.core.records import Judgment
from fspo_data.pipeline.export import export_run
from fspo_data.pipeline.report import build_report
from fspo_data.pipeline.summary import RunSummary, summarize_judgments, write_summary
from tests.conftest import write_stage
from tests.pipeline.test_export import episode
from tests.pipeline.test_report import judgment

# Three pairs of users who label alike, each pair on its own questions, sharing 7, 9 and 12
# of them. With `flag_min_shared` 8 from the config, the last two pairs are flagged (4 users);
# the job default of 5 would flag all 6 and the report's old constant of 10 only 2.
SHARED_PAIRS = {"a": 7, "c": 9, "e": 12}
MIN_SHARED = 8


def labels(first_user: str, shared: int, offset: int) -> list[Judgment]:
    partner = chr(ord(first_user) + 1)
    return [
        judgment(user, offset + q, chosen_r=q % 2, swap=user == partner)
        for user in (first_user, partner)
        for q in range(shared)
    ]


def test_summary_report_and_card_flag_the_same_users(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = JobConfig(run_dir=run_dir, stages={"judge": {"flag_min_shared": MIN_SHARED}})
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(config))
    for index, (user, shared) in enumerate(SHARED_PAIRS.items()):
        # A user's judgments all sit in one shard, as the judge writes them.
        write_stage(run_dir, "judge", f"roleplay-{index:05d}", labels(user, shared, 100 * index))
    write_stage(run_dir, "episodes", "roleplay-00000", [episode("roleplay", "train", 0)])
    recorded = load_config(run_dir / "config.yaml")  # what `fspo-data report` reads

    consistency = summarize_judgments(run_dir, recorded.stages.judge)
    summary = RunSummary(
        run_dir=str(run_dir),
        config_fingerprint=recorded.fingerprint(),
        wall_seconds=1.0,
        stages=[],
        consistency=consistency,
    )
    write_summary(run_dir, summary)
    build_report(run_dir, flag_settings=recorded.stages.judge)
    card = (export_run(run_dir, "org/x", dry_run=True).folder / "README.md").read_text()

    stored = json.loads((run_dir / "summary.json").read_text())
    flagged = stored["consistency"]["overall"]["flagged_users"]
    assert flagged == ["c", "d", "e", "f"]
    report = json.loads((run_dir / "report" / "diversity.json").read_text())["judgments"]
    assert report["near_duplicate_labellers"] == flagged
    assert (report["near_duplicate_agreement"], report["min_shared_pairs"]) == (0.95, MIN_SHARED)
    counts = re.findall(r"Near-duplicate labellers: (\d+) users \(([^)]*)\)", card)
    assert counts == [("4", "labels agreeing with another user's on more than 0.95 of at least "
                              "8 shared pairs")]  # fmt: skip
