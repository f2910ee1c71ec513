"""The verdict lines: each check's colours at its thresholds, grey without a figure, and the
same lines at the end of the run summary, at the top of the report, in summary.json and in
the dataset card. Every summary here is built by hand; no model runs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from rich.console import Console

from fspo_data import cli
from fspo_data.core.checks_config import ChecksConfig
from fspo_data.core.config import JobConfig
from fspo_data.core.config_files import dump_config
from fspo_data.core.judge_config import GateConfig
from fspo_data.pipeline.consistency import Consistency
from fspo_data.pipeline.dataset_card import front_matter, render_card
from fspo_data.pipeline.gold import GoldFigures
from fspo_data.pipeline.report import build_report
from fspo_data.pipeline.summary import RunSummary, StageSummary, render, write_summary
from fspo_data.pipeline.verdicts import Check, verdicts, with_verdicts
from tests.pipeline import test_report as fixtures

CHECKS = ChecksConfig()
NO_GATE = GateConfig()
NAMES = [
    "personalization",
    "gold accuracy",
    "position bias",
    "label entropy",
    "truncated texts",
    "candidate similarity",
]


def consistency(slot_a: float = 0.5, entropy: float = 0.13) -> Consistency:
    return Consistency(
        pairs_judged=100,
        pairs_kept=90,
        kept_rate=0.9,
        flip_rate=0.1,
        drop_reasons={},
        first_slot_win_rate=slot_a,
        position_bias_nats=0.0,
        label_entropy_before=0.64,
        label_entropy_after=entropy,
        users_refined=3,
        margin_histogram_counts=[0] * 12,
        difficulty={},
        flagged_users=[],
    )


def gold(accuracy: float, pairs: int = 40) -> GoldFigures:
    return GoldFigures(
        pairs=pairs,
        kept=pairs,
        right=round(accuracy * pairs),
        accuracy=accuracy,
        ci_low=max(accuracy - 0.1, 0.0),
        ci_high=min(accuracy + 0.1, 1.0),
    )


def stage(name: str, **counters: int) -> StageSummary:
    return StageSummary(stage=name, shards_planned=1, shards_committed=1, shards_run_now=1,
                        rows=1, wall_seconds=1.0, counters=counters)  # fmt: skip


def summary(**fields: object) -> RunSummary:
    return RunSummary(run_dir="r", config_fingerprint="f", wall_seconds=1.0,
                      stages=fields.pop("stages", []), **fields)  # fmt: skip


def check(run: RunSummary, name: str, gate: GateConfig = NO_GATE) -> Check:
    return next(c for c in verdicts(run, CHECKS, gate) if c.name == name)


def demo_like() -> RunSummary:
    """The demo's labels at chance: every user agrees, slot A always wins, entropy ln 2."""
    return summary(
        diversity={"mean_agreement": 1.0, "candidate_similarity": 0.6},
        consistency={"overall": consistency(slot_a=1.0, entropy=0.693)},
        gold={"overall": gold(0.5), "elix": gold(0.5)},
        stages=[stage("responses", responses_requests=24, responses_regenerated_truncated=9)],
    )


@pytest.mark.parametrize(
    ("agreement", "status"), [(0.5, "green"), (0.8, "green"), (0.85, "amber"), (1.0, "red")]
)
def test_personalization_by_cross_user_agreement(agreement: float, status: str) -> None:
    run = summary(diversity={"mean_agreement": agreement})
    assert check(run, "personalization").status == status


@pytest.mark.parametrize(("accuracy", "status"), [(0.9, "green"), (0.7, "amber"), (0.55, "red")])
def test_gold_accuracy_by_its_worst_domain(accuracy: float, status: str) -> None:
    run = summary(gold={"overall": gold(0.9), "review": gold(0.95), "elix": gold(accuracy)})
    verdict = check(run, "gold accuracy")
    assert (verdict.status, verdict.value) == (status, accuracy)
    assert verdict.figure.startswith(f"overall {gold(0.9).describe()}")
    if accuracy < 0.9:
        assert f"worst elix {gold(accuracy).describe()}" in verdict.figure


def test_the_gate_sets_the_red_gold_threshold() -> None:
    run = summary(gold={"overall": gold(0.7)})
    assert check(run, "gold accuracy").status == "amber"
    gated = check(run, "gold accuracy", GateConfig(min_accuracy=0.75))
    assert gated.status == "red" and "red < 0.75 (gate)" in gated.threshold


