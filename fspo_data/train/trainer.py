"""The bundled FSPO trainer: SFT on the chosen completions, then IPO or DPO over episodes.

Both stages are TRL trainers writing under `output_dir/{sft,fspo}`: a checkpoint every
`save_steps`, the final model in `final/`. A rerun resumes each stage from its last
checkpoint (a finished stage reloads and does no steps). The FSPO reference model is a
frozen copy of the SFT model (of the base model when SFT is off). With `num_workers > 1`
the same code runs data-parallel in Ray Train workers; rank 0 writes the summary, which
then needs `output_dir` on storage the driver sees too.

This module imports torch, transformers and TRL: import it only where training happens.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset, concatenate_datasets
from pydantic import BaseModel, ConfigDict
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerState,
)
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from fspo_data.backends.embedded import resolve_model_path
from fspo_data.core.config_files import dump_config
from fspo_data.train.config import StageConfig, TrainConfig
from fspo_data.train.data import TruncationStats, load_episodes, prepare_episodes
from fspo_data.train.loss import ipo_loss

SUMMARY_FILE = "train_summary.json"
LOSS_PLOT = "loss.png"


class StageSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Literal["sft", "fspo"]
    steps: int
    first_loss: float | None
    last_loss: float | None
    min_loss: float | None
    loss_curve: list[tuple[int, float]]
    tokens_seen: int
    tokens_per_second: float
    train_seconds: float
    resumed_from: str | None
    model_dir: str


class TrainSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str
    model_dir: str
    reference_dir: str
    output_dir: str
    device: str
    num_workers: int
    data: TruncationStats
    sft: StageSummary | None
    fspo: StageSummary
    loss_plot: str


class SummedIPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with the paper's IPO: the margin sums log-ratios over completion tokens.

    TRL's own `loss_type="ipo"` averages them per token (see loss.py). Only the loss is
    replaced; data, collation, the reference forward and checkpoints are TRL's.
    """

    def _compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool
    ) -> torch.Tensor:
        if return_outputs:
            raise NotImplementedError("SummedIPOTrainer computes the loss only")
        mode = "train" if self.model.training else "eval"
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=labels,
            fused_lm_head=True,
            use_cache=False,
        )
        # TRL's fused head returns per-token log-probs, zero outside the completion.
        chosen, rejected = outputs.log_probs.sum(dim=1).chunk(2, dim=0)
        ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model, inputs)
        loss = ipo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta).mean()
        margins = self.beta * ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()
        margins = self.accelerator.gather_for_metrics(margins)
        self._metrics[mode]["rewards/margins"].append(margins.mean().item())
        self._metrics[mode]["rewards/accuracies"].append((margins > 0).float().mean().item())
        return loss


def _fspo_trainer_class(config: TrainConfig) -> tuple[type[DPOTrainer], str]:
    """The trainer class and TRL loss_type for the configured loss."""
    if config.fspo.loss == "dpo":
        return DPOTrainer, "sigmoid"
    if config.fspo.ipo_margin == "summed":
        return SummedIPOTrainer, "ipo"
    return DPOTrainer, "ipo"


def _use_gpu(config: TrainConfig) -> bool:
    return torch.cuda.is_available() if config.use_gpu is None else config.use_gpu


def _stage_args(stage: StageConfig, config: TrainConfig, stage_dir: Path) -> dict[str, Any]:
    """TrainingArguments shared by both stages."""
    gpu = _use_gpu(config)
    per_device = stage.batch_size // (config.num_workers * stage.gradient_accumulation_steps)
    return {
        "output_dir": str(stage_dir),
        "learning_rate": stage.learning_rate,
        "num_train_epochs": stage.epochs,
        "max_steps": stage.max_steps or -1,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": stage.gradient_accumulation_steps,
        "optim": stage.optimizer,
        # The DPO reference code warms up linearly, then holds the learning rate.
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": stage.warmup_steps,
        "max_grad_norm": stage.max_grad_norm,
        "save_strategy": "steps",
        "save_steps": stage.save_steps,
        "save_total_limit": config.keep_checkpoints,
        "logging_steps": 1,
        "include_num_input_tokens_seen": "non_padding",
        "report_to": "none",
        "seed": config.seed,
        "use_cpu": not gpu,
        # Autocast over fp32 master weights: at lr 1e-6 pure-bf16 weights would not move.
        "bf16": config.precision == "bf16" or (config.precision == "auto" and gpu),
        "gradient_checkpointing": config.gradient_checkpointing,
    }


def _fit(trainer: Trainer, stage: Literal["sft", "fspo"], stage_dir: Path) -> StageSummary:
    last = get_last_checkpoint(str(stage_dir)) if stage_dir.is_dir() else None
    tokens_before = (
        TrainerState.load_from_json(f"{last}/trainer_state.json").num_input_tokens_seen
        if last
        else 0
    )
    result = trainer.train(resume_from_checkpoint=last)
    seconds = result.metrics["train_runtime"]
    session_tokens = trainer.state.num_input_tokens_seen - tokens_before
    final = stage_dir / "final"
    trainer.save_model(str(final))
    # Only rank 0 writes the model; the next stage loads it on every rank.
    trainer.accelerator.wait_for_everyone()
    curve = [(int(h["step"]), float(h["loss"])) for h in trainer.state.log_history if "loss" in h]
    losses = [loss for _, loss in curve]
    return StageSummary(
        stage=stage,
        steps=trainer.state.global_step,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        min_loss=min(losses) if losses else None,
        loss_curve=curve,
        tokens_seen=trainer.state.num_input_tokens_seen,
        tokens_per_second=session_tokens / seconds if seconds > 0 else 0.0,
        train_seconds=seconds,
        resumed_from=last,
        model_dir=str(final),
    )


