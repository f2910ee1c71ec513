"""Where a run lives: a local folder (`Path`) or a prefix in a bucket (`ObjectPath`,
`s3://bucket/prefix`, `gs://bucket/prefix`), and the few operations a run needs on either.

Every read and write under a run folder goes through here. Local folders behave as they
always did: a file is written under a temporary name, fsynced and renamed. Object stores have
no rename, so an object is produced whole in memory and then uploaded in one request that the
store makes visible all at once (S3: a PUT or a multipart upload's completion; GCS: an
upload's finalisation): a reader never sees part of it, and an error while producing it
uploads nothing. Object stores go through pyarrow's file systems (already a dependency, and
what writes the Parquet); credentials and endpoint come from the environment (AWS_*,
AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS), never from the config.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMES = ("s3", "gs")


@dataclass(frozen=True)
class ObjectPath:
    """`scheme://bucket/key` with the few path operations a run uses (`/`, `name`, `parent`)."""

    scheme: str
    bucket: str
    key: str = ""  # no leading or trailing "/"; "" is the bucket's root

    def __truediv__(self, part: str) -> ObjectPath:
        return ObjectPath(self.scheme, self.bucket, f"{self.key}/{part}".strip("/"))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.scheme, self.bucket, self.key.rpartition("/")[0])

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}".rstrip("/")


Location = Path | ObjectPath


def location(value: str | Path | ObjectPath) -> Location:
    """A run location from config or command line: `scheme://bucket/prefix` or a local path.
    Raises ValueError in one line for an unsupported scheme or a missing bucket."""
    if isinstance(value, Path | ObjectPath):
        return value
    scheme, sep, rest = value.partition("://")
    if not sep:
        return Path(value)
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme {scheme}:// (use s3://, gs:// or a local path)")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{value}: no bucket (write {scheme}://BUCKET/PREFIX)")
    return ObjectPath(scheme, bucket, key.strip("/"))


@cache
def _filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
    # One client per bucket and process (S3 looks up the bucket's region once).
    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


def _remote(loc: ObjectPath) -> tuple[pafs.FileSystem, str]:
    return _filesystem(loc.scheme, loc.bucket), f"{loc.bucket}/{loc.key}".rstrip("/")


def exists(loc: Location) -> bool:
    """A file or object at `loc`, or (for a folder) anything under it."""
    if isinstance(loc, Path):
        return loc.exists()
    fs, path = _remote(loc)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(loc: Location) -> bool:
    if isinstance(loc, Path):
        return loc.is_file()
    fs, path = _remote(loc)
    return fs.get_file_info(path).type == pafs.FileType.File


def size(loc: Location) -> int:
    if isinstance(loc, Path):
        return loc.stat().st_size
    fs, path = _remote(loc)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{loc}: no such object")
    return info.size


def read_bytes(loc: Location) -> bytes:
    if isinstance(loc, Path):
        return loc.read_bytes()
    with open_input(loc) as handle:
        return handle.read()


def read_text(loc: Location) -> str:
    return read_bytes(loc).decode()


def open_input(loc: Location) -> pa.NativeFile:
    """A seekable binary reader (pyarrow and Parquet read from it); use it as a context."""
    if isinstance(loc, Path):
        return pa.OSFile(str(loc), "rb")
    fs, path = _remote(loc)
    return fs.open_input_file(path)


def read_parquet(loc: Location) -> pa.Table:
    with open_input(loc) as handle:
        return pq.read_table(handle)


def polars_source(loc: Location) -> Path | str:
    """What polars' readers take: the path, or the URI (polars reads object stores itself,
    configured by the same environment variables)."""
    return loc if isinstance(loc, Path) else str(loc)


def scan_parquet(loc: Location) -> pl.LazyFrame:
    return pl.scan_parquet(polars_source(loc))


def list_files(folder: Location, pattern: str = "*") -> list[Location]:
    """The files directly in `folder` whose name matches the glob `pattern`, in name order;
    [] when there is no such folder."""
    return list(file_sizes(folder, pattern))


def file_sizes(folder: Location, pattern: str = "*") -> dict[Location, int]:
    """`list_files` with each file's size, from the one listing."""
    if isinstance(folder, Path):
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        return {path: path.stat().st_size for path in files}
    fs, path = _remote(folder)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    found = {i.base_name: i.size for i in infos if i.type == pafs.FileType.File}
    return {
        folder / name: found[name] for name in sorted(found) if fnmatch.fnmatchcase(name, pattern)
    }


def delete(loc: Location) -> None:
    """Remove the file or object at `loc`; nothing if there is none."""
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
        return
    fs, path = _remote(loc)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def make_dir(folder: Location) -> None:
    """Create a local folder and its parents; object stores have no folders, only keys."""
    if isinstance(folder, Path):
        folder.mkdir(parents=True, exist_ok=True)


# What `write_atomic` hands its writer: a local temporary path, or an in-memory sink.
Sink = Path | pa.BufferOutputStream


def write_atomic(loc: Location, write: Callable[[Sink], None]) -> None:
    """Make the file or object `loc` appear whole or not at all: `write` fills a temporary
    file that is fsynced and renamed (local), or an in-memory sink uploaded in one request
    (object store). `pq.write_table` takes either sink."""
    if isinstance(loc, ObjectPath):
        sink = pa.BufferOutputStream()
        write(sink)
        payload = sink.getvalue()
        fs, path = _remote(loc)
        with fs.open_output_stream(path) as out:
            out.write(payload)
        return
    tmp = loc.with_name(f".{loc.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        tmp.rename(loc)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(loc.parent)


def write_bytes_atomic(loc: Location, payload: bytes) -> None:
    def write(sink: Sink) -> None:
        if isinstance(sink, Path):
            sink.write_bytes(payload)
        else:
            sink.write(payload)

    write_atomic(loc, write)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
