"""The FSPO prompt and target format, byte for byte, in its row and column forms."""

import sys

import pyarrow as pa

from fspo_data.core import fspo_format
from fspo_data.core.records import Shot

# DESIGN.md section 5, written out by hand: the prompt must match byte for byte.
EXPECTED_PROMPT = (
    "# Example 1\n"
    "## Question \n"
    "Q1?\n"
    "## Preferred Response \n"
    "good one\n"
    "## Dispreferred Response \n"
    "bad one\n"
    "\n"
    "# Example 2\n"
    "## Question \n"
    "Q2?\n"
    "## Preferred Response \n"
    "good two\n"
    "## Dispreferred Response \n"
    "bad two\n"
    "\n"
    "# Task\n"
    "Given the examples above, generate a preferred response to the following question.\n"
    "## Question \n"
    "Final?\n"
)


def test_prompt_matches_design_byte_for_byte():
    shots = [
        Shot(judgment_uuid="a", question="Q1?", chosen="good one", rejected="bad one"),
        Shot(judgment_uuid="b", question=" Q2?\n", chosen="good two ", rejected="bad two"),
    ]
    assert fspo_format.format_prompt(shots, "Final?") == EXPECTED_PROMPT
    assert fspo_format.format_completion(" yes \n") == "## Preferred Response \nyes\n"


# The public FSPO trainer's RAT format, written out by hand.
EXPECTED_RAT_PROMPT = (
    "# Example 1\n## Question \nQ1?\n## Preferred Response \ngood\n"
    "## Dispreferred Response \nbad\n\n"
    "# Task\nGenerate a user description based on the examples above. Then, generate a "
    "preferred response to the following question.\n## Question \nFinal?\n"
)


def test_rat_prompt_and_targets_match_the_fspo_trainer_byte_for_byte():
    shots = [Shot(judgment_uuid="j1", question="Q1?", chosen="good", rejected="bad")]
    assert fspo_format.format_rat_prompt(shots, "Final?") == EXPECTED_RAT_PROMPT
    assert fspo_format.format_rat_completion("The user likes plain answers.", " yes ") == (
        "## User Description\nThe user likes plain answers.\n## Preferred Response \nyes\n"
    )


def test_prompt_column_is_format_prompt_byte_for_byte():
    odd = "\x1c\u3000 a\u200b b \x85\n"  # Python whitespace Arrow's default trim would keep
    shots = [
        [
            Shot(judgment_uuid="j", question=f" Q{i}{odd}", chosen=f"{odd}c{i}", rejected="r\t")
            for i in range(n)
        ]  # fmt: skip
        for n in (3, 1, 10)
    ]
    questions = [f"{odd}why?{odd}", "\u2028q", ""]
    column = pa.array([[s.model_dump() for s in row] for row in shots])
    expected = [fspo_format.format_prompt(row, q) for row, q in zip(shots, questions, strict=True)]
    assert fspo_format.prompt_column(column, pa.array(questions)).to_pylist() == expected
    completions = fspo_format.completion_column(pa.array(questions)).to_pylist()
    assert completions == [fspo_format.format_completion(q) for q in questions]
    every = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    assert every == fspo_format.PY_WHITESPACE
