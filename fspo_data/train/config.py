"""The trainer's config: YAML validated by pydantic, every field described, unknown keys refused.

Defaults are the FSPO paper's (DESIGN.md section 6). `load_train_config` turns any problem
into a `ConfigError` whose message is one line naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fspo_data.core.config_files import StrictModel, load_yaml_model
from fspo_data.core.model_config import EMBEDDED_MODEL


class StageConfig(StrictModel):
    """Optimisation settings shared by the SFT and FSPO stages."""

    learning_rate: float = Field(default=1e-6, gt=0, description="Peak learning rate.")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the train split.")
    max_steps: int | None = Field(
        default=None, gt=0, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(
        default=4, gt=0, description="Episodes per optimizer step, summed over all workers."
    )
    gradient_accumulation_steps: int = Field(
        default=1, gt=0, description="Micro-batches accumulated per optimizer step."
    )
    optimizer: Literal["rmsprop", "adamw_torch"] = Field(
        default="rmsprop", description="transformers optimizer name; the paper uses RMSprop."
    )
    warmup_steps: int = Field(
        default=150, ge=0, description="Linear warm-up steps, then a constant learning rate."
    )
    max_grad_norm: float = Field(default=10.0, gt=0, description="Gradient clipping norm.")
    save_steps: int = Field(
        default=500, gt=0, description="Save a resumable checkpoint every this many steps."
    )


class SFTStageConfig(StageConfig):
    enabled: bool = Field(default=True, description="Run supervised fine-tuning before FSPO.")
    learning_rate: float = Field(default=1e-7, gt=0, description="Peak learning rate.")
    include_rejected: bool = Field(
        default=False,
        description="Also train on the rejected completions (as extra targets for the prompt).",
    )


class FSPOStageConfig(StageConfig):
    loss: Literal["ipo", "dpo"] = Field(
        default="ipo", description="Preference loss: 'ipo' (the paper's) or 'dpo' (sigmoid)."
    )
    ipo_margin: Literal["summed", "token_mean"] = Field(
        default="summed",
        description="IPO's log-ratio margin: 'summed' over completion tokens (the paper and the "
        "DPO reference code) or 'token_mean', TRL's built-in loss_type='ipo', which divides "
        "each completion's log-ratio by its token count.",
    )
    beta: float = Field(
        default=0.01, gt=0, description="KL strength; IPO's target margin is 1/(2 beta)."
    )


class TrainConfig(StrictModel):
    model: str = Field(
        default=EMBEDDED_MODEL,
        description="Base model: a local Hugging Face folder or 'embedded:SmolLM2-135M-Instruct'.",
    )
    output_dir: Path = Field(
        default=Path("runs/train"),
        description="Where checkpoints, final models, the summary and the loss plot go.",
    )
    hub_config: str | None = Field(
        default=None,
        description="Config (domain) name when the episodes come from a Hub dataset with several.",
    )
    seed: int = Field(default=0, description="Seed for data order and initialisation.")
    max_prompt_tokens: int = Field(
        default=8192,
        gt=0,
        description="Longest prompt in tokens; whole shots are dropped from the front to fit, "
        "the query never.",
    )
    use_rat: bool = Field(
        default=False,
        description="Train on the rationalization (RAT) columns rat_prompt/rat_chosen/"
        "rat_rejected; the episodes must have them.",
    )
    num_workers: int = Field(
        default=1,
        gt=0,
        description="Training processes; more than 1 runs data-parallel under Ray Train.",
    )
    use_gpu: bool | None = Field(
        default=None, description="Train on GPUs; empty means: when CUDA is visible here."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="'bf16' autocast with fp32 master weights, or 'fp32'; 'auto' picks bf16 on "
        "GPU and fp32 on CPU.",
    )
    gradient_checkpointing: bool = Field(
        default=True, description="Recompute activations in the backward pass to save memory."
    )
    keep_checkpoints: int = Field(
        default=2, gt=0, description="Checkpoints kept per stage; older ones are deleted."
    )
    sft: SFTStageConfig = Field(default=SFTStageConfig(), description="Stage 1: SFT.")
    fspo: FSPOStageConfig = Field(default=FSPOStageConfig(), description="Stage 2: IPO/DPO.")

    @model_validator(mode="after")
    def _batches_divide(self) -> TrainConfig:
        for name, stage in (("sft", self.sft), ("fspo", self.fspo)):
            per_step = self.num_workers * stage.gradient_accumulation_steps
            if stage.batch_size % per_step:
                raise ValueError(
                    f"{name}.batch_size ({stage.batch_size}) is not a multiple of num_workers x "
                    f"gradient_accumulation_steps ({per_step})"
                )
        return self


def load_train_config(path: Path | str) -> TrainConfig:
    return load_yaml_model(path, TrainConfig)
