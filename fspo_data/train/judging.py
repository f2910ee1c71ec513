"""The pipeline's judge as the evaluation's judge: both orders, debiased margins.

`run_eval` compares the trained model's answers with the base model's for each held-out
user; this asks the run's own judge backend, exactly as the judge stage does (the user's
description first, one letter read from log-probabilities, both orders).
"""

from __future__ import annotations

from fspo_data.backends import make_backend
from fspo_data.pipeline.config import JobConfig
from fspo_data.records import derived_seed
from fspo_data.stages.base import complete_all
from fspo_data.train.evaluate import Judge


def pipeline_judge(config: JobConfig) -> Judge:
    """A `Judge` backed by the job's model backend, started in this process."""
    backend = make_backend(config.model)
    settings = config.stages.judge

    def judge(
        personas: list[str], questions: list[str], answers_a: list[str], answers_b: list[str]
    ) -> list[float]:
        from collections import Counter

        from fspo_data.stages.judge import judge_requests, order_margin

        k = settings.samples_per_order
        requests = []
        for persona, question, a, b in zip(personas, questions, answers_a, answers_b, strict=True):
            seed = derived_seed("eval-judge", persona, question, a, b)
            requests += judge_requests(persona, question, a, b, settings, seed)
            requests += judge_requests(persona, question, b, a, settings, seed)
        completions = complete_all(backend, requests, Counter(), "eval_judge")
        margins = []
        for i in range(len(personas)):
            first = order_margin(completions[2 * k * i : 2 * k * i + k])
            second = order_margin(completions[2 * k * i + k : 2 * k * (i + 1)])
            margins.append(0.0 if first is None or second is None else (first - second) / 2)
        return margins

    return judge
