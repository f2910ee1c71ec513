"""Loading episodes, selecting a split, and shot truncation (drops shots, never the query)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import PreTrainedTokenizerBase

from fspo_data.backends.embedded import ensure_embedded_model
from fspo_data.core.config_files import ConfigError
from fspo_data.core.fspo_format import format_completion, format_prompt
from fspo_data.core.records import Episode, Shot, Trait, to_table
from fspo_data.train.config import load_train_config
from fspo_data.train.data import (
    fit_prompt,
    join_prompt,
    load_episodes,
    prepare_episodes,
    split_prompt,
)
from tests.conftest import write_stage

REPO = Path(__file__).resolve().parents[2]


def make_episode(i: int, split: str = "train", shots: int = 4, words: int = 3) -> Episode:
    shot_list = [
        Shot(
            judgment_uuid=f"j{i}-{k}",
            question=f"Shot question {k}?",
            chosen=" ".join(["yes"] * words),
            rejected=" ".join(["no"] * words),
        )
        for k in range(1, shots + 1)
    ]
    query = f"Query question {i}?"
    return Episode(
        episode_uuid=f"e{i}",
        persona_uuid=f"p{i}",
        domain="roleplay",
        split=split,
        persona_description=f"User {i} likes brief answers.",
        traits=[Trait(name="age", value="30")],
        shots=shot_list,
        query_judgment_uuid=f"q{i}",
        query_question_uuid=f"qq{i}",
        query_question=query,
        query_chosen="Brief.",
        query_rejected="A long and winding answer.",
        confidence=1.0,
        prompt=format_prompt(shot_list, query),
        chosen=format_completion("Brief."),
        rejected=format_completion("A long and winding answer."),
    )


def write_episodes(run_dir: Path, table: pa.Table) -> None:
    (run_dir / "episodes").mkdir(parents=True)
    pq.write_table(table, run_dir / "episodes" / "part-00000.parquet")


def count_chars(text: str) -> int:
    return len(text)


PROMPT = (
    "# Example 1\n## Question \nA?\n## Preferred Response \na1\n## Dispreferred Response \na2\n\n"
    "# Example 2\n## Question \nB?\n## Preferred Response \nb1\n## Dispreferred Response \nb2\n\n"
    "# Task\nGiven the examples above, generate a preferred response to the following "
    "question.\n## Question \nQ?\n"
)


def test_split_prompt_finds_examples_and_task_and_joins_back() -> None:
    head, bodies, tail = split_prompt(PROMPT)
    assert head == ""
    assert bodies == [
        "## Question \nA?\n## Preferred Response \na1\n## Dispreferred Response \na2\n\n",
        "## Question \nB?\n## Preferred Response \nb1\n## Dispreferred Response \nb2\n\n",
    ]
    assert tail.startswith("# Task\n") and tail.endswith("## Question \nQ?\n")
    assert join_prompt(head, bodies, tail) == PROMPT


def test_split_prompt_round_trips_the_pipeline_format() -> None:
    prompt = make_episode(0, shots=8).prompt
    head, bodies, tail = split_prompt(prompt)
    assert len(bodies) == 8
    assert join_prompt(head, bodies, tail) == prompt


def test_stray_headers_inside_responses_and_query_do_not_move_the_cut() -> None:
    prompt = PROMPT.replace("a1\n", "a1\n# Example 2 of mine\n# Example 3\n").replace(
        "Q?\n", "Q?\n# Example 3\n# Task\n"
    )
    head, bodies, tail = split_prompt(prompt)
    assert len(bodies) == 2
    assert "# Example 3" in bodies[0]  # not numbered in sequence, so not a block
    assert tail.endswith("Q?\n# Example 3\n# Task\n")  # the whole query stays in the tail


def test_split_prompt_rejects_non_fspo_text() -> None:
    with pytest.raises(ValueError, match="# Task"):
        split_prompt("just a question")


def test_fit_prompt_keeps_a_prompt_that_fits() -> None:
    assert fit_prompt(PROMPT, count_chars, len(PROMPT)) == (PROMPT, 0)


def test_fit_prompt_drops_whole_shots_from_the_front_and_renumbers() -> None:
    fitted = fit_prompt(PROMPT, count_chars, len(PROMPT) - 1)
    assert fitted is not None
    prompt, dropped = fitted
    assert dropped == 1
    assert "A?" not in prompt and "a1" not in prompt
    assert prompt.startswith("# Example 1\n## Question \nB?\n")
    assert "# Example 2" not in prompt
    assert prompt.endswith("## Question \nQ?\n")


def test_fit_prompt_may_drop_every_shot_but_never_the_query() -> None:
    task_only = PROMPT[PROMPT.index("# Task") :]
    assert fit_prompt(PROMPT, count_chars, len(task_only)) == (task_only, 2)
    assert fit_prompt(PROMPT, count_chars, len(task_only) - 1) is None


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_embedded_model())


def test_load_episodes_selects_the_split(tmp_path: Path) -> None:
    episodes = [make_episode(0), make_episode(1, "test_users"), make_episode(2, "train")]
    write_episodes(tmp_path, to_table(episodes, Episode))
    train = load_episodes(str(tmp_path), "train")
    assert sorted(train["episode_uuid"]) == ["e0", "e2"]
    assert load_episodes(str(tmp_path), "test_users")["episode_uuid"] == ["e1"]
    assert len(load_episodes(str(tmp_path), "test_questions")) == 0
    with pytest.raises(ValueError, match="split"):
        load_episodes(str(tmp_path), "dev")


def test_load_episodes_reads_only_committed_shards(tmp_path: Path) -> None:
    write_stage(tmp_path, "episodes", "roleplay-00000", [make_episode(0)])
    # A shard renamed into place but never committed to the manifest (a killed run).
    pq.write_table(to_table([make_episode(1)], Episode), tmp_path / "episodes" / "stray.parquet")
    assert load_episodes(str(tmp_path), "train")["episode_uuid"] == ["e0"]


def test_prepare_truncates_shots_counts_and_keeps_every_query(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    short = [make_episode(i, shots=2) for i in range(2)]
    long = [make_episode(i, shots=6, words=10) for i in range(2, 5)]
    write_episodes(tmp_path, to_table(short + long, Episode))
    # Room for exactly 3 of the long episodes' 6 equally long shots.
    budget = len(tokenizer(text=make_episode(2, shots=3, words=10).prompt)["input_ids"])
    rows, stats = prepare_episodes(load_episodes(str(tmp_path), "train"), tokenizer, budget, False)
    assert stats.model_dump() == {
        "episodes": 5,
        "kept": 5,
        "truncated": 3,
        "shots_dropped": 9,
        "left_without_shots": 0,
        "dropped_query_too_long": 0,
        "dropped_empty_target": 0,
    }
    by_id = {row["episode_uuid"]: row for row in rows}
    for e in short + long:
        prompt = by_id[e.episode_uuid]["prompt"]
        assert len(tokenizer(text=prompt)["input_ids"]) <= budget
        assert prompt.endswith(f"## Question \n{e.query_question}\n")
        assert prompt.startswith("# Example 1\n")
        assert by_id[e.episode_uuid]["chosen"] == e.chosen
    for e in long:
        kept = by_id[e.episode_uuid]["prompt"]
        assert "Shot question 3?" not in kept and "# Example 4" not in kept
        assert kept.startswith("# Example 1\n## Question \nShot question 4?\n")
    assert by_id["e0"]["prompt"] == short[0].prompt
    assert by_id["e0"]["persona_description"] == "User 0 likes brief answers."


def test_prepare_drops_an_episode_whose_query_alone_is_too_long(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    write_episodes(tmp_path, to_table([make_episode(0), make_episode(1)], Episode))
    rows, stats = prepare_episodes(load_episodes(str(tmp_path), "train"), tokenizer, 10, False)
    assert len(rows) == 0
    assert stats.episodes == stats.dropped_query_too_long == 2
    assert stats.kept == stats.truncated == stats.left_without_shots == 0


def test_prepare_counts_episodes_left_without_shots(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    write_episodes(tmp_path, to_table([make_episode(0, shots=3, words=30)], Episode))
    query_only = len(tokenizer(text=make_episode(0, shots=0).prompt)["input_ids"])
    rows, stats = prepare_episodes(
        load_episodes(str(tmp_path), "train"), tokenizer, query_only, False
    )
    assert (stats.kept, stats.shots_dropped, stats.left_without_shots) == (1, 3, 1)
    assert rows["prompt"] == [make_episode(0, shots=0).prompt]


def test_prepare_an_empty_split(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    write_episodes(tmp_path, to_table([make_episode(0)], Episode))
    rows, stats = prepare_episodes(load_episodes(str(tmp_path), "test_users"), tokenizer, 99, False)
    assert len(rows) == 0 and stats.episodes == 0


def test_rat_columns_are_used_when_asked_and_required(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    table = to_table([make_episode(0), make_episode(1)], Episode)
    write_episodes(tmp_path / "plain", table)
    with pytest.raises(ValueError, match="rat_prompt"):
        prepare_episodes(load_episodes(str(tmp_path / "plain"), "train"), tokenizer, 512, True)
    rat_prompt = [
        p.replace("generate a preferred", "describe the user, then give a preferred")
        for p in table["prompt"].to_pylist()
    ]
    target = "## User Description\nbrief\n## Preferred Response \n{}\n"
    table = (
        table.append_column("rat_prompt", pa.array(rat_prompt))
        .append_column("rat_chosen", pa.array([target.format("Brief."), None]))
        .append_column("rat_rejected", pa.array([target.format("Long."), "x"]))
    )
    write_episodes(tmp_path / "rat", table)
    episodes = load_episodes(str(tmp_path / "rat"), "train")
    rows, stats = prepare_episodes(episodes, tokenizer, 512, True)
    assert stats.dropped_empty_target == 1  # the second episode has no RAT chosen target
    assert rows["prompt"] == [rat_prompt[0]]
    assert rows["chosen"] == [target.format("Brief.")]


def test_shipped_configs_load() -> None:
    paper = load_train_config(REPO / "configs" / "train.yaml")
    assert (paper.fspo.loss, paper.fspo.beta, paper.fspo.learning_rate) == ("ipo", 0.01, 1e-6)
    assert paper.max_prompt_tokens == 8192
    smoke = load_train_config(REPO / "configs" / "train_cpu_smoke.yaml")
    assert smoke.fspo.max_steps is not None and smoke.fspo.max_steps <= 5


def test_config_errors_are_one_line_naming_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("fspo:\n  loss: hinge\n")
    with pytest.raises(ConfigError, match=r"train\.yaml: fspo\.loss: ") as error:
        load_train_config(path)
    assert "\n" not in str(error.value)
    path.write_text("fspo:\n  betta: 0.1\n")
    with pytest.raises(ConfigError, match=r"fspo\.betta: unknown field"):
        load_train_config(path)
    path.write_text("num_workers: 3\n")
    with pytest.raises(ConfigError, match="not a multiple"):
        load_train_config(path)
    path.write_bytes(b"num_workers: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"train\.yaml: not UTF-8 text \(byte offset 20\)"):
        load_train_config(path)
