"""Episodes for training and evaluation: loading, split selection, shot truncation.

An FSPO prompt (DESIGN.md section 5) is a run of `# Example k` blocks followed by a `# Task`
block holding the query. When a prompt is over budget, whole examples are dropped from the
front and the rest renumbered from 1; the task block, and so the query, is never cut. An
episode whose task block alone is over budget is dropped and counted.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from fspo_data.core import storage
from fspo_data.core.shards import final_episode_files

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

SPLITS = ("train", "test_users", "test_questions")
RAT_COLUMNS = {"prompt": "rat_prompt", "chosen": "rat_chosen", "rejected": "rat_rejected"}
# Carried through for evaluation (the judge reads them); absent columns are left out.
CONTEXT_COLUMNS = ("episode_uuid", "persona_description", "query_question")

_TASK_HEADER = re.compile(r"^# Task$", re.MULTILINE)


class TruncationStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    episodes: int = 0
    kept: int = 0
    truncated: int = 0
    shots_dropped: int = 0
    left_without_shots: int = 0
    dropped_query_too_long: int = 0
    dropped_empty_target: int = 0


def split_prompt(prompt: str) -> tuple[str, list[str], str]:
    """Cut a prompt into (head, example bodies, task block); `join_prompt` reverses it.

    The task block starts at the first `# Task` line: a stray header inside a shot then only
    keeps shot text in the uncuttable tail, while one inside the query cannot move the cut
    into the query. Example headers must count 1, 2, 3... so a stray `# Example` line in a
    response does not start a block.
    """
    found = _TASK_HEADER.search(prompt)
    if found is None:
        raise ValueError("prompt has no '# Task' line; not an FSPO prompt")
    shots_part, tail = prompt[: found.start()], prompt[found.start() :]
    starts: list[tuple[int, int]] = []  # (header start, body start)
    pos = 0
    for k in itertools.count(1):
        match = re.compile(rf"^# Example {k}\n", re.MULTILINE).search(shots_part, pos)
        if match is None:
            break
        starts.append((match.start(), match.end()))
        pos = match.end()
    if not starts:
        return shots_part, [], tail
    ends = [start for start, _ in starts[1:]] + [len(shots_part)]
    bodies = [shots_part[body:end] for (_, body), end in zip(starts, ends, strict=True)]
    return shots_part[: starts[0][0]], bodies, tail


def join_prompt(head: str, bodies: list[str], tail: str) -> str:
    examples = "".join(f"# Example {k}\n{body}" for k, body in enumerate(bodies, start=1))
    return head + examples + tail


def fit_prompt(
    prompt: str, count_tokens: Callable[[str], int], max_tokens: int
) -> tuple[str, int] | None:
    """Drop whole examples from the front until `count_tokens(prompt) <= max_tokens`.

    Returns the fitted prompt and the number of examples dropped, or None when even the
    prompt without any example is too long (the query is never truncated).
    """
    if count_tokens(prompt) <= max_tokens:
        return prompt, 0
    head, bodies, tail = split_prompt(prompt)
    for dropped in range(1, len(bodies) + 1):
        fitted = join_prompt(head, bodies[dropped:], tail)
        if count_tokens(fitted) <= max_tokens:
            return fitted, dropped
    return None


def load_episodes(source: str, split: str, hub_config: str | None = None) -> datasets.Dataset:
    """Episodes of one split from a run's Parquet (a folder, or s3://, gs://) or a Hub dataset
    (id or folder)."""
    import datasets
    import pyarrow as pa

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    run = storage.location(source)
    if storage.exists(run / "episodes"):
        files = final_episode_files(run, require_manifest=False)
        if not files:
            raise FileNotFoundError(f"{run / 'episodes'}: no episode Parquet files")
        if isinstance(run, Path):
            data_files = [str(f) for f in files]
            every = datasets.load_dataset("parquet", data_files=data_files, split="train")
        else:  # `datasets` reads object stores only through fsspec's s3fs or gcsfs
            every = datasets.Dataset(pa.concat_tables(storage.read_parquet(f) for f in files))
        return every.filter(
            lambda splits: [s == split for s in splits], input_columns="split", batched=True
        )
    return datasets.load_dataset(source, hub_config, split=split)


def prepare_episodes(
    episodes: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_tokens: int,
    use_rat: bool,
) -> tuple[datasets.Dataset, TruncationStats]:
    """Rows of prompt/chosen/rejected (+ context columns) with prompts fitted to the budget.

    May return no rows: the caller decides whether that is fatal.
    """
    if len(episodes) == 0:
        return episodes, TruncationStats()
    if use_rat:
        missing = [c for c in RAT_COLUMNS.values() if c not in episodes.column_names]
        if missing:
            raise ValueError(f"use_rat is set but the episodes lack columns {missing}")
    source = RAT_COLUMNS if use_rat else {name: name for name in RAT_COLUMNS}
    context = [c for c in CONTEXT_COLUMNS if c in episodes.column_names]

    def count_tokens(text: str) -> int:
        # The same call TRL makes to tokenize a plain-text prompt.
        return len(tokenizer(text=text)["input_ids"])

    def fit_row(row: dict) -> dict:
        # _dropped: shots dropped; _left: shots left when some were dropped, else -1.
        texts = {name: row[column] or "" for name, column in source.items()}
        not_kept = {**texts, "_dropped": 0, "_left": -1}
        if not all(texts.values()):
            return {**not_kept, "_status": "dropped_empty_target"}
        fitted = fit_prompt(texts["prompt"], count_tokens, max_prompt_tokens)
        if fitted is None:
            return {**not_kept, "_status": "dropped_query_too_long"}
        prompt, dropped = fitted
        left = len(split_prompt(prompt)[1]) if dropped else -1
        return {**texts, "prompt": prompt, "_status": "kept", "_dropped": dropped, "_left": left}

    drop = [c for c in episodes.column_names if c not in context]
    fitted = episodes.map(fit_row, remove_columns=drop, desc="Fitting prompts")
    status = Counter(fitted["_status"])
    stats = TruncationStats(
        episodes=len(episodes),
        kept=status["kept"],
        truncated=sum(1 for d in fitted["_dropped"] if d),
        shots_dropped=sum(fitted["_dropped"]),
        left_without_shots=sum(1 for left in fitted["_left"] if left == 0),
        dropped_query_too_long=status["dropped_query_too_long"],
        dropped_empty_target=status["dropped_empty_target"],
    )
    kept = fitted.filter(lambda s: s == "kept", input_columns="_status")
    return kept.remove_columns(["_status", "_dropped", "_left"]), stats
