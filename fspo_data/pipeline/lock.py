"""One writer per run folder: a run (or a report) holds the folder's lock while it writes.

A second `fspo-data run` on a folder in use is refused with one line naming the holder
(`RunDirBusy`), before it changes anything; a killed holder never blocks its own resume.

Two implementations behind one interface (`RunLock`: acquire, release, and `lost`, which a
run asks before each shard it dispatches):

- `LocalLock`, for a folder on a POSIX file system: `fcntl.flock` on RUN_DIR/.lock. The kernel
  drops the lock when its process dies, however it dies, so nothing is ever stale; the file
  also holds the holder (host, pid, since) for the message of whoever is refused.
- `LeaseLock`, for a run folder in object storage, which has no locks: a lease object (the
  holder and an expiry) written only if unchanged since read (`LeaseStore`: S3 conditional
  writes If-None-Match / If-Match on the ETag, or GCS generation preconditions), renewed by a
  heartbeat thread, and taken over once it has expired or when its holder is a process of
  this host that is gone. `ObjectLeaseStore` keeps it as an object beside the shards;
  `FileLeaseStore` is a local stand-in for the object, for tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from fspo_data.core import storage
from fspo_data.core.shards import OutputWriteError, atomic_write_bytes, make_dir
from fspo_data.core.storage import Location, ObjectPath

LOCK_FILE = ".lock"


class RunDirBusy(RuntimeError):
    """Another process holds the run folder; nothing was changed."""


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder: the process, and since when (Unix seconds)."""

    host: str
    pid: int
    since: float

    @classmethod
    def me(cls) -> Holder:
        return cls(host=socket.gethostname(), pid=os.getpid(), since=time.time())

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"host {self.host}, pid {self.pid}, since {since}"

    def is_gone(self) -> bool:
        """True only when this host can tell: the holder ran here and its pid is dead."""
        return self.host == socket.gethostname() and not pid_alive(self.pid)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Holder | None:
        try:
            fields = json.loads(raw)
            return cls(host=str(fields["host"]), pid=int(fields["pid"]), since=fields["since"])
        except (ValueError, KeyError, TypeError):
            return None  # empty (a holder between taking the lock and naming itself) or torn


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def busy(where: str, holder: Holder | None) -> RunDirBusy:
    who = holder.describe() if holder else "holder not recorded yet"
    return RunDirBusy(
        f"{where} is in use by another fspo-data run or report ({who}); wait for it to end or "
        "stop it"
    )


class RunLock(Protocol):
    def acquire(self) -> None:
        """Take the folder, or raise `RunDirBusy` naming the holder."""

    def release(self) -> None: ...

    def lost(self) -> str | None:
        """Why the folder is no longer this process's (a lease taken over), or None."""