def _load_model(path: str) -> PreTrainedModel:
    # fp32 master weights on every device; `bf16` in the stage args adds autocast.
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def run_sft(
    base: str,
    tokenizer: PreTrainedTokenizerBase,
    episodes: Dataset,
    config: TrainConfig,
    stage_dir: Path,
) -> StageSummary:
    """Stage 1: supervised fine-tuning on prompt -> chosen (and rejected, if configured)."""
    targets = ["chosen", "rejected"] if config.sft.include_rejected else ["chosen"]
    rows = concatenate_datasets(
        [episodes.select_columns(["prompt", t]).rename_column(t, "completion") for t in targets]
    )
    args = SFTConfig(
        **_stage_args(config.sft, config, stage_dir),
        max_length=None,  # prompts are already fitted; TRL's keep_start would cut the completion
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=_load_model(base), args=args, train_dataset=rows, processing_class=tokenizer
    )
    return _fit(trainer, "sft", stage_dir)


def make_fspo_trainer(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    episodes: Dataset,
    config: TrainConfig,
    stage_dir: Path,
) -> DPOTrainer:
    """A TRL preference trainer over prompt/chosen/rejected rows, set up as the config says."""
    trainer_class, loss_type = _fspo_trainer_class(config)
    args = DPOConfig(
        **_stage_args(config.fspo, config, stage_dir),
        loss_type=[loss_type],
        beta=config.fspo.beta,
        max_length=None,  # prompts are already fitted; TRL's keep_start would cut the completion
    )
    reference.requires_grad_(False).eval()
    if args.bf16:
        # Frozen, so bf16 weights lose nothing and halve its memory.
        reference = reference.to(torch.bfloat16)
    return trainer_class(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=episodes,
        processing_class=tokenizer,
    )


def run_fspo(
    start: str,
    tokenizer: PreTrainedTokenizerBase,
    episodes: Dataset,
    config: TrainConfig,
    stage_dir: Path,
) -> StageSummary:
    """Stage 2: IPO/DPO from `start` (the SFT model), against a frozen copy of it."""
    policy = _load_model(start)
    trainer = make_fspo_trainer(
        policy, copy.deepcopy(policy), tokenizer, episodes, config, stage_dir
    )
    return _fit(trainer, "fspo", stage_dir)


def train_process(source: str, config: TrainConfig, write_outputs: bool = True) -> TrainSummary:
    """Both stages in this process (one Ray Train worker, or the only process)."""
    base = resolve_model_path(config.model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    episodes, stats = prepare_episodes(
        load_episodes(source, "train", config.hub_config),
        tokenizer,
        config.max_prompt_tokens,
        config.use_rat,
    )
    if len(episodes) == 0:
        raise ValueError(f"{source}: no train episode left to train on: {stats.model_dump()}")
    out = config.output_dir
    sft = run_sft(base, tokenizer, episodes, config, out / "sft") if config.sft.enabled else None
    reference = sft.model_dir if sft else base
    fspo = run_fspo(reference, tokenizer, episodes, config, out / "fspo")
    summary = TrainSummary(
        base_model=base,
        model_dir=fspo.model_dir,
        reference_dir=reference,
        output_dir=str(out),
        device="cuda" if _use_gpu(config) else "cpu",
        num_workers=config.num_workers,
        data=stats,
        sft=sft,
        fspo=fspo,
        loss_plot=str(out / LOSS_PLOT),
    )
    if write_outputs:
        (out / SUMMARY_FILE).write_text(summary.model_dump_json(indent=1))
        plot_losses(summary, out / LOSS_PLOT)
    return summary


def plot_losses(summary: TrainSummary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in (summary.sft, summary.fspo) if s is not None]
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        steps, losses = zip(*stage.loss_curve, strict=True) if stage.loss_curve else ((), ())
        ax.plot(steps, losses, marker="." if len(steps) < 50 else None)
        ax.set_title(f"{stage.stage}: {stage.steps} steps")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ray_worker(loop_config: dict[str, Any]) -> None:
    import ray.train

    config = TrainConfig.model_validate(loop_config["config"])
    rank = ray.train.get_context().get_world_rank()
    train_process(loop_config["source"], config, write_outputs=rank == 0)


def run_train(run_dir_or_dataset: str, config: TrainConfig) -> TrainSummary:
    """Train on a run directory's episodes (or a Hub dataset id or folder); see module doc.

    With `num_workers > 1` this joins the Ray the caller initialised, or starts a local one.
    """
    # Ray workers may start in another directory and on another machine: make every local
    # path absolute and decide the device here, where ScalingConfig is built.
    config = config.model_copy(
        update={"output_dir": config.output_dir.resolve(), "use_gpu": _use_gpu(config)}
    )
    if Path(config.model).exists():
        config = config.model_copy(update={"model": str(Path(config.model).resolve())})
    if Path(run_dir_or_dataset).exists():
        run_dir_or_dataset = str(Path(run_dir_or_dataset).resolve())
    config.output_dir.mkdir(parents=True, exist_ok=True)
    (config.output_dir / "config.yaml").write_text(dump_config(config))
    if config.num_workers == 1:
        return train_process(run_dir_or_dataset, config)

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():  # the caller may have joined a cluster already
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray 2.60 writes a token in ~
        ray.init(include_dashboard=False, logging_level="WARNING")
    TorchTrainer(
        _ray_worker,
        train_loop_config={"source": run_dir_or_dataset, "config": config.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=_use_gpu(config)),
        run_config=RunConfig(name="fspo-train", storage_path=str(config.output_dir / "ray")),
    ).fit()
    return TrainSummary.model_validate_json((config.output_dir / SUMMARY_FILE).read_text())
