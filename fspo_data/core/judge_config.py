"""The judge's settings: layout, mode, refinement, gold pairs and the gate (`stages.judge`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fspo_data.core.config_files import StrictModel


class GateConfig(StrictModel):
    min_accuracy: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Smallest gold accuracy (`pipeline.gold`) a domain's judge may show; below "
        "it the run stops in one line (exit 1) before the judge stage, keeping what is "
        "committed. Empty: no gate (the gold figures are still reported).",
    )
    min_pairs: int = Field(
        default=30,
        gt=0,
        description="Gold pairs a domain needs judged before its accuracy is held to the gate.",
    )


class JudgeConfig(StrictModel):
    layout: Literal["persona_first", "pair_first"] = Field(
        default="persona_first",
        description="Judge prompt layout. 'persona_first' (prompts/judge.txt): the user's "
        "description, then the question and both responses; the engine's prefix cache shares "
        "one user's description across that user's calls. 'pair_first' "
        "(prompts/judge_pair_first.txt): the question, both responses and the instruction, "
        "then the user's description and a short answer cue; the cache shares a pair's text "
        "across every user of the shard who judges it in that order (README: 'The judge's "
        "prefix cache'). Also the evaluation judge's layout.",
    )
    mode: Literal["strict", "calibrated"] = Field(
        default="calibrated",
        description="'strict' drops pairs whose verdict flips with the order (the paper's rule); "
        "'calibrated' cancels the judge's constant position bias and keeps pairs whose debiased "
        "margin clears `min_margin`.",
    )
    min_margin: float = Field(
        default=0.05,
        ge=0.0,
        description="Smallest |debiased margin| (nats) kept in calibrated mode.",
    )
    top_logprobs: int = Field(
        default=20,
        gt=1,
        le=20,
        description="First-token alternatives read for the 'A'/'B' verdict.",
    )
    samples_per_order: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Judge each order k times at `sample_temperature` and take the majority vote "
        "of the sampled letters (for judges without trusted log-probabilities); 1 = one greedy "
        "call read through log-probabilities.",
    )
    sample_temperature: float = Field(
        default=1.0, gt=0.0, description="Temperature of the k samples when samples_per_order > 1."
    )
    refine_rounds: int = Field(
        default=1,
        ge=0,
        le=5,
        description="Persona refinement rounds: pairs the description does not settle get a stated "
        "preference appended, then the user's pairs are relabelled. 0 disables.",
    )
    stated_preferences_per_round: int = Field(
        default=3, ge=1, description="Most stated preferences added to one user per round."
    )
    flag_agreement: float = Field(
        default=0.95,
        gt=0.0,
        le=1.0,
        description="Users agreeing with another user on more than this share of shared pairs "
        "are flagged as near-duplicate labellers.",
    )
    flag_min_shared: int = Field(
        default=5, ge=1, description="Shared pairs needed before two users can be compared."
    )
    gold_pairs_per_user: int = Field(
        default=2,
        ge=0,
        description="Gold pairs (right answer known by construction, `domain.yaml` gold rule) "
        "judged per user by the gold stage, like any other pair; they measure the judge and "
        "never enter episodes. 0 skips the gold stage.",
    )
    gate: GateConfig = Field(
        default=GateConfig(), description="Stop before the judge stage if gold accuracy is low."
    )
