"""Held-out evaluation of a trained FSPO model on the test_users and test_questions splits.

Two measures per split, each set beside the base model's:
- implicit-reward accuracy: how often the trained policy's log-ratio against its reference
  (and against the base model) is higher for the chosen completion than for the rejected one;
  the base model's own likelihood ranking, logp(chosen) > logp(rejected), is its counterpart;
- personalized win rate: the trained model and the base model each answer the episode's
  prompt (greedy), and a judge, given the user's description, compares the two answers.

Models are loaded one at a time, so evaluation needs the memory of one model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from fspo_data.backends.embedded import resolve_model_path
from fspo_data.train.config import TrainConfig
from fspo_data.train.data import TruncationStats, load_episodes, prepare_episodes
from fspo_data.train.loss import sequence_logps

EVAL_SPLITS = ("test_users", "test_questions")
SUMMARY_FILE = "eval_summary.json"
ANSWERS_FILE = "eval_answers.jsonl"

# judge(persona_descriptions, questions, answers_a, answers_b) -> debiased margins, > 0: a wins.
Judge = Callable[[list[str], list[str], list[str], list[str]], list[float]]


class SplitEval(BaseModel):
    """One held-out split. `episodes` were evaluated (after `max_episodes` sampling); `data`
    counts prompt fitting over the whole split. Accuracies count ties one half."""

    model_config = ConfigDict(extra="forbid")
    split: str
    episodes: int
    data: TruncationStats
    reward_accuracy: float
    reward_accuracy_vs_base: float
    policy_likelihood_accuracy: float
    base_likelihood_accuracy: float
    win_rate: float | None
    mean_judge_margin: float | None


class EvalSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_dir: str
    reference_dir: str
    base_model: str
    splits: list[SplitEval]


def ranking_accuracy(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> float:
    """Share of pairs scored chosen > rejected, ties one half (so chance, or no change, is 0.5).

    Scores (B,), e.g. log-ratios log pi - log ref, or plain log-likelihoods.
    """
    wins = (chosen_scores > rejected_scores).float() + 0.5 * (chosen_scores == rejected_scores)
    return wins.mean().item()


def win_rate(margins: Sequence[float]) -> float:
    """Share of judge margins won by answer a (> 0), ties one half."""
    return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(margins)


def extract_answer(generated: str) -> str:
    """The response in a generated completion: after a `## Preferred Response` line if any
    (RAT writes a user description first), up to the next `#` heading line."""
    lines = generated.strip().splitlines()
    headers = [i for i, line in enumerate(lines) if line.strip() == "## Preferred Response"]
    body = lines[headers[0] + 1 :] if headers else lines
    end = next((i for i, line in enumerate(body) if line.startswith("#")), len(body))
    return "\n".join(body[:end]).strip()


def encode_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str
) -> tuple[list[int], int]:
    """Token ids of prompt + completion + EOS and the completion's length, split as TRL does:
    the completion starts where the prompt's own tokens stop being a prefix."""
    if not completion.endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    ids = tokenizer(text=prompt + completion)["input_ids"]
    shared = next(
        (i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b),
        min(len(prompt_ids), len(ids)),
    )
    return ids, len(ids) - shared


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _left_pad(seqs: Sequence[list[int]], pad_id: int, device: torch.device) -> dict[str, Any]:
    # Left padding puts every sequence's end, the completion, in the same last columns.
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


@torch.no_grad()
def completion_logps(
    model: Any, encoded: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int
) -> torch.Tensor:
    """Summed log-probability of each completion, (N,); `encoded` from `encode_completion`."""
    out = []
    for batch in _batches(encoded, batch_size):
        inputs = _left_pad([ids for ids, _ in batch], pad_id, model.device)
        keep = max(n for _, n in batch) + 1
        logits = model(**inputs, logits_to_keep=keep).logits
        tail = inputs["input_ids"][:, -keep:]
        lengths = torch.tensor([n for _, n in batch], device=model.device)
        is_completion = torch.arange(keep, device=model.device) >= keep - lengths[:, None]
        out.append(sequence_logps(logits, tail, is_completion.long()).cpu())
    return torch.cat(out)


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy completions of each prompt, reduced to the response by `extract_answer`."""
    answers = []
    for batch in _batches(prompts, batch_size):
        seqs = [tokenizer(text=p)["input_ids"] for p in batch]
        inputs = _left_pad(seqs, tokenizer.pad_token_id, model.device)
        inputs.pop("position_ids")  # generate derives them from the attention mask
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = output[:, inputs["input_ids"].shape[1] :]
        answers += [
            extract_answer(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)
        ]
    return answers


def _pair_logps(
    model: Any, tokenizer: PreTrainedTokenizerBase, episodes: Any, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of every episode's chosen and of its rejected completion, (N,) each."""
    prompts = episodes["prompt"]
    chosen, rejected = (
        completion_logps(
            model,
            [
                encode_completion(tokenizer, p, c)
                for p, c in zip(prompts, episodes[col], strict=True)
            ],
            tokenizer.pad_token_id,
            batch_size,
        )
        for col in ("chosen", "rejected")
    )
    return chosen, rejected


