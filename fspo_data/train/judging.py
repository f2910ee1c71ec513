"""The pipeline's judge as the evaluation's judge: both orders, debiased margins.

`run_eval` compares the trained model's answers with the base model's for each held-out
user; this asks the run's evaluation judge (`roles.eval_judge`) through `fspo_data.judging`,
exactly as the judge stage does (the prompt layout of `stages.judge.layout`, one letter read from
log-probabilities, both orders, requests in the layout's prefix order).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from fspo_data.backends import make_backend
from fspo_data.core.config import JobConfig
from fspo_data.core.records import derived_seed
from fspo_data.judging import PairToJudge, judge_both_orders
from fspo_data.train.evaluate import Judge


def pipeline_judge(config: JobConfig) -> Judge:
    """A `Judge` backed by the job's `eval_judge` model (`roles.eval_judge`; with one `model:`,
    that model), started in this process."""
    backend = make_backend(config.roster().of("eval_judge"))
    settings = config.stages.judge

    def judge(
        personas: list[str], questions: list[str], answers_a: list[str], answers_b: list[str]
    ) -> list[float]:
        pairs = [
            PairToJudge(
                persona, question, a, b, derived_seed("eval-judge", persona, question, a, b)
            )
            for persona, question, a, b in zip(
                personas, questions, answers_a, answers_b, strict=True
            )
        ]
        first, second = judge_both_orders(backend, pairs, settings, Counter(), "eval_judge")
        return np.nan_to_num((first - second) / 2, nan=0.0).tolist()

    return judge
