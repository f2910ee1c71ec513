"""Hands a stage's shards to engine replicas as they free up, and takes back a lost one's.

A slot is one place on a replica (`SHARDS_IN_FLIGHT_PER_REPLICA` per replica): a finished
shard's slot gets the next shard in the queue, so a slow replica takes fewer shards and delays
only those it holds. Near the end of the queue a slot waits instead when the replicas now busy,
each at the pace of its last shard, would finish every shard left before it finished one:
the last shards go to the fast replicas, not to a straggler. A replica that dies (its node
lost, its process killed) loses its shards in flight: they go back to the front of the queue
for the next free slot, and its slots come back once Ray has restarted it (its `ready` call
answers). Ray does not retry them on the
restarted actor itself (`max_task_retries=0`), which would hold them through the engine's
reload while other replicas sit idle.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from fspo_data.core.shards import ShardEntry
from fspo_data.stages.base import ShardSpec

# Shards an engine replica holds at once: one computing, one queued behind it so the engine
# never waits on the driver; few enough that a guard stops the run close to where it says
# (the budget guard reserves for the shards in flight), and that a straggler holds only these.
SHARDS_IN_FLIGHT_PER_REPLICA = 2


class ReplicasLost(RuntimeError):
    """Every replica died for good (its restarts spent) while shards were left."""


class Dispatcher:
    """`submit(spec, slot)` for each shard of `todo` on a free slot, after `check(in_flight)`
    (a reason to stop dispatching, or None); `run` until every dispatched shard is back."""

    def __init__(
        self,
        todo: deque[ShardSpec],
        slots: list[Any],
        submit: Callable[[ShardSpec, Any], ray.ObjectRef],
        check: Callable[[int], str | None],
    ) -> None:
        self.todo, self.idle, self.submit, self.check = todo, list(slots), submit, check
        # ref -> (its shard, or None for a lost replica's `ready` call; the slot it holds;
        # when it was submitted)
        self.pending: dict[ray.ObjectRef, tuple[ShardSpec | None, Any, float]] = {}
        self.took: dict[int, float] = {}  # id(slot) -> seconds its last shard took
        self.stop_reason: str | None = None

    def in_flight(self) -> int:
        return sum(spec is not None for spec, _, _ in self.pending.values())

    def run(
        self,
        result: Callable[[ray.ObjectRef], ShardEntry],
        commit: Callable[[ShardSpec, ShardEntry], None],
    ) -> None:
        """Dispatch and `commit` each shard's `result` as it comes back. Stops dispatching at
        the first reason `check` gives (`stop_reason`); the shards in flight are committed."""
        self._dispatch()
        # A lost replica is waited for only while shards wait for a replica.
        while self.in_flight() or (self.todo and self.pending and self.stop_reason is None):
            done, _ = ray.wait(list(self.pending), num_returns=1)
            spec, slot, submitted = self.pending.pop(done[0])
            try:
                entry = result(done[0])
            except ray.exceptions.RayActorError:
                if spec is not None:
                    self.todo.appendleft(spec)
                    self._lost(slot)
                # else its restarts are spent: the slot is gone for good.
                self._dispatch()
                continue
            if spec is not None:
                commit(spec, entry)
                self.took[id(slot)] = time.perf_counter() - submitted
            self.idle.append(slot)
            self._dispatch()
        if self.todo and self.stop_reason is None:
            raise ReplicasLost(f"every engine replica was lost; {len(self.todo)} shards left")

    def cancel(self) -> None:
        for ref in self.pending:
            ray.cancel(ref)

    def _dispatch(self) -> None:
        self.idle.sort(key=lambda slot: self.took.get(id(slot), 0.0))  # fastest first
        while self.idle and self.todo and self.stop_reason is None:
            if self._others_finish_sooner(self.idle[0]):
                return
            self.stop_reason = self.check(self.in_flight())
            if self.stop_reason is None:
                spec, slot = self.todo.popleft(), self.idle.pop(0)
                self.pending[self.submit(spec, slot)] = (spec, slot, time.perf_counter())

    def _others_finish_sooner(self, slot: Any) -> bool:
        """Whether the busy slots that would finish their shard and then one more before
        `slot` finished one are at least as many as the shards left."""
        mine = self.took.get(id(slot))
        if mine is None:
            return False
        now, sooner = time.perf_counter(), 0
        for spec, other, submitted in self.pending.values():
            theirs = self.took.get(id(other))
            if spec is not None and theirs is not None:
                sooner += max(theirs - (now - submitted), 0.0) + theirs < mine
        return sooner >= len(self.todo)

    def _lost(self, actor: Any) -> None:
        """`actor` died: none of its slots takes a shard before it has restarted."""
        held = [actor] + [slot for slot in self.idle if slot is actor]
        self.idle = [slot for slot in self.idle if slot is not actor]
        for slot in held:
            self.pending[slot.ready.remote()] = (None, slot, time.perf_counter())
