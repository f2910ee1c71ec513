"""The dispatcher's choices near the end of a queue (pipeline/dispatch.py), without Ray: which
idle slot takes the next shard, given what each replica is computing and its pace."""

from __future__ import annotations

import time
from collections import deque
from itertools import count

from fspo_data.pipeline.dispatch import Dispatcher
from fspo_data.stages.base import ShardSpec


class Replica:
    def __init__(self, name: str) -> None:
        self.name = name


def spec(index: int) -> ShardSpec:
    return ShardSpec(stage="judge", domain="roleplay", index=index, start=index, stop=index + 1)


def dispatcher(replicas: list[Replica], todo: int) -> tuple[Dispatcher, list[tuple[int, str]]]:
    """Two slots per replica, every slot idle; `submitted` records (shard, replica) in order."""
    submitted: list[tuple[int, str]] = []
    refs = count()

    def submit(shard: ShardSpec, slot: Replica) -> int:
        submitted.append((shard.index, slot.name))
        return next(refs)

    slots = [r for _ in range(2) for r in replicas]
    return Dispatcher(deque(spec(i) for i in range(todo)), slots, submit, lambda _: None), submitted


def computing(queue: Dispatcher, replica: Replica, pace: float, started_ago: float) -> None:
    """`replica` took `pace` seconds a shard and has been computing one for `started_ago`."""
    now = time.perf_counter()
    queue.idle.remove(replica)
    queue.pending[object()] = (spec(99), replica, now - started_ago)
    queue.took[id(replica)], queue.freed[id(replica)] = pace, now - started_ago


def test_near_the_end_a_replica_computing_a_shard_queues_no_second():
    a, b = Replica("a"), Replica("b")
    queue, submitted = dispatcher([a, b], todo=1)
    computing(queue, a, pace=1.0, started_ago=0.0)
    queue.took[id(b)] = 1.0
    queue._dispatch()
    # Fewer shards left than replicas: b's engine is free, a's is not.
    assert submitted == [(0, "b")]


def test_a_straggler_counts_its_own_queue_before_the_shard_it_would_take():
    # The slow replica would finish a new shard only after the one it computes (6 s from
    # now); the fast one, free in 1 s, finishes both shards left before that.
    slow, fast = Replica("slow"), Replica("fast")
    queue, submitted = dispatcher([slow, fast], todo=2)
    computing(queue, slow, pace=3.0, started_ago=0.0)
    computing(queue, fast, pace=1.0, started_ago=0.0)
    queue._dispatch()
    assert [name for _, name in submitted] == ["fast"]
    assert "slow" not in {name for _, name in submitted}


def test_cpu_tasks_whose_slots_are_none_are_all_dispatched():
    submitted: list[int] = []

    def submit(shard: ShardSpec, slot: None) -> int:
        submitted.append(shard.index)
        return shard.index

    queue = Dispatcher(deque(spec(i) for i in range(3)), [None] * 3, submit, lambda _: None)
    queue._dispatch()
    assert submitted == [0, 1, 2]
