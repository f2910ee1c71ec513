from rich.console import Console

from fspo_data.pipeline.summary import RunSummary, StageSummary, render


def stage(name: str, **counters: int) -> StageSummary:
    return StageSummary(stage=name, shards_planned=1, shards_committed=1, shards_run_now=1,
                        rows=1, wall_seconds=1.0, counters=counters)  # fmt: skip


def test_the_summary_shows_the_measured_cached_fraction_per_stage():
    judge = stage("judge", prompt_tokens=1000, cached_prompt_tokens=730)
    episodes = stage("episodes")
    assert judge.cached_fraction == 0.73 and episodes.cached_fraction is None
    console = Console(record=True, width=200)
    summary = RunSummary(run_dir="r", config_fingerprint="f", wall_seconds=1.0,
                         stages=[judge, episodes])  # fmt: skip

    render(summary, console)
    judge_row = next(line for line in console.export_text().splitlines() if "judge" in line)
    assert "73%" in judge_row
