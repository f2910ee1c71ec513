"""The preference losses and sequence log-probabilities, on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fspo_data.train.loss import dpo_loss, ipo_loss, log_ratio_margin, sequence_logps


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_margin_is_chosen_log_ratio_minus_rejected_log_ratio() -> None:
    # chosen: -10 - (-11) = 1; rejected: -12 - (-11) = -1; h = 2
    assert log_ratio_margin(t(-10.0), t(-12.0), t(-11.0), t(-11.0)).tolist() == [2.0]


def test_ipo_is_squared_distance_to_half_inverse_beta() -> None:
    # h = 2, 1/(2 * 0.1) = 5: (2 - 5)^2 = 9
    assert ipo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1).tolist() == [9.0]
    # The paper's start: policy = reference, h = 0, beta = 0.01: (0 - 50)^2
    assert ipo_loss(t(-3.0), t(-4.0), t(-3.0), t(-4.0), beta=0.01).tolist() == [2500.0]
    # At the target margin the loss vanishes; beyond it, it grows again
    assert ipo_loss(t(0.0), t(-50.0), t(0.0), t(0.0), beta=0.01).tolist() == [0.0]
    assert ipo_loss(t(0.0), t(-60.0), t(0.0), t(0.0), beta=0.01).tolist() == [100.0]


def test_ipo_per_pair_shapes() -> None:
    losses = ipo_loss(t(0.0, 1.0), t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), beta=0.5)
    # 1/(2 beta) = 1: h = 0 -> 1, h = 1 -> 0
    assert losses.tolist() == [1.0, 0.0]


def test_summed_and_token_mean_ipo_differ_by_length() -> None:
    # Chosen log-ratio +6 over 3 tokens, rejected -4 over 2 tokens; beta = 0.1 (target 5).
    summed = ipo_loss(t(6.0), t(-4.0), t(0.0), t(0.0), beta=0.1)
    token_mean = ipo_loss(t(6.0 / 3), t(-4.0 / 2), t(0.0), t(0.0), beta=0.1)
    assert summed.item() == pytest.approx((10.0 - 5.0) ** 2)  # 25
    assert token_mean.item() == pytest.approx((4.0 - 5.0) ** 2)  # 1


def test_dpo_is_negative_log_sigmoid_of_scaled_margin() -> None:
    # h = 2, beta = 0.5: -log sigmoid(1) = log(1 + e^-1)
    loss = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert dpo_loss(t(-1.0), t(-2.0), t(-1.0), t(-2.0), beta=0.1).item() == pytest.approx(
        math.log(2)
    )


def test_sequence_logps_scores_masked_tokens_from_previous_position() -> None:
    # Vocabulary of 3; logits (0, 0, ln 2) give probabilities (1/4, 1/4, 1/2) everywhere.
    logits = torch.tensor([0.0, 0.0, math.log(2)]).expand(2, 4, 3)
    input_ids = torch.tensor([[0, 1, 2, 2], [1, 0, 2, 0]])
    completion = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    got = sequence_logps(logits, input_ids, completion)
    # Row 0 scores tokens 2, 2: 2 log(1/2). Row 1 scores tokens 0, 2: log(1/4) + log(1/2).
    assert got.tolist() == pytest.approx([2 * math.log(0.5), math.log(0.25) + math.log(0.5)])


def test_sequence_logps_ignores_the_first_position() -> None:
    # Position 0 has no previous logits: a mask there scores nothing.
    logits = torch.zeros(1, 2, 4)
    got = sequence_logps(logits, torch.tensor([[3, 1]]), torch.tensor([[1, 1]]))
    assert got.tolist() == pytest.approx([math.log(0.25)])
