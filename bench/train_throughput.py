"""Training throughput of the FSPO stage: tokens/s and peak memory.

Runs a few IPO (or DPO) steps of the bundled trainer on synthetic FSPO episodes of a chosen
length, with the local model or, with --llama-1b, a ~1B-parameter Llama built from a config
(random weights: the speed is what is measured). Tokens are the non-padding tokens of the
policy's chosen and rejected sequences; the first step (allocation, warm-up) is left out.
Peak memory is torch.cuda.max_memory_allocated on GPU, the process's peak RSS on CPU.

    python bench/train_throughput.py                       # embedded SmolLM2-135M
    python bench/train_throughput.py --llama-1b --steps 6  # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    TrainerCallback,
)

from fspo_data.backends.embedded import resolve_model_path
from fspo_data.train.config import TrainConfig
from fspo_data.train.trainer import make_fspo_trainer


def llama_1b(vocab_size: int, tokenizer: Any) -> LlamaForCausalLM:
    """Llama-3.2-1B's shape (16 layers, 2048 wide, GQA 32/8) over the local tokenizer."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def synthetic_episodes(tokenizer: Any, rows: int, prompt_tokens: int, completion_tokens: int):
    """FSPO-format rows whose prompt and completions have about the requested token counts."""

    def words(n_tokens: int, seed: int) -> str:
        vocab = ["tea", "rain", "walk", "book", "quiet", "music", "city", "garden"]
        return " ".join(vocab[(seed + i) % len(vocab)] for i in range(n_tokens))

    shot = "## Question \n{q}\n## Preferred Response \n{a}\n## Dispreferred Response \n{b}\n\n"
    task = "# Task\nGiven the examples above, generate a preferred response to the following "
    task += "question.\n## Question \nWhat should I do this weekend?\n"
    data = []
    for row in range(rows):
        body, k = "", 1
        while len(tokenizer(text=body + task)["input_ids"]) < prompt_tokens:
            text = shot.format(q=words(8, row + k), a=words(24, k), b=words(24, k + 3))
            body += f"# Example {k}\n{text}"
            k += 1
        completion = "## Preferred Response \n{}\n"
        data.append(
            {
                "prompt": body + task,
                "chosen": completion.format(words(completion_tokens, row)),
                "rejected": completion.format(words(completion_tokens, row + 1)),
            }
        )
    return Dataset.from_list(data)


class StepClock(TrainerCallback):
    """(wall time, tokens seen) at the end of every optimizer step."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    parser.add_argument("--llama-1b", action="store_true", help="a ~1B Llama from a config")
    parser.add_argument("--steps", type=int, default=3, help="measured steps, after one warm-up")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--completion-tokens", type=int, default=48)
    parser.add_argument("--loss", choices=["ipo", "dpo"], default="ipo")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    base = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if args.llama_1b:
        torch.manual_seed(0)
        policy, name = llama_1b(len(tokenizer), tokenizer), "llama-1b (config, random weights)"
    else:
        policy, name = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), base
    reference = copy.deepcopy(policy)

    gpu = torch.cuda.is_available()
    steps = args.steps + 1
    episodes = synthetic_episodes(
        tokenizer, steps * args.batch_size, args.prompt_tokens, args.completion_tokens
    )
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.model_validate(
            {
                "model": base,
                "output_dir": out,
                "use_gpu": gpu,
                "gradient_checkpointing": args.gradient_checkpointing,
                "fspo": {
                    "loss": args.loss,
                    "batch_size": args.batch_size,
                    "max_steps": steps,
                    "warmup_steps": 0,
                },
            }
        )
        trainer = make_fspo_trainer(policy, reference, tokenizer, episodes, config, Path(out))
        trainer.args.save_strategy = "no"  # a checkpoint write is not training throughput
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.train()
    (t0, n0), (t1, n1) = clock.marks[0], clock.marks[-1]
    if gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    result = {
        "model": name,
        "parameters_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 1),
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "precision": "bf16 autocast" if config.precision != "fp32" and gpu else "fp32",
        "loss": args.loss,
        "batch_size": args.batch_size,
        "prompt_tokens": args.prompt_tokens,
        "completion_tokens": args.completion_tokens,
        "measured_steps": len(clock.marks) - 1,
        "seconds_per_step": round((t1 - t0) / (len(clock.marks) - 1), 3),
        "tokens_per_second": round((n1 - n0) / (t1 - t0), 1),
        "peak_memory_gib": round(peak, 2),
        "peak_memory_kind": "cuda max_memory_allocated" if gpu else "process peak RSS",
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
