"""The pipeline's judge as the evaluation's judge: both orders, debiased margins.

`run_eval` compares the trained model's answers with the base model's for each held-out
user; this asks the run's own judge backend through `fspo_data.judging`, exactly as the
judge stage does (the user's description first, one letter read from log-probabilities,
both orders).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from fspo_data.backends import make_backend
from fspo_data.core.chat import ChatRequest, complete_all
from fspo_data.core.config import JobConfig
from fspo_data.core.records import derived_seed
from fspo_data.judging import both_orders, pair_margins, persona_message, user_message
from fspo_data.train.evaluate import Judge


def pipeline_judge(config: JobConfig) -> Judge:
    """A `Judge` backed by the job's model backend, started in this process."""
    backend = make_backend(config.model)
    settings = config.stages.judge

    def judge(
        personas: list[str], questions: list[str], answers_a: list[str], answers_b: list[str]
    ) -> list[float]:
        requests: list[ChatRequest] = []
        for persona, question, a, b in zip(personas, questions, answers_a, answers_b, strict=True):
            seed = derived_seed("eval-judge", persona, question, a, b)
            requests += both_orders(
                persona_message(persona),
                user_message(question, a, b),
                user_message(question, b, a),
                settings,
                seed,
            )
        completions = complete_all(backend, requests, Counter(), "eval_judge")
        first, second = pair_margins(completions, settings)
        return np.nan_to_num((first - second) / 2, nan=0.0).tolist()

    return judge
