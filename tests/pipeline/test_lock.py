"""The run folder's lock: a second holder is refused naming the first; a dead holder's lock
(or lease) never blocks the next."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fspo_data.core import storage
from fspo_data.pipeline.lock import (
    LOCK_FILE,
    FileLeaseStore,
    Holder,
    Lease,
    LeaseLock,
    LocalLock,
    ObjectLeaseStore,
    RunDirBusy,
    holding,
    run_lock,
)

HOLD_A_LOCK = """
import sys, time
from pathlib import Path
from fspo_data.pipeline.lock import LocalLock
LocalLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with holding(LocalLock(tmp_path / "run")), pytest.raises(RunDirBusy) as refused:
        LocalLock(tmp_path / "run").acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert re.fullmatch(
        rf"{tmp_path / 'run'} is in use by another fspo-data run or report \(host "
        rf"{re.escape(socket.gethostname())}, pid {os.getpid()}, since "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); wait for it to end or stop it",
        message,
    ), message
    with holding(LocalLock(tmp_path / "run")):  # released: free again
        pass


def test_a_killed_holder_never_blocks_the_next(tmp_path):
    run_dir = tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])}  # the repo
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_LOCK, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid},"):
            LocalLock(run_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = LocalLock(run_dir)
    lock.acquire()  # at once: the kernel let go of the dead process's lock
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def lease_of(store: FileLeaseStore, holder: Holder, expires: float) -> None:
    assert store.write(Lease(holder, expires), store.read()[1]) is not None


def test_a_live_lease_is_refused_an_expired_one_taken_over(tmp_path):
    store, clock = FileLeaseStore(tmp_path / "run" / "lease.json"), Clock()
    other = Holder(host="another-host", pid=1, since=clock.now)
    lease_of(store, other, expires=clock.now + 30)
    with pytest.raises(RunDirBusy, match="host another-host, pid 1,"):
        LeaseLock(store, ttl_s=60, clock=clock).acquire()
    clock.now += 31  # its holder stopped renewing it
    lock = LeaseLock(store, ttl_s=60, clock=clock)
    lock.acquire()
    try:
        assert store.read()[0] == Lease(lock.me, clock.now + 60)
    finally:
        lock.release()
    assert store.read() == (None, None)


def test_the_lease_of_a_dead_process_of_this_host_is_taken_over_at_once(tmp_path):
    store, clock = FileLeaseStore(tmp_path / "lease.json"), Clock()
    gone = Holder(host=socket.gethostname(), pid=dead_pid(), since=clock.now)
    lease_of(store, gone, expires=clock.now + 3600)
    with holding(LeaseLock(store, clock=clock)) as lock:
        assert store.read()[0].holder == lock.me


def test_the_heartbeat_renews_the_lease_and_notices_a_takeover(tmp_path):
    store = FileLeaseStore(tmp_path / "lease.json")
    lock = LeaseLock(store, ttl_s=0.3)
    lock.acquire()
    try:
        first = store.read()[0].expires
        deadline = time.monotonic() + 10
        while store.read()[0].expires == first:  # renewed every ttl / 3
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.01)
        assert lock.lost() is None
        intruder = Holder(host="another-host", pid=7, since=0.0)
        lease_of(store, intruder, expires=time.time() + 3600)  # e.g. after a long pause
        while lock.lost() is None:
            assert time.monotonic() < deadline, "the takeover went unnoticed"
            time.sleep(0.01)
        assert "lost the lease" in lock.lost() and "host another-host, pid 7" in lock.lost()
    finally:
        lock.release()
    assert store.read()[0].holder == intruder  # not deleted: it is not ours any more


class UnreachableAfterAcquire(FileLeaseStore):
    """The lease's store, unreachable once the lease is taken (a network partition)."""

    reachable = True

    def write(self, lease: Lease, expected: str | None) -> str | None:
        if not self.reachable:
            raise OSError("connection refused")
        return super().write(lease, expected)


def test_a_lease_that_cannot_be_renewed_before_it_expires_is_lost(tmp_path):
    store = UnreachableAfterAcquire(tmp_path / "lease.json")
    lock = LeaseLock(store, ttl_s=0.3)
    lock.acquire()
    store.reachable = False
    deadline = time.monotonic() + 10
    try:
        while lock.lost() is None:
            assert time.monotonic() < deadline, "the lapse went unnoticed"
            time.sleep(0.01)
    finally:
        lock.release()
    assert lock.lost() == f"could not renew the lease on {tmp_path}: connection refused"


def test_the_lease_in_object_storage_refuses_a_second_run_and_outlives_a_dead_one(s3_bucket):
    run = s3_bucket / "locked-run"
    assert isinstance(run_lock(run), LeaseLock)
    with holding(run_lock(run)) as first:
        with pytest.raises(RunDirBusy, match=f"pid {os.getpid()},"):
            run_lock(run).acquire()
        assert first.lost() is None
    assert not storage.is_file(run / LOCK_FILE)  # released: the next takes it at once
    # A holder of this host that died keeps no one out.
    store = ObjectLeaseStore(run / LOCK_FILE, settle_s=0.1)
    gone = Holder(host=socket.gethostname(), pid=dead_pid(), since=time.time())
    store.write(Lease(gone, time.time() + 3600), None)
    with holding(LeaseLock(store)) as lock:
        assert store.read()[0].holder == lock.me


def test_two_writers_of_one_lease_object_leave_one_holder(s3_bucket):
    # Both read "no lease" before either writes: the settle-and-verify write keeps one.
    stores = [ObjectLeaseStore(s3_bucket / "race" / LOCK_FILE, settle_s=0.5) for _ in range(2)]
    leases = [Lease(Holder(host=f"h{i}", pid=i, since=0.0), 1e12) for i in range(2)]
    versions: list[str | None] = [None, None]

    def write(i: int) -> None:
        versions[i] = stores[i].write(leases[i], None)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(v is not None for v in versions) == 1
    winner = versions.index(next(v for v in versions if v is not None))
    assert stores[0].read()[0] == leases[winner]
