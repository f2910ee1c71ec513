"""Shared fixtures: a scripted backend (test double), helpers to build a run folder, and an
S3-compatible server on 127.0.0.1 (moto's server mode)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pytest

from fspo_data.core.chat import BackendStats, ChatRequest, Completion
from fspo_data.core.config import JobConfig
from fspo_data.core.records import Record, to_table
from fspo_data.core.shards import Manifest, save_manifest, write_shard
from fspo_data.core.storage import ObjectPath

TESTS_DIR = Path(__file__).parent


class ScriptedBackend:
    """Answers each request with `script(request)`; records what it was asked."""

    model_name = "scripted"

    def __init__(self, script: Callable[[ChatRequest], Completion]) -> None:
        self.script = script
        self.requests: list[ChatRequest] = []

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        self.requests.extend(requests)
        return [self.script(r) for r in requests]

    def stats(self) -> BackendStats:
        return BackendStats(requests=len(self.requests))


def echo_text(request: ChatRequest) -> Completion:
    """A deterministic, long-enough text derived from the prompt."""
    digest = hashlib.sha256(request.messages[-1].content.encode()).hexdigest()[:12]
    return Completion(
        text=f"Line one about {digest}, long enough to pass checks.\nSecond view {digest[:4]}"
    )


def tables(**records: Sequence[Record]) -> dict[str, pa.Table]:
    """A shard's inputs as the orchestrator hands them to `Stage.run`: stage -> table."""
    return {stage: to_table(rows, type(rows[0])) for stage, rows in records.items()}


def write_stage(run_dir: Path, stage: str, name: str, records: list[Record]) -> None:
    """Commit `records` as shard `name` of `stage`, as the orchestrator would."""
    stage_dir = run_dir / stage
    record_type = type(records[0])
    entry = write_shard(stage_dir, name, to_table(records, record_type))
    manifest = Manifest(stage=stage, schema="", config_fingerprint="test", package_versions={})
    if (stage_dir / "manifest.json").exists():
        manifest = Manifest.model_validate_json((stage_dir / "manifest.json").read_text())
    manifest.shards[name] = entry
    save_manifest(stage_dir, manifest)


@pytest.fixture
def job_config(tmp_path: Path) -> JobConfig:
    return JobConfig(run_dir=tmp_path / "run")


@pytest.fixture(scope="session")
def s3_bucket() -> Iterator[ObjectPath]:
    """`s3://bucket` on a moto server this session starts on 127.0.0.1, with the environment
    (AWS_ENDPOINT_URL, keys, region) set as a user would, so jobs started from here see it too.
    One server per session: a process keeps one client per bucket."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    store = fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    store.create_dir("bucket")
    yield ObjectPath("s3", "bucket")
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()
