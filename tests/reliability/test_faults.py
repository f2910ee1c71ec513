"""Model faults: an endpoint down for longer than the retry budget stops the run cleanly and
keeps its committed shards, and re-running the printed command finishes it as if nothing had
happened; calls that fail for good within a shard drop only their records, counted."""

from __future__ import annotations

import errno
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fspo_data import cli
from fspo_data.backends.instant import InstantBenchmarkDouble
from fspo_data.core.chat import BackendStats, ChatMessage, ChatRequest, Completion
from fspo_data.core.config import JobConfig
from fspo_data.core.shards import (
    MANIFEST,
    Manifest,
    OutputWriteError,
    ShardEntry,
    file_sha256,
    load_manifest,
    save_manifest,
    write_shard,
)
from fspo_data.pipeline.tally import CallTally, ModelUnavailable
from fspo_data.pipeline.workers import execute_shard
from fspo_data.stages import STAGES, STAGES_BY_NAME, plan_shards
from fspo_data.stages.base import StageContext
from tests.backends.fake_openai_server import FakeOpenAIServer, Fault
from tests.reliability.conftest import (
    assert_run_is_whole,
    committed_shards,
    instant_config,
    openai_config,
    run_cli,
    write_config,
)


class OutageServer(FakeOpenAIServer):
    """The fake endpoint, answering HTTP 500 to every call from call number `down_from` on.

    Counting calls, not watching the clock, puts the outage exactly between two shards, so
    the one shard it hits fails whole and no shard is committed half-answered.
    """

    down_from: int | None = None

    def _pick_fault(self, index: int) -> Fault | None:
        if self.down_from is not None and index >= self.down_from:
            return "500"
        return super()._pick_fault(index)


def shard_requests(run_dir: Path, stage: str) -> dict[str, int]:
    """Model requests each committed shard of `stage` made (its `*_requests` counters)."""
    manifest = load_manifest(run_dir / stage)
    shards = sorted(manifest.shards.items()) if manifest else []
    return {
        name: sum(n for key, n in entry.counters.items() if key.endswith("_requests"))
        for name, entry in shards
    }


def calls_before(run_dir: Path, stage: str, shard: str) -> int:
    """Calls made before shard `shard` of `stage` starts, read from a finished run of the same
    config: one replica runs the stages in order, and a stage's shards in plan order."""
    names = [s.name for s in STAGES]
    earlier = names[: names.index(stage)]
    calls = sum(sum(shard_requests(run_dir, name).values()) for name in earlier)
    requests = shard_requests(run_dir, stage)
    return calls + sum(n for name, n in requests.items() if name < shard)


@pytest.mark.slow
def test_a_long_outage_stops_cleanly_and_the_printed_command_resumes(tmp_path, local_ray):
    with OutageServer() as server:
        config = openai_config(tmp_path / "run", server.base_url)
        config_path = write_config(tmp_path / "job.yaml", config)
        reference = tmp_path / "reference"
        assert cli.main(["run", str(config_path), "--quiet", "--run-dir", str(reference)]) == 0
        total = sum(sum(shard_requests(reference, s.name).values()) for s in STAGES)
        assert server.counters.calls == total  # no faults yet: one call per request
        expected = assert_run_is_whole(reference, config)

        # Down from the second judge shard on, for as long as the test likes: far past the
        # retry budget (2 retries, < 0.2 s of backoff) of every call.
        judge = [spec.name for spec in plan_shards(STAGES_BY_NAME["judge"], config)]
        server.down_from = server.counters.calls + calls_before(reference, "judge", judge[1])
        code, err = run_cli("run", str(config_path), "--quiet")
        assert code == 1, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "the model or endpoint is unavailable" in err and "http 500" in err, err
        resume = re.search(r"run `(fspo-data run [^`]+)` to resume", err)
        assert resume, err
        committed = committed_shards(config.run_dir)
        assert committed["judge"] == {judge[0]}
        responses = plan_shards(STAGES_BY_NAME["responses"], config)
        assert committed["responses"] == {s.name for s in responses}
        kept = config.run_dir / "judge" / f"{judge[0]}.parquet"
        kept_as = (kept.stat().st_ino, kept.stat().st_mtime_ns, file_sha256(kept))

        server.down_from = None  # the endpoint is back
        assert cli.main(shlex.split(resume.group(1))[1:]) == 0
    found = assert_run_is_whole(config.run_dir, config)
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns, file_sha256(kept)) == kept_as  # not redone
    for stage, ids in expected.items():
        assert sorted(found[stage]) == sorted(ids), stage


class RefusesOneUser:
    """The instant double, except that the endpoint refuses for good every request about the
    first user it is asked about (or about everyone): what is left after the retries."""

    model_name = "refuses-one-user"

    def __init__(self, config: JobConfig, everyone: bool = False) -> None:
        self.inner = InstantBenchmarkDouble(config.model)
        self.everyone = everyone
        self.refused: list[ChatMessage] | None = None

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        self.refused = self.refused or requests[0].messages
        answers = self.inner.complete(requests)
        refused = Completion(failure="refused", error="http 400: bad request: refused")
        return [
            refused if self.everyone or r.messages == self.refused else a
            for r, a in zip(requests, answers, strict=True)
        ]

    def stats(self) -> BackendStats:
        return self.inner.stats()


