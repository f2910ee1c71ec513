"""The FSPO prompt and target text (DESIGN.md section 5, the public FSPO trainer's format).

One home for it: the episode and RAT stages write it, the dataset card shows it, the trainer
reads it. Row forms (`format_prompt`, `format_completion`, the RAT ones) and the Arrow column
forms (`prompt_column`, `completion_column`) give the same bytes; the column forms are tested
against the row forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TASK_LINE = "Given the examples above, generate a preferred response to the following question."
# Rationalization (RAT): the model first describes the user, then answers.
RAT_TASK_LINE = (
    "Generate a user description based on the examples above. "
    "Then, generate a preferred response to the following question."
)
# What Python's str.strip() removes (str.isspace), so Arrow trims what format_prompt strips.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class ShotText(Protocol):
    question: str
    chosen: str
    rejected: str


def format_prompt(shots: Sequence[ShotText], question: str, task_line: str = TASK_LINE) -> str:
    """The FSPO few-shot prompt (DESIGN.md section 5), byte for byte, no chat template;
    `task_line` is replaced for the rationalization (RAT) variant."""
    blocks = [
        f"# Example {i}\n## Question \n{s.question.strip()}\n"
        f"## Preferred Response \n{s.chosen.strip()}\n"
        f"## Dispreferred Response \n{s.rejected.strip()}\n\n"
        for i, s in enumerate(shots, start=1)
    ]
    return "".join(blocks) + f"# Task\n{task_line}\n## Question \n{question.strip()}\n"


def format_completion(response: str) -> str:
    """A chosen/rejected target; the trainer's tokenizer appends EOS."""
    return f"## Preferred Response \n{response.strip()}\n"


def format_rat_prompt(shots: Sequence[ShotText], question: str) -> str:
    """The RAT prompt: the few-shot prompt whose task asks for a user description first."""
    return format_prompt(shots, question, task_line=RAT_TASK_LINE)


def format_rat_completion(description: str, response: str) -> str:
    """A RAT target: the user description, then the `format_completion` target."""
    return f"## User Description\n{description}\n" + format_completion(response)


def _strip(texts: pa.Array) -> pa.Array:
    return pc.utf8_trim(texts, characters=PY_WHITESPACE)


def prompt_column(shots: pa.ListArray, question: pa.Array) -> pa.Array:
    """(e,) `format_prompt` of each episode's shots (list of structs) and query question."""
    flat = shots.flatten()
    offsets = shots.offsets.to_numpy()
    lengths = np.diff(offsets)
    position = np.arange(len(flat)) - np.repeat(offsets[:-1], lengths) + 1
    blocks = pc.binary_join_element_wise(
        "# Example ",
        pc.cast(pa.array(position), pa.string()),
        "\n## Question \n",
        _strip(flat.field("question")),
        "\n## Preferred Response \n",
        _strip(flat.field("chosen")),
        "\n## Dispreferred Response \n",
        _strip(flat.field("rejected")),
        "\n\n",
        "",
    )
    examples = pc.binary_join(pa.ListArray.from_arrays(shots.offsets, blocks), "")
    task = f"# Task\n{TASK_LINE}\n## Question \n"
    return pc.binary_join_element_wise(examples, task, _strip(question), "\n", "")


def completion_column(responses: pa.Array) -> pa.Array:
    """(e,) `format_completion` of each response."""
    return pc.binary_join_element_wise("## Preferred Response \n", _strip(responses), "\n", "")
