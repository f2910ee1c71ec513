"""The batch files of openai batch mode, run offline by vLLM's own batch runner (slow).

A real batch file of judge requests, built by the judge's own request code, goes through
`python -m vllm.entrypoints.openai.run_batch` on the embedded model; its output parses back
through the batch-result reader into completions whose first-token logprobs give letter
margins, i.e. judgments.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from fspo_data.backends.embedded import ensure_embedded_model
from fspo_data.backends.openai_batch import batch_file, read_results
from fspo_data.core.batch import letter_margin
from fspo_data.core.chat import Completion
from fspo_data.core.config import JudgeConfig
from fspo_data.judging import judge_requests
from tests.backends.test_openai_vllm_serve import SERVED_NAME, SERVER_ENV, log_tail

pytestmark = pytest.mark.model

RUN_TIMEOUT_S = 600.0
PAIRS = [
    (
        "Loves spicy food and quick recipes.",
        "Suggest a dinner.",
        "A fiery 15-minute curry.",
        "A slow-roasted mild stew.",
    ),
    (
        "A marathon runner who trains at dawn.",
        "What should I eat before a run?",
        "A banana and water.",
        "A large cheeseburger.",
    ),
]


def test_vllm_batch_runner_output_parses_back_into_judgments(tmp_path) -> None:
    settings = JudgeConfig()
    requests = [
        request
        for seed, (persona, question, x, y) in enumerate(PAIRS)
        for first, second in ((x, y), (y, x))
        for request in judge_requests(persona, question, first, second, settings, seed)
    ]
    batch_in, batch_out, log_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "log"
    batch_in.write_bytes(batch_file(SERVED_NAME, requests))
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        str(batch_in),
        "-o",
        str(batch_out),
        "--model",
        str(ensure_embedded_model()),
        "--served-model-name",
        SERVED_NAME,
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--enforce-eager",
    ]
    with log_path.open("wb") as log:
        code = subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **SERVER_ENV},
            timeout=RUN_TIMEOUT_S,
        ).returncode
    assert code == 0, log_tail(log_path)

    results = read_results(requests, "completed", [batch_out.read_text()])

    assert all(isinstance(r, Completion) for r in results), results
    margins = [letter_margin(r) for r in results]
    assert all(m is not None and math.isfinite(m) for m in margins), margins
    assert all(r.completion_tokens == 1 and r.prompt_tokens > 0 for r in results)
    assert all(len(r.first_token_logprobs) > 1 for r in results)
