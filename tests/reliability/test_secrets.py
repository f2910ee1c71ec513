"""The endpoint's API key never leaves the environment: no file, no log line, no output.

tests/pipeline/test_export.py checks the export alone; this runs what a user runs, each
command a process of its own with the key in its environment: `fspo-data run` on an
OpenAI-compatible endpoint that echoes the Authorization header in its error bodies (so
the key comes back in responses the client must handle), then `report` and `export`. The
key must then appear in no file of the run folder or the export, in no Ray log of the job and
in nothing the commands printed.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspo_data.core.config import JobConfig
from tests.backends.fake_openai_server import FakeOpenAIServer, FaultScript
from tests.reliability.conftest import kill_session, openai_config, start_job, write_config

pytestmark = pytest.mark.slow
KEY_ENV = "FSPO_SECRET_TEST_API_KEY"
# Retryable faults echo the key and are retried; a 401 echoes it and fails its request.
FAULTS = FaultScript(rate=0.2, kinds=("429", "500", "401"), seed=5, echo_auth_in_errors=True)


def run_command(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """`fspo-data ARGS` in a subprocess; its exit code and everything it printed."""
    job = start_job(list(args), env)
    try:
        out, err = job.communicate(timeout=300)
    finally:
        kill_session(job)
    return job.returncode, out + err


def files_holding(needle: bytes, *folders: Path) -> list[Path]:
    """Regular files under `folders` whose bytes contain `needle` (sockets and pipes skipped)."""
    return [
        path
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    ]


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """The job's own Ray temp folder (RAY_TMPDIR), so only this job's Ray logs are scanned;
    short, because Ray's Unix sockets live in it."""
    with tempfile.TemporaryDirectory(prefix="fspo-ray-", ignore_cleanup_errors=True) as tmp:
        yield Path(tmp)


def endpoint_config(run_dir: Path, base_url: str) -> JobConfig:
    """The reliability suite's endpoint job, reading the key from KEY_ENV; min_margin 0 keeps
    every pair the fake endpoint's fixed logprobs judge, so there are episodes to export."""
    config = openai_config(run_dir, base_url, api_key_env=KEY_ENV, max_retries=10)
    return JobConfig.model_validate(config.model_dump() | {"stages": {"judge": {"min_margin": 0}}})


def test_the_api_key_reaches_no_file_log_or_output(tmp_path: Path, ray_tmp: Path) -> None:
    key = f"sk-fspo-secret-{secrets.token_hex(16)}"
    env = {KEY_ENV: key, "RAY_TMPDIR": str(ray_tmp)}
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    with FakeOpenAIServer(FAULTS) as server:
        config = write_config(tmp_path / "job.yaml", endpoint_config(run_dir, server.base_url))
        outputs = [run_command("run", str(config), "--quiet", env=env)]
    assert server.counters.auth_headers == {f"Bearer {key}"}  # the job really sent the key
    assert server.counters.faults["401"] and server.counters.faults["500"]
    outputs.append(run_command("report", str(run_dir), env=env))
    export = ("--repo-id", "org/fspo-secret", "--dry-run", "--out-dir", str(export_dir))
    outputs.append(run_command("export", str(run_dir), *export, env=env))
    for code, printed in outputs:
        assert code == 0, printed
        assert key not in printed
    assert (export_dir / "README.md").is_file() and (run_dir / "report").is_dir()
    ray_logs = ray_tmp / "ray"
    assert list(ray_logs.glob("session_*/logs/*")), "the job's Ray logs are not where expected"
    # The endpoint's echoes reached the workers' logs, scrubbed: the scan looks where a
    # leak would land.
    assert files_holding(b"(got Bearer ***)", ray_logs)
    assert files_holding(key[-32:].encode(), run_dir, export_dir, ray_logs) == []
