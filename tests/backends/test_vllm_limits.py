"""The limits the `vllm` backend checks without importing vLLM, against vLLM's own code: a
vLLM upgrade that moves them fails here instead of in an engine actor."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from fspo_data.backends.vllm_engine import MAX_LOGPROBS, VLLM_DTYPES, VLLM_SAMPLING
from fspo_data.core.config import SamplingConfig

pytestmark = pytest.mark.slow  # importing vLLM takes seconds


@pytest.fixture(scope="module")
def vllm() -> object:
    return pytest.importorskip("vllm")


def test_the_dtype_names_are_vllm_s(vllm: object) -> None:
    from vllm.config import model as model_config

    assert set(VLLM_DTYPES) == set(get_args(model_config.ModelDType))
    assert set(VLLM_DTYPES) == {"auto"} | set(model_config._STR_DTYPE_TO_TORCH_DTYPE)


def test_the_engine_takes_max_logprobs(vllm: object) -> None:
    from vllm.engine.arg_utils import EngineArgs

    # VLLMBackend passes it to LLM(), which hands its keywords to EngineArgs.
    assert "max_logprobs" in {f.name for f in dataclasses.fields(EngineArgs)}


def test_sampling_params_take_exactly_the_ranges_checked(vllm: object) -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    top = VLLM_SAMPLING.max_temperature
    SamplingParams(temperature=top, top_p=1.0, max_tokens=1, logprobs=MAX_LOGPROBS)
    SamplingParams(temperature=0.0, top_p=1e-6)
    for refused in (
        {"temperature": top + 1e-6},
        {"temperature": -1e-6},  # below the config's own bound, ge=0
        {"top_p": 1.0 + 1e-6},  # above the config's own bound, le=1
        {"max_tokens": 0},  # below the config's own bound, gt=0
    ):
        with pytest.raises(VLLMValidationError):
            SamplingParams(**refused)
    bounds = {m.__class__.__name__: m for m in SamplingConfig.model_fields["top_p"].metadata}
    assert (bounds["Gt"].gt, bounds["Le"].le) == (0.0, 1.0)