@pytest.mark.parametrize(
    ("slot_a", "status"),
    [(0.5, "green"), (0.6, "green"), (0.3, "amber"), (0.8, "red"), (0.2, "red")],
)
def test_position_bias_by_slot_a_wins_either_side_of_half(slot_a: float, status: str) -> None:
    run = summary(consistency={"overall": consistency(slot_a=slot_a)})
    assert check(run, "position bias").status == status


@pytest.mark.parametrize(("entropy", "status"), [(0.13, "green"), (0.3, "amber"), (0.69, "red")])
def test_label_entropy_after_refinement(entropy: float, status: str) -> None:
    run = summary(consistency={"overall": consistency(entropy=entropy)})
    assert check(run, "label entropy").status == status


@pytest.mark.parametrize(("cut", "status"), [(0, "green"), (2, "green"), (5, "amber"), (30, "red")])
def test_truncated_texts_as_a_share_of_generated_texts(cut: int, status: str) -> None:
    # Regenerated and dropped both count: each is one completion that came back cut.
    run = summary(
        stages=[
            stage("personas", personas_requests=50, personas_regenerated_truncated=0,
                  personas_dropped_truncated=0),
            stage("responses", responses_requests=50, engine_ms=5,
                  responses_regenerated_truncated=cut - cut // 2,
                  responses_dropped_truncated=cut // 2),
            stage("judge", judge_requests=400),  # the judge's one-token verdicts do not count
        ]
    )  # fmt: skip
    verdict = check(run, "truncated texts")
    assert (verdict.status, verdict.value) == (status, cut / 100)
    assert verdict.figure.startswith(f"{cut} of 100 texts cut")
    if status != "green":
        assert verdict.action == f"Raise stages.responses.max_tokens ({cut} of 50 cut)."


@pytest.mark.parametrize(
    ("similarity", "status"), [(0.71, "green"), (0.85, "amber"), (0.96, "red")]
)
def test_candidate_similarity_against_the_papers_figures(similarity: float, status: str) -> None:
    verdict = check(summary(diversity={"candidate_similarity": similarity}), "candidate similarity")
    assert verdict.status == status and "0.78 views, 0.71 ensemble + views" in verdict.threshold


def test_every_check_is_grey_without_its_figure() -> None:
    run = summary(diversity={"mean_agreement": None, "candidate_similarity": None},
                  gold={"overall": GoldFigures(pairs=0, kept=0, right=0, accuracy=None,
                                               ci_low=None, ci_high=None)},
                  stages=[stage("judge", judge_requests=10)])  # fmt: skip
    checks = verdicts(run, CHECKS, NO_GATE)
    assert [c.name for c in checks] == NAMES
    assert {(c.status, c.figure, c.value) for c in checks} == {("grey", "n/a", None)}
    assert all(c.action and c.threshold for c in checks)


def test_labels_at_chance_are_red_on_personalization_gold_position_and_entropy() -> None:
    statuses = {c.name: c.status for c in verdicts(demo_like(), CHECKS, NO_GATE)}
    assert statuses == {
        "personalization": "red",
        "gold accuracy": "red",
        "position bias": "red",
        "label entropy": "red",
        "truncated texts": "red",  # 9 of 24
        "candidate similarity": "green",
    }


def test_amber_past_red_is_refused() -> None:
    with pytest.raises(ValueError, match="entropy_amber must not exceed entropy_red"):
        ChecksConfig(entropy_amber=0.6)
    with pytest.raises(ValueError, match="gold_red must not exceed gold_amber"):
        ChecksConfig(gold_red=0.9)


def test_the_summary_ends_with_the_verdict_lines_in_colour() -> None:
    run = with_verdicts(demo_like(), CHECKS, NO_GATE)
    console = Console(record=True, width=100, force_terminal=True, color_system="standard")
    render(run, console)
    lines = console.export_text(styles=False, clear=False).splitlines()
    assert lines[-6:] == [c.line() for c in run.verdicts]  # never wrapped, even past 100 columns
    assert lines[-6].startswith("RED   personalization: mean cross-user agreement 1.00")
    styled = console.export_text(styles=True)
    assert "\x1b[31mRED   gold accuracy" in styled and "\x1b[32mGREEN candidate" in styled


def test_summary_json_holds_the_verdicts(tmp_path: Path) -> None:
    run = with_verdicts(demo_like(), CHECKS, NO_GATE)
    write_summary(tmp_path, run)
    stored = json.loads((tmp_path / "summary.json").read_text())["verdicts"]
    assert [(v["name"], v["status"]) for v in stored] == [(c.name, c.status) for c in run.verdicts]
    assert stored[0]["value"] == 1.0 and stored[0]["threshold"]
    assert RunSummary.model_validate_json((tmp_path / "summary.json").read_text()) == run


def full_run_dir(root: Path) -> Path:
    """The report tests' tiny run: personas, questions, responses and judgments."""
    run_dir = root / "run"
    for name, records in (
        ("personas", fixtures.personas()),
        ("questions", fixtures.questions()),
        ("responses", fixtures.responses()),
    ):
        fixtures.write_parts(run_dir, name, records)
    half = fixtures.USERS_IN_FIRST_JUDGE_SHARD * fixtures.N_QUESTIONS
    fixtures.write_parts(run_dir, "judge", fixtures.judgments(), half=half)
    return run_dir


def test_the_report_opens_with_the_verdicts_of_the_summary_and_its_own_figures(
    tmp_path: Path,
) -> None:
    run_dir = full_run_dir(tmp_path)
    given = summary(gold={"overall": gold(0.5)}, consistency={"overall": consistency(1.0, 0.69)})
    result = build_report(run_dir, fixtures.HashEmbedder(), sample_size=100,
                          flag_settings=fixtures.FLAGS, summary=given)  # fmt: skip
    checks = {c.name: c for c in result.summary.verdicts}
    assert checks["personalization"].value == pytest.approx((1.0 + 0.9 + 0.9) / 3)
    assert checks["personalization"].status == "red"  # 0.93: u0 and u1 agree on all
    similarity = result.report.candidates.mean_similarity
    assert checks["candidate similarity"].value == pytest.approx(similarity)
    assert checks["gold accuracy"].status == checks["label entropy"].status == "red"
    assert result.summary.gold == given.gold and result.summary.diversity["mean_agreement"]

    page = result.html_path.read_text()
    body = page.split("<body>", 1)[1]
    opening = body.split("<p>", 1)[0]  # before the run's path and every section
    assert opening.strip().startswith('<h1>Diversity report</h1>\n<ul class="verdicts"><li')
    assert opening.count("<li") == 6
    for c in result.summary.verdicts:
        assert c.name in opening
    assert 'style="color:#cf222e">RED   gold accuracy' in opening


def test_fspo_data_report_reads_summary_json_and_writes_back_the_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import fspo_data.personas.embeddings as embeddings

    run_dir = full_run_dir(tmp_path)
    (run_dir / "config.yaml").write_text(dump_config(JobConfig(run_dir=run_dir)))
    write_summary(run_dir, summary(gold={"overall": gold(0.5)}))
    monkeypatch.setattr(embeddings, "make_embedder", lambda *_: fixtures.HashEmbedder())
    assert cli.main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    stored = RunSummary.model_validate_json((run_dir / "summary.json").read_text())
    assert [c.name for c in stored.verdicts] == NAMES
    gold_check = stored.verdicts[1]
    assert gold_check.status == "red" and gold_check.line() in out  # from summary.json
    assert stored.verdicts[0].status == "red"  # from the report's agreement, 0.93


def test_the_card_lists_the_verdicts(tmp_path: Path) -> None:
    run = with_verdicts(demo_like(), CHECKS, NO_GATE)
    write_summary(tmp_path, run)
    rows = {"roleplay": {"train": 3}}
    card = render_card(tmp_path, "org/x", front_matter(rows, "apache-2.0"), rows, pa.schema([]))
    section = card.split("## Verdicts\n", 1)[1].split("\n## ", 1)[0]
    listed = [line for line in section.splitlines() if line.startswith("- ")]
    assert listed == [f"- **{c.status}** {c.text()}" for c in run.verdicts]
    assert card.index("## Verdicts") < card.index("## Loading")


def test_the_readme_states_every_threshold_with_its_default() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Verdicts\n", 1)[1].split("\n## ", 1)[0]
    for name, field in ChecksConfig.model_fields.items():
        assert f"`{name}` {field.default:g}" in section, name


def test_a_summary_json_report_cannot_read_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.yaml").write_text(dump_config(JobConfig(run_dir=tmp_path)))
    (tmp_path / "summary.json").write_text('{"run_dir": "r", "wall_seconds": 1.0}')
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: {tmp_path / 'summary.json'}: config_fingerprint: Field required (+1 more)\n"
    )
