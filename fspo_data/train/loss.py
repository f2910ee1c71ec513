"""Preference losses and sequence log-probabilities as pure functions.

These are the reference the tests hold TRL's `DPOTrainer` to, and the IPO loss the trainer
uses for the paper's summed margin.

Summed versus averaged log-probabilities. The FSPO paper trains with the DPO reference
code, where a completion's log-probability is the sum over its tokens, so the IPO margin h
is in nats per completion and the target 1/(2 beta) = 50 at beta = 0.01. TRL 1.16's
built-in `loss_type="ipo"` instead divides each completion's log-ratio by its own token
count before taking the margin (dpo_trainer.py, "we therefore normalize by the number of
completion tokens"), which makes 1/(2 beta) a per-token target: at beta = 0.01 it asks for
50 nats per token, out of reach, and the square never stops pushing. Feeding these functions
summed log-probabilities gives the paper's loss; feeding per-token means (sum / count, for
policy and reference alike) gives TRL's. TRL's DPO (`loss_type="sigmoid"`) uses sums.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def log_ratio_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> Tensor:
    """h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]; all (B,) -> (B,)."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> Tensor:
    """Per-pair IPO loss (h - 1/(2 beta))^2; inputs (B,), output (B,).

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences" (arXiv 2310.12036), Eq. 17, with beta their tau. Zero when the policy's
    log-ratio margin h reaches 1/(2 beta); about 1/(4 beta^2) at the start, where h = 0.
    """
    h = log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return (h - 1 / (2 * beta)) ** 2


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> Tensor:
    """Per-pair DPO loss -log sigmoid(beta h); inputs (B,), output (B,).

    Rafailov et al. 2023, "Direct Preference Optimization" (arXiv 2305.18290), Eq. 7.
    log 2 at the start, where h = 0.
    """
    import torch.nn.functional as F

    h = log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return -F.logsigmoid(beta * h)


def sequence_logps(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """Summed log-probability of the completion tokens of each sequence.

    logits (B, T, V) from a causal LM over input_ids (B, T); completion_mask (B, T) is 1 on
    the tokens to score. Token t is scored by the logits at t - 1. Returns (B,).
    """
    import torch

    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:].unsqueeze(-1)
    per_token = log_probs.gather(-1, targets).squeeze(-1)
    return (per_token * completion_mask[:, 1:]).sum(dim=-1)