def persona_shard(tmp_path: Path, everyone: bool) -> tuple[JobConfig, ShardEntry]:
    """Run the first model-described persona shard (roleplay, 3 users) on `RefusesOneUser`."""
    config = instant_config(tmp_path / "run")
    personas = plan_shards(STAGES_BY_NAME["personas"], config)
    spec = next(s for s in personas if s.domain == "roleplay")
    tally = CallTally(RefusesOneUser(config, everyone))
    return config, execute_shard(spec, StageContext(config=config, backend=tally), tally)


def test_calls_failing_for_good_drop_only_their_records_counted(tmp_path):
    config, entry = persona_shard(tmp_path, everyone=False)
    attempts = config.stages.persona_checks.max_attempts
    assert entry.rows == 2  # of 3 users
    assert entry.counters["personas_failed"] == attempts  # the refused user, every attempt
    assert entry.counters["personas_dropped_after_attempts"] == 1
    assert (tmp_path / "run" / "personas" / entry.file).exists()


def test_a_shard_whose_every_call_failed_is_not_committed(tmp_path):
    with pytest.raises(ModelUnavailable, match="model or endpoint is unavailable.*http 400"):
        persona_shard(tmp_path, everyone=True)
    assert not list((tmp_path / "run").rglob("*.parquet"))


def half_written_then(error: int, real_write):
    """A `pq.write_table` that writes half the file, then fails with `error` (like a disk
    filling up mid-write); unlike pyarrow's own, it leaves the half file for the caller."""

    def write_table(table, where, **kwargs) -> None:
        real_write(table, where, **kwargs)
        data = Path(where).read_bytes()
        Path(where).write_bytes(data[: len(data) // 2])
        raise OSError(error, os.strerror(error))

    return write_table


def no_space(*_args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_in_a_shard_write_is_one_clear_error_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(pq, "write_table", half_written_then(errno.ENOSPC, pq.write_table))
    with pytest.raises(OutputWriteError) as raised:
        write_shard(tmp_path, "review-00000", pa.table({"a": list(range(1000))}))
    message = str(raised.value)
    assert message == f"cannot write {tmp_path / 'review-00000.parquet'}: No space left on device"
    assert not list(tmp_path.iterdir())  # neither the temp file nor a partial shard


def test_disk_full_in_a_manifest_save_keeps_the_old_manifest(tmp_path, monkeypatch):
    manifest = Manifest(stage="s", schema="x", config_fingerprint="f", package_versions={})
    manifest.shards["d-00000"] = write_shard(tmp_path, "d-00000", pa.table({"a": [1]}))
    save_manifest(tmp_path, manifest)
    before = (tmp_path / MANIFEST).read_bytes()
    manifest.shards["d-00001"] = write_shard(tmp_path, "d-00001", pa.table({"a": [2]}))
    monkeypatch.setattr(os, "fsync", no_space)  # where a full disk shows on many filesystems
    with pytest.raises(OutputWriteError, match=f"^cannot write {tmp_path / MANIFEST}: No space"):
        save_manifest(tmp_path, manifest)
    assert (tmp_path / MANIFEST).read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp-*"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a disk that really fills up. Skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)]
    try:
        mounted = subprocess.run(mount, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no `mount` command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def disk_usage(folder: Path) -> int:
    """Bytes `folder`'s files take on a tmpfs: each file rounded up to whole 4 KiB pages."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_full_disk_stops_the_job_cleanly_and_resume_finishes_it(tmp_path, small_disk, local_ray):
    config = instant_config(small_disk / "run")
    config_path = write_config(tmp_path / "my job.yaml", config)  # the hint must quote it
    reference = tmp_path / "reference"
    assert cli.main(["run", str(config_path), "--quiet", "--run-dir", str(reference)]) == 0
    expected = assert_run_is_whole(reference, config)
    # Leave room for about half the run: the disk fills up mid-run.
    stat = os.statvfs(small_disk)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - disk_usage(reference) // 2))

    code, err = run_cli("run", str(config_path), "--quiet")
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(rf"cannot write {small_disk}/run/\S+: No space left on device", err), err
    resume = re.search(r"run `(fspo-data run [^`]+)` to resume", err)
    assert resume, err
    committed = sum(len(names) for names in committed_shards(config.run_dir).values())
    planned = sum(len(plan_shards(stage, config)) for stage in STAGES)
    assert 0 < committed < planned

    filler.unlink()  # space freed
    assert cli.main(shlex.split(resume.group(1))[1:]) == 0
    found = assert_run_is_whole(config.run_dir, config)
    for stage, ids in expected.items():
        assert sorted(found[stage]) == sorted(ids), stage
