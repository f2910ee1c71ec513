"""Run locations: URIs parsed in one line, and shards on an S3-compatible server (moto on
127.0.0.1) appear only whole and are reconciled against the listing as on local disk."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fspo_data.core import storage
from fspo_data.core.config import JobConfig
from fspo_data.core.shards import (
    Manifest,
    file_sha256,
    load_manifest,
    read_committed,
    reconcile_with_disk,
    save_manifest,
    write_shard,
)
from fspo_data.core.storage import ObjectPath, location


def test_locations_parse_and_refuse_in_one_line():
    assert location("runs/x") == Path("runs/x")
    run = location("s3://bucket/a/run/")
    assert run == ObjectPath("s3", "bucket", "a/run") and str(run) == "s3://bucket/a/run"
    assert str(run / "judge" / "x.parquet") == "s3://bucket/a/run/judge/x.parquet"
    assert (run / "judge").name == "judge" and run.parent == ObjectPath("s3", "bucket", "a")
    assert str(location("gs://b")) == "gs://b"
    with pytest.raises(ValueError, match=r"^unsupported scheme ftp:// \(use s3://, gs://"):
        location("ftp://host/run")
    with pytest.raises(ValueError, match=r"^s3:///run: no bucket"):
        location("s3:///run")


def test_config_takes_a_uri_and_writes_it_back():
    config = JobConfig.model_validate({"run_dir": "s3://bucket/run"})
    assert config.run_dir == ObjectPath("s3", "bucket", "run")
    assert config.model_dump(mode="json")["run_dir"] == "s3://bucket/run"
    local = JobConfig.model_validate({"run_dir": "runs/x"})
    assert local.run_dir == Path("runs/x") and local.model_dump()["run_dir"] == Path("runs/x")


def test_a_failed_write_uploads_nothing(s3_bucket):
    """The writer fails halfway: nothing is listed. (pyarrow's own output stream, closed by
    its `with` on the error, would have committed the half it had.)"""
    folder = s3_bucket / "failed"

    def half_then_fail(sink: storage.Sink) -> None:
        sink.write(b"half a shard")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage.write_atomic(folder / "d-00000.parquet", half_then_fail)
    assert storage.list_files(folder) == []


def test_a_shard_object_is_never_listed_partly_written(s3_bucket):
    """A shard of several upload parts, listed over and over while it uploads: whenever it is
    listed, it has its full size."""
    folder = s3_bucket / "whole"
    payload = os.urandom(12_000_000)  # over pyarrow's first part size: a multipart upload
    writer = threading.Thread(target=storage.write_bytes_atomic, args=(folder / "big", payload))
    seen = []
    writer.start()
    while writer.is_alive():
        seen.append(storage.file_sizes(folder))
    writer.join()
    seen.append(storage.file_sizes(folder))
    assert seen[-1] == {folder / "big": len(payload)}
    assert all(listing in ({}, seen[-1]) for listing in seen)
    assert storage.read_bytes(folder / "big") == payload


def test_shards_and_manifest_on_s3_are_reconciled_like_local_ones(s3_bucket):
    stage_dir = s3_bucket / "reconcile" / "s"
    manifest = Manifest(stage="s", schema="x", config_fingerprint="f", package_versions={})
    manifest.shards["d-00000"] = write_shard(stage_dir, "d-00000", pa.table({"a": [1]}))
    manifest.shards["d-00001"] = write_shard(stage_dir, "d-00001", pa.table({"a": [2]}))
    entry = manifest.shards["d-00000"]
    assert entry.bytes == storage.size(stage_dir / entry.file)
    assert entry.sha256 == file_sha256(stage_dir / entry.file)
    save_manifest(stage_dir, manifest)
    # Written after the last manifest save (a kill between the PUT and the manifest), and a
    # committed shard replaced by other content.
    write_shard(stage_dir, "d-00002", pa.table({"a": [3]}))
    write_shard(stage_dir, "d-00001", pa.table({"a": [9, 9]}))
    loaded = load_manifest(stage_dir)
    assert loaded == manifest
    notes = reconcile_with_disk(stage_dir, loaded)
    assert set(loaded.shards) == {"d-00000"} and len(notes) == 3
    assert storage.list_files(stage_dir, "*.parquet") == [stage_dir / "d-00000.parquet"]
    save_manifest(stage_dir, loaded)
    table, _ = read_committed(stage_dir.parent, "s")
    assert table.to_pydict() == {"a": [1]}
    assert storage.scan_parquet(stage_dir / "d-00000.parquet").collect().item() == 1
    with storage.open_input(stage_dir / "d-00000.parquet") as handle:
        assert pq.read_table(handle).num_rows == 1