class LocalLock:
    """`fcntl.flock` on RUN_DIR/.lock, which also names the holder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        make_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputWriteError(f"cannot write {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.from_json(os.pread(fd, 4096, 0))
            os.close(fd)
            raise busy(str(self.path.parent), holder) from None
        # Held: a holder left by a killed process is overwritten in place.
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me().to_json(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def lost(self) -> str | None:
        return None  # the kernel keeps it until this process ends


@dataclass(frozen=True)
class Lease:
    holder: Holder
    expires: float  # Unix seconds

    def to_json(self) -> bytes:
        return json.dumps({"holder": asdict(self.holder), "expires": self.expires}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Lease | None:
        try:
            fields = json.loads(raw)
            holder = Holder.from_json(json.dumps(fields["holder"]).encode())
            return None if holder is None else cls(holder, float(fields["expires"]))
        except (ValueError, KeyError, TypeError):
            return None


class LeaseStore(Protocol):
    """One object holding the lease, replaced only if unchanged since it was read."""

    where: str

    def read(self) -> tuple[Lease | None, str | None]:
        """The lease and its version (an ETag, a generation); (None, None) when absent."""

    def write(self, lease: Lease, expected: str | None) -> str | None:
        """Write if the version is still `expected` (None: if absent); the new version, or
        None when another writer came first."""

    def delete(self, expected: str) -> None:
        """Remove the lease if the version is still `expected`."""


class LeaseLock:
    """A lease renewed every `ttl_s / 3` by a heartbeat thread; taken over when expired or
    when its holder ran on this host and is gone."""

    def __init__(
        self, store: LeaseStore, ttl_s: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store, self.ttl_s, self.clock = store, ttl_s, clock
        self.me = Holder.me()
        self._version: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        lease, version = self.store.read()
        if lease is not None and lease.expires > self.clock() and not lease.holder.is_gone():
            raise busy(self.store.where, lease.holder)
        self._version = self.store.write(self._renewed(), version)
        if self._version is None:  # another process took it between our read and write
            raise busy(self.store.where, self._holder())
        self._heartbeat = threading.Thread(target=self._beat, name="run-lease", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._version is not None and self._lost is None:
            self.store.delete(self._version)
        self._version = None

    def lost(self) -> str | None:
        return self._lost

    def _holder(self) -> Holder | None:
        lease = self.store.read()[0]
        return lease.holder if lease else None

    def _renewed(self) -> Lease:
        return Lease(self.me, self.clock() + self.ttl_s)

    def _beat(self) -> None:
        expires = self.clock() + self.ttl_s
        while not self._stop.wait(self.ttl_s / 3):
            renewed = self._renewed()
            try:
                version = self.store.write(renewed, self._version)
            except (OSError, OutputWriteError) as exc:  # the store unreachable: try again
                if self.clock() < expires:
                    continue
                self._lost = f"could not renew the lease on {self.store.where}: {exc}"
                return
            if version is None:
                holder = self._holder()
                who = holder.describe() if holder else "nobody"
                self._lost = f"lost the lease on {self.store.where} ({who} holds it now)"
                return
            self._version, expires = version, renewed.expires


class FileLeaseStore:
    """`LeaseStore` on a local file (a stand-in for an object): the version is the content's
    hash, and a compare-and-write runs under an flock of a side file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path.parent)

    def read(self) -> tuple[Lease | None, str | None]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        return Lease.from_json(raw), hashlib.sha256(raw).hexdigest()

    def write(self, lease: Lease, expected: str | None) -> str | None:
        with self._exclusive():
            if self.read()[1] != expected:
                return None
            raw = lease.to_json()
            atomic_write_bytes(self.path, raw)
            return hashlib.sha256(raw).hexdigest()

    def delete(self, expected: str) -> None:
        with self._exclusive():
            if self.read()[1] == expected:
                self.path.unlink()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        make_dir(self.path.parent)
        with open(self.path.with_name(self.path.name + ".cas"), "a") as side:
            fcntl.flock(side, fcntl.LOCK_EX)
            yield  # closing the file drops the lock


class ObjectLeaseStore:
    """`LeaseStore` on an object (core/storage.py): the version is the content's hash.

    pyarrow's file systems do not expose S3's conditional writes (If-Match) or GCS's
    generation preconditions, so a compare-and-write is read, compare, write, then, after
    `settle_s`, read again: of two processes that both saw the old version and wrote, each
    finds the later write, so only its writer goes on. What this cannot catch is a writer
    slower than `settle_s` between its read and its write.
    """

    def __init__(self, loc: ObjectPath, settle_s: float = 2.0) -> None:
        self.loc, self.settle_s = loc, settle_s
        self.where = str(loc.parent)

    def read(self) -> tuple[Lease | None, str | None]:
        if not storage.is_file(self.loc):
            return None, None
        raw = storage.read_bytes(self.loc)
        return Lease.from_json(raw), hashlib.sha256(raw).hexdigest()

    def write(self, lease: Lease, expected: str | None) -> str | None:
        if self.read()[1] != expected:
            return None
        raw = lease.to_json()
        mine = hashlib.sha256(raw).hexdigest()
        storage.write_bytes_atomic(self.loc, raw)
        time.sleep(self.settle_s)
        return mine if self.read()[1] == mine else None

    def delete(self, expected: str) -> None:
        if self.read()[1] == expected:
            storage.delete(self.loc)


def run_lock(run_dir: Location) -> RunLock:
    """The lock of a run folder: an OS lock on local disk, a lease in object storage."""
    if isinstance(run_dir, ObjectPath):
        return LeaseLock(ObjectLeaseStore(run_dir / LOCK_FILE))
    return LocalLock(run_dir)


@contextmanager
def holding(lock: RunLock) -> Iterator[RunLock]:
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
