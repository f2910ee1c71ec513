"""Hub export: re-shard a run's episodes per domain and split, write the dataset card, upload.

The folder is laid out so `datasets.load_dataset(folder_or_repo, domain)` needs no arguments:
`data/{domain}/{split}-00000-of-0000N.parquet` plus a README (`dataset_card`) whose `configs:`
names them. The Hub token is read by `huggingface_hub` from the environment (HF_TOKEN);
nothing here writes or prints it, and values of secret-looking environment variables are
scrubbed from the card.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fspo_data.core import storage
from fspo_data.core.records import Episode
from fspo_data.core.shards import final_episode_files
from fspo_data.core.storage import Location
from fspo_data.pipeline.dataset_card import front_matter, redact, render_card
from fspo_data.stages.base import require_columns

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "test_users", "test_questions")
# Row groups are cut from in-memory Arrow bytes; Parquet compresses text a few times over,
# so this keeps row groups well under the Hub viewer's limits, and one buffer per
# (domain, split) bounds memory.
ROW_GROUP_BYTES = 32_000_000
READ_BATCH_ROWS = 1024
# Names become paths and Hub split names (`\w+`), so nothing else is accepted from the data.
_NAME = re.compile(r"^\w+$")


class ExportError(ValueError):
    """The run cannot be exported as asked; the message says what to change."""


class HubApi(Protocol):
    """What the export needs from `huggingface_hub.HfApi` (tests pass a recording double)."""

    def create_repo(
        self, *, repo_id: str, repo_type: str, private: bool, exist_ok: bool
    ) -> Any: ...

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        repo_type: str,
        delete_patterns: list[str],
        commit_message: str,
    ) -> Any: ...


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    files: list[tuple[str, int]]  # (path inside the folder, bytes), as uploaded
    rows: dict[str, dict[str, int]]  # config (domain) -> split -> rows
    redacted: list[str] = field(default_factory=list)  # env vars whose values left the card
    uploaded: bool = False

    def listing(self) -> str:
        """One line per file with its size, then the total: what a dry run shows."""
        lines = [f"{size / 1e6:10.2f} MB  {name}" for name, size in self.files]
        total = sum(size for _, size in self.files)
        return "\n".join([*lines, f"{total / 1e6:10.2f} MB  total, {len(self.files)} files"])


def export_run(
    run_dir: Location,
    repo_id: str,
    out_dir: Path | None = None,
    private: bool = False,
    dry_run: bool = False,
    max_shard_bytes: int = 300_000_000,
    license: str = "apache-2.0",
    pretty_name: str | None = None,
    api: HubApi | None = None,
) -> ExportResult:
    """Write the Hub folder (`export_folder`) and, unless `dry_run`, upload it.

    A dry run writes the folder and lists it (`ExportResult.listing()`) without touching the Hub.
    """
    result = write_export(run_dir, repo_id, out_dir, max_shard_bytes, license, pretty_name)
    if dry_run:
        return result
    upload_export(result.folder, repo_id, private=private, api=api)
    return replace(result, uploaded=True)


def write_export(
    run_dir: Location,
    repo_id: str,
    out_dir: Path | None = None,
    max_shard_bytes: int = 300_000_000,
    license: str = "apache-2.0",
    pretty_name: str | None = None,
) -> ExportResult:
    folder = out_dir or export_folder(run_dir)
    _prepare_folder(folder)
    sources = _committed_episodes(run_dir)
    schema = _episode_schema(sources)
    rows = _write_shards(sources, schema, folder / "data", max_shard_bytes)
    front = front_matter(rows, license, pretty_name)
    card, redacted = redact(render_card(run_dir, repo_id, front, rows, schema), os.environ)
    if redacted:
        log.warning("removed the values of %s from the dataset card", ", ".join(redacted))
    (folder / "README.md").write_text(card)
    return ExportResult(folder, _list_files(folder), rows, redacted)


def export_folder(run_dir: Location) -> Path:
    """The default Hub folder, which is local (the upload reads a folder): RUN_DIR/export, or
    ./NAME-export for a run on object storage (NAME, the run's last path segment)."""
    if isinstance(run_dir, Path):
        return run_dir / "export"
    return Path(f"{run_dir.name or run_dir.bucket}-export")


def upload_export(
    folder: Path, repo_id: str, private: bool = False, api: HubApi | None = None
) -> None:
    """Create the dataset repo if needed and upload `folder` in resumable commits.

    `upload_folder` of huggingface_hub >= 2 (with hf_xet) commits large folders in several
    batches and resumes when re-run; shards that a previous export left under `data/` are
    deleted so the `configs:` globs match only this export.
    """
    hub = api or _default_api()
    hub.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
    hub.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="dataset",
        delete_patterns=["data/*"],
        commit_message="Upload FSPO episodes with fspo-data",
    )


def _default_api() -> HubApi:
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise ExportError("no Hugging Face token: set HF_TOKEN (or run `hf auth login`)")
    return HfApi()


