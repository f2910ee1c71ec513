"""The thresholds of the verdict lines (`pipeline.verdicts`), the job config's `checks:`.

A section of its own because nothing but reading depends on it: it is left out of the
config fingerprint and of every stage's recipe, so changing a threshold recomputes nothing.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from fspo_data.core.config_files import StrictModel


class ChecksConfig(StrictModel):
    """Thresholds of the verdict lines (`pipeline.verdicts`): each check is green, amber past
    its amber threshold, red past its red one. Reading only: no stage or record depends on them."""

    agreement_amber: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Personalization: mean cross-user agreement on shared pairs (the report's "
        "`mean_agreement`) above which the check is amber. 1.0: every user labels alike, the "
        "labels follow the judge's taste, not the persona; users with opposite tastes agree "
        "on about half.",
    )
    agreement_red: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Mean agreement above which personalization is red (most users are near-"
        "duplicate labellers, cf. `stages.judge.flag_agreement`).",
    )
    gold_amber: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Gold accuracy (overall and the worst domain) below which the check is amber.",
    )
    gold_red: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="Gold accuracy below which the check is red (chance is 0.5); "
        "`stages.judge.gate.min_accuracy`, when set, takes its place.",
    )
    slot_a_amber: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Position bias: distance of the first-slot win rate from 0.5 beyond which "
        "the check is amber.",
    )
    slot_a_red: float = Field(
        default=0.25,
        ge=0.0,
        le=0.5,
        description="Distance of the first-slot win rate from 0.5 beyond which the check is red "
        "(the judge picks one slot in more than 3 of 4 verdicts).",
    )
    entropy_amber: float = Field(
        default=0.25,
        ge=0.0,
        description="Label entropy after refinement (nats) above which the check is amber "
        "(paper 0.13; a coin flip is ln 2 = 0.693).",
    )
    entropy_red: float = Field(
        default=0.5,
        ge=0.0,
        description="Label entropy after refinement (nats) above which the check is red.",
    )
    truncated_amber: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Truncated texts: share of generated texts cut at max_tokens (each is "
        "asked again or dropped, never kept) above which the check is amber.",
    )
    truncated_red: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Share of generated texts cut at max_tokens above which the check is red.",
    )
    similarity_amber: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Candidate similarity (the report's mean pairwise cosine of a question's "
        "candidates) above which the check is amber; the paper measured 0.78 with view "
        "steering and 0.71 with an ensemble plus views.",
    )
    similarity_red: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Candidate similarity above which the check is red; the paper measured "
        "0.94 to 0.96 for one unsteered model.",
    )

    @model_validator(mode="after")
    def _amber_before_red(self) -> ChecksConfig:
        # Gold accuracy is worse when lower, every other figure when higher.
        pairs = [("gold_red", "gold_amber")] + [
            (f"{name}_amber", f"{name}_red")
            for name in ("agreement", "slot_a", "entropy", "truncated", "similarity")
        ]
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} must not exceed {high}")
        return self