Splits = dict[str, tuple[Any, TruncationStats]]
Scores = dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]


def _held_out(
    source: str, config: TrainConfig, tokenizer: PreTrainedTokenizerBase, max_episodes: int | None
) -> Splits:
    splits = {}
    for split in EVAL_SPLITS:
        episodes, stats = prepare_episodes(
            load_episodes(source, split, config.hub_config),
            tokenizer,
            config.max_prompt_tokens,
            config.use_rat,
        )
        if max_episodes is not None and len(episodes) > max_episodes:
            episodes = episodes.shuffle(seed=config.seed).select(range(max_episodes))
        if len(episodes):
            splits[split] = (episodes, stats)
    return splits


def _score_and_answer(
    models: dict[str, str],
    splits: Splits,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    answer: set[str],
    max_new_tokens: int,
    batch_size: int,
) -> tuple[Scores, dict[tuple[str, str], list[str]]]:
    """Each model's (chosen, rejected) log-probs per split, and answers from those in `answer`.

    One model in memory at a time.
    """
    gpu = torch.cuda.is_available() if config.use_gpu is None else config.use_gpu
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu and config.precision != "fp32" else torch.float32
    scores: Scores = {}
    answers: dict[tuple[str, str], list[str]] = {}
    for name, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        for split, (episodes, _) in splits.items():
            scores[name, split] = _pair_logps(model, tokenizer, episodes, batch_size)
            if name in answer:
                answers[name, split] = generate_answers(
                    model, tokenizer, episodes["prompt"], max_new_tokens, batch_size
                )
        del model
    return scores, answers


def run_eval(
    run_dir_or_dataset: str,
    config: TrainConfig,
    judge: Judge | None = None,
    *,
    model_dir: str | None = None,
    reference_dir: str | None = None,
    max_episodes: int | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 4,
) -> EvalSummary:
    """Evaluate `model_dir` (default: output_dir/fspo/final) on the held-out splits.

    The reference defaults to the SFT model when SFT was on, else the base model. Without a
    judge nothing is generated and the win rate is left out. Writes eval_summary.json, and
    with a judge eval_answers.jsonl, to `config.output_dir`. `max_episodes` samples that
    many episodes per split (seeded).
    """
    base = resolve_model_path(config.model)
    out = config.output_dir
    model_dir = model_dir or str(out / "fspo" / "final")
    reference_dir = reference_dir or (str(out / "sft" / "final") if config.sft.enabled else base)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    splits = _held_out(run_dir_or_dataset, config, tokenizer, max_episodes)
    models = {"policy": model_dir, "reference": reference_dir, "base": base}
    scores, answers = _score_and_answer(
        models,
        splits,
        tokenizer,
        config,
        {"policy", "base"} if judge else set(),
        max_new_tokens,
        batch_size,
    )

    results = []
    judged = []
    for split, (episodes, stats) in splits.items():
        (pc, pr), (rc, rr), (bc, br) = (scores[n, split] for n in models)
        margins = None
        if judge is not None:
            questions = list(episodes["query_question"])
            trained, untrained = answers["policy", split], answers["base", split]
            margins = judge(list(episodes["persona_description"]), questions, trained, untrained)
            judged += [
                {"split": split, "question": q, "trained": a, "base": b, "margin": m}
                for q, a, b, m in zip(questions, trained, untrained, margins, strict=True)
            ]
        results.append(
            SplitEval(
                split=split,
                episodes=len(episodes),
                data=stats,
                reward_accuracy=ranking_accuracy(pc - rc, pr - rr),
                reward_accuracy_vs_base=ranking_accuracy(pc - bc, pr - br),
                policy_likelihood_accuracy=ranking_accuracy(pc, pr),
                base_likelihood_accuracy=ranking_accuracy(bc, br),
                win_rate=win_rate(margins) if margins else None,
                mean_judge_margin=sum(margins) / len(margins) if margins else None,
            )
        )
    if judged:
        (out / ANSWERS_FILE).write_text("".join(json.dumps(row) + "\n" for row in judged))
    summary = EvalSummary(
        model_dir=model_dir, reference_dir=reference_dir, base_model=base, splits=results
    )
    (out / SUMMARY_FILE).write_text(summary.model_dump_json(indent=1))
    return summary