def _prepare_folder(folder: Path) -> None:
    """Empty the export's own outputs; refuse a folder holding anything else.

    `.cache/` is kept: huggingface_hub stores upload state there.
    """
    ours = {"data", "README.md", ".cache"}
    if folder.exists():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in ours)
        if foreign:
            raise ExportError(f"{folder} holds files this export did not write: {foreign}")
        shutil.rmtree(folder / "data", ignore_errors=True)
    (folder / "data").mkdir(parents=True, exist_ok=True)


def _committed_episodes(run_dir: Location) -> list[Location]:
    files = final_episode_files(run_dir)
    if not files:
        raise ExportError(f"{run_dir / 'episodes'}: no committed episodes; run the pipeline first")
    return files


def _read_schema(path: Location) -> pa.Schema:
    with storage.open_input(path) as handle:
        return pq.read_schema(handle)


def _episode_schema(sources: list[Location]) -> pa.Schema:
    schema = _read_schema(sources[0])
    require_columns("export", str(sources[0]), schema.empty_table(), Episode)
    for path in sources[1:]:
        if not _read_schema(path).equals(schema, check_metadata=False):
            raise ExportError(f"{path} has other columns than {sources[0]}: episodes of two runs?")
    return schema


def _write_shards(
    sources: list[Location], schema: pa.Schema, data_dir: Path, max_shard_bytes: int
) -> dict[str, dict[str, int]]:
    """Stream every episode file once, routing rows to one rolling writer per (domain, split)."""
    writers: dict[tuple[str, str], _ShardWriter] = {}
    for batch in _batches(sources):
        for key, rows in _partition(batch):
            if key not in writers:
                domain, split = key
                writers[key] = _ShardWriter(data_dir / domain, split, schema, max_shard_bytes)
            writers[key].add(rows)
    counts: dict[str, dict[str, int]] = {}
    for domain, split in sorted(writers, key=_config_split_order):
        counts.setdefault(domain, {})[split] = writers[domain, split].close()
    if not counts:
        raise ExportError("the episode files hold no rows")
    return counts


def _config_split_order(key: tuple[str, str]) -> tuple[str, int, str]:
    domain, split = key
    rank = SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)
    return domain, rank, split


def _batches(sources: list[Location]) -> Iterator[pa.RecordBatch]:
    for path in sources:
        with storage.open_input(path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=READ_BATCH_ROWS)


def _partition(batch: pa.RecordBatch) -> Iterator[tuple[tuple[str, str], pa.RecordBatch]]:
    table = pa.Table.from_batches([batch])
    keys = table.group_by(["domain", "split"]).aggregate([]).to_pylist()
    for key in keys:
        domain, split = key["domain"], key["split"]
        for name in (domain, split):
            if not _NAME.match(name or ""):
                raise ExportError(f"domain/split {name!r} is not a word (letters, digits, _)")
        mask = pc.and_(pc.equal(batch["domain"], domain), pc.equal(batch["split"], split))
        yield (domain, split), batch.filter(mask)


class _ShardWriter:
    """Writes one (domain, split) as Parquet files named `{split}-i-of-n` once n is known.

    A file is closed after the row group that takes it past `max_bytes`, so it overshoots by
    at most one row group (ROW_GROUP_BYTES of Arrow data, less once compressed).
    """

    def __init__(self, folder: Path, split: str, schema: pa.Schema, max_bytes: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.split, self.schema, self.max_bytes = folder, split, schema, max_bytes
        self.row_group_bytes = min(max_bytes, ROW_GROUP_BYTES)
        self.buffer: list[pa.RecordBatch] = []
        self.buffered_bytes = 0
        self.rows = 0
        self.parts: list[Path] = []
        self.sink: pa.NativeFile | None = None
        self.writer: pq.ParquetWriter | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        self.buffer.append(batch)
        self.buffered_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self.buffered_bytes >= self.row_group_bytes:
            self._flush()

    def close(self) -> int:
        """Finish the last file, give every file its `-of-` name; return the rows written."""
        self._flush()
        self._end_part()
        total = len(self.parts)
        for index, part in enumerate(self.parts):
            part.rename(self.folder / f"{self.split}-{index:05d}-of-{total:05d}.parquet")
        return self.rows

    def _flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_batches(self.buffer, schema=self.schema)
        self.buffer, self.buffered_bytes = [], 0
        if self.writer is None:
            path = self.folder / f".{self.split}-{len(self.parts):05d}.partial"
            self.parts.append(path)
            self.sink = pa.OSFile(str(path), "wb")
            self.writer = pq.ParquetWriter(self.sink, self.schema)
        self.writer.write_table(table, row_group_size=table.num_rows)
        if self.sink is not None and self.sink.tell() >= self.max_bytes:
            self._end_part()

    def _end_part(self) -> None:
        if self.writer is not None and self.sink is not None:
            self.writer.close()
            self.sink.close()
        self.writer, self.sink = None, None


def _list_files(folder: Path) -> list[tuple[str, int]]:
    files = [p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts]
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in files)
