"""A job whose run_dir is s3://bucket/run on an S3-compatible server started on 127.0.0.1
(moto): killed with SIGKILL twice, resumed, then read by `status`, `export --dry-run`, the
report and the trainer's loader from there; its records are a clean local run's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fspo_data.core import storage
from fspo_data.core.config import JobConfig
from fspo_data.core.shards import committed_entries, file_sha256, read_committed
from fspo_data.core.storage import Location, ObjectPath
from fspo_data.stages import STAGES, plan_shards
from tests.pipeline.test_report import HashEmbedder
from tests.reliability.conftest import (
    instant_config,
    kill_session,
    run_cli,
    stage_ids,
    start_job,
    write_config,
)


def run_ids(run: Location, config: JobConfig) -> dict[str, list[str]]:
    """Every planned shard committed and whole (size, hash), nothing else listed, no duplicate
    id; the record ids per stage."""
    ids = {}
    for stage in STAGES:
        planned = {spec.name for spec in plan_shards(stage, config)}
        entries = committed_entries(run, stage.name)
        assert set(entries) == planned, stage.name
        listed = storage.file_sizes(run / stage.name, "*.parquet")
        assert {path.name: size for path, size in listed.items()} == {
            e.file: e.bytes for e in entries.values()
        }, stage.name
        for entry in entries.values():
            assert file_sha256(run / stage.name / entry.file) == entry.sha256
        if planned:
            table, _ = read_committed(run, stage.name)
            ids[stage.name] = table.column(stage.record_type.id_field).to_pylist()
            assert len(ids[stage.name]) == len(set(ids[stage.name])), f"duplicates in {stage}"
    return ids


def kill_when_written(config_path: Path, folder: ObjectPath, timeout_s: float = 300) -> None:
    """Start the job and SIGKILL it as soon as a shard object appears under `folder`: most
    often after the shard's upload and before a manifest lists it."""
    job = start_job(["run", str(config_path), "--quiet"])
    started = time.monotonic()
    try:
        while job.poll() is None and not storage.list_files(folder, "*.parquet"):
            assert time.monotonic() - started < timeout_s, "the job made no progress"
    finally:
        kill_session(job)
    assert job.returncode != 0, "the job finished before the kill"


@pytest.mark.slow
def test_job_on_s3_survives_kills_and_is_read_from_there(tmp_path, s3_bucket):
    counts = instant_config(tmp_path).counts.model_dump() | {"users": 18, "questions": 8}
    reference = instant_config(tmp_path / "reference", counts=counts)
    code, err = run_cli("run", str(write_config(tmp_path / "local.yaml", reference)), "--quiet")
    assert code == 0, err

    run = s3_bucket / "run"
    config = instant_config(run, counts=counts)
    config_path = write_config(tmp_path / "s3.yaml", config)
    kill_when_written(config_path, run / "personas")
    kill_when_written(config_path, run / "judge")
    code, err = run_cli("run", str(config_path), "--quiet")
    assert code == 0, err

    expected = stage_ids(reference.run_dir)
    found = run_ids(run, config)
    for stage, ids in expected.items():
        assert sorted(found.get(stage, [])) == sorted(ids), stage
    assert storage.is_file(run / "config.yaml") and storage.is_file(run / "summary.json")

    code, err = run_cli("status", str(run))
    assert code == 0, err
    out = tmp_path / "export"
    code, err = run_cli(
        "export", str(run), "--repo-id", "org/x", "--dry-run", "--out-dir", str(out)
    )
    assert code == 0, err
    local = run_cli("export", str(reference.run_dir), "--repo-id", "org/x", "--dry-run")
    assert local[0] == 0, local[1]
    assert sorted(p.name for p in out.rglob("*.parquet")) == sorted(
        p.name for p in (reference.run_dir / "export").rglob("*.parquet")
    )

    from fspo_data.pipeline.report import build_report
    from fspo_data.train.data import load_episodes

    result = build_report(run, HashEmbedder(), sample_size=50, flag_settings=config.stages.judge)
    assert result.html_path == run / "report" / "diversity.html"
    assert storage.read_text(result.html_path).startswith("<!doctype html>")
    train = load_episodes(str(run), "train")
    assert sorted(train["episode_uuid"]) == sorted(
        load_episodes(str(reference.run_dir), "train")["episode_uuid"]
    )
