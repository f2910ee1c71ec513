"""The OpenAI backend against a real `vllm` OpenAI server of the embedded model (slow)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fspo_data.backends.embedded import ensure_embedded_model
from fspo_data.backends.openai_backend import OpenAIBackend, OpenAISettings
from fspo_data.core.chat import ChatMessage, ChatRequest

pytestmark = pytest.mark.model

SERVED_NAME = "smollm2"
STARTUP_TIMEOUT_S = 240.0  # seen at 35-150 s on this shared CPU
# VLLM_ENABLE_V1_MULTIPROCESSING=0 is left out: the API server's AsyncLLM always runs its
# engine core in a child process, so the variable would only add a warning.
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_up(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vllm server exited with {process.returncode}:\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(1.0)
    pytest.fail(f"vllm server not up after {STARTUP_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}")


def stop(process: subprocess.Popen[bytes]) -> None:
    # The server runs in its own session, so its engine workers go down with it.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def vllm_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(ensure_embedded_model()),
        "--served-model-name",
        SERVED_NAME,
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "2048",
        "--enforce-eager",
    ]
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **SERVER_ENV},
            start_new_session=True,
        )
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_until_up(process, base_url, log_path)
        yield base_url
    finally:
        stop(process)


def chat(
    content: str, seed: int, max_tokens: int = 24, temperature: float = 0.7, top_logprobs: int = 0
) -> ChatRequest:
    return ChatRequest(
        messages=[ChatMessage(role="user", content=content)],
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        top_logprobs=top_logprobs,
    )


def test_openai_backend_against_vllm_serve(vllm_base_url: str) -> None:
    settings = OpenAISettings(
        base_url=vllm_base_url,
        model=SERVED_NAME,
        api_key_env="FSPO_TEST_UNSET_KEY",
        max_concurrency=4,
        request_timeout_s=120.0,
    )
    backend = OpenAIBackend(settings)
    requests = [
        chat("Name a fruit.", seed=1),
        chat("Say hello to a friend.", seed=2),
        chat("What colour is the sky?", seed=3),
        chat(
            "Answer with one letter, A or B. Which is a colour? A: red B: chair",
            seed=4,
            max_tokens=1,
            temperature=0.0,
            top_logprobs=5,
        ),
    ]
    completions = backend.complete(requests)

    assert all(c.ok for c in completions), [c.error for c in completions]
    assert all(c.text.strip() for c in completions[:3])
    assert all(c.prompt_tokens > 0 and c.completion_tokens > 0 for c in completions)
    judge = completions[3]
    assert judge.completion_tokens == 1
    assert 1 <= len(judge.first_token_logprobs) <= 6  # the chosen token and 5 alternatives
    assert all(logprob <= 0.0 for logprob in judge.first_token_logprobs.values())
    assert backend.stats().requests == 4
