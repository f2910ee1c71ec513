"""Hands a stage's shards to engine replicas as they free up, and takes back a lost one's.

A slot is one place on a replica (`SHARDS_IN_FLIGHT_PER_REPLICA` per replica): a finished
shard's slot gets the next shard in the queue, so a slow replica takes fewer shards and delays
only those it holds. Near the end of the queue two rules keep the last shards off a busy or
slow engine: with fewer shards left than replicas, a replica computing a shard queues no
second one; and a slot waits when the other replicas, each at the pace of its last shard,
would finish every shard left before it finished one more after its own queue. A replica
that dies (its node lost, its process killed) loses its shards in flight: they go back to the
front of the queue for the next free slot, and its slots come back once Ray has restarted it
(its `ready` probe answers; a probe that meets the process going down is asked again). Ray
does not retry the shards on the restarted actor itself (`max_task_retries=0`), which would
hold them through the engine's reload while other replicas sit idle.
"""

from __future__ import annotations

import math
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
        self.replicas = len({id(slot) for slot in slots})
        # ref -> (its shard, or None for a lost replica's `ready` call; the slot it holds;
        # when it was submitted)
        self.pending: dict[ray.ObjectRef, tuple[ShardSpec | None, Any, float]] = {}
        self.took: dict[int, float] = {}  # id(slot) -> seconds its last shard took
        self.freed: dict[int, float] = {}  # id(slot) -> when its last shard came back
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
            freed_before = self.freed.get(id(slot), 0.0)
            try:
                entry = result(done[0])
            except ray.exceptions.RayActorError as exc:
                if spec is not None:
                    self.todo.appendleft(spec)
                    self._lost(slot)
                elif isinstance(exc, ray.exceptions.ActorUnavailableError):
                    # A probe that reached the old process as it went down: ask again (Ray
                    # holds the new call until the restarted actor is up).
                    self._probe(slot)
                # else its restarts are spent: the slot is gone for good.
                self._dispatch()
                continue
            if spec is not None:
                commit(spec, entry)
                self.freed[id(slot)] = time.perf_counter()
                self.took[id(slot)] = self.freed[id(slot)] - max(submitted, freed_before)
            self.idle.append(slot)
            self._dispatch()
        if self.todo and self.stop_reason is None:
            raise ReplicasLost(f"every engine replica was lost; {len(self.todo)} shards left")

    def cancel(self) -> None:
        for ref in self.pending:
            ray.cancel(ref)

    def _dispatch(self) -> None:
        self.idle.sort(key=lambda slot: self.took.get(id(slot), 0.0))  # fastest first
        while self.todo and self.stop_reason is None:
            position = self._next_slot()
            if position is None:
                return
            self.stop_reason = self.check(self.in_flight())
            if self.stop_reason is None:
                spec, slot = self.todo.popleft(), self.idle.pop(position)
                self.pending[self.submit(spec, slot)] = (spec, slot, time.perf_counter())

    def _next_slot(self) -> int | None:
        """Where in `idle` the slot is that takes the next shard now, fastest first; None to
        wait. (A slot itself may be None: a CPU task's.)

        Once fewer shards are left than replicas, a replica already computing one queues no
        second: that shard would wait out the first while another replica's engine stood free.
        """
        in_flight = self._in_flight_by_replica()
        for position, slot in enumerate(self.idle):
            if len(self.todo) < self.replicas and id(slot) in in_flight:
                continue
            return None if self._others_finish_sooner(slot, in_flight) else position
        return None

    def _in_flight_by_replica(self) -> dict[int, tuple[int, float]]:
        """id(replica) -> (its shards in flight, when the first of them was submitted)."""
        in_flight: dict[int, tuple[int, float]] = {}
        for spec, slot, submitted in self.pending.values():
            if spec is not None:
                count, since = in_flight.get(id(slot), (0, submitted))
                in_flight[id(slot)] = (count + 1, min(since, submitted))
        return in_flight

    def _others_finish_sooner(self, slot: Any, in_flight: dict[int, tuple[int, float]]) -> bool:
        """Whether the other busy replicas, each at the pace of its last shard, would finish
        every shard left before `slot` finished one more (then it waits: the last shards go to
        the fast replicas, not to a straggler).

        A replica computes its shards in flight one after another: it is free at its first
        one's submission plus its pace per shard, then takes one more shard per pace; `slot`'s
        own shards in flight come before the one it would take."""
        mine = self.took.get(id(slot))
        if mine is None:
            return False
        now = time.perf_counter()

        def free_in(replica: int, pace: float) -> float:
            # Its shard computing now started when it was submitted or when the one before
            # it came back, whichever is later.
            count, since = in_flight.get(replica, (0, now))
            return max(max(since, self.freed.get(replica, 0.0)) + count * pace - now, 0.0)

        done_at, sooner = free_in(id(slot), mine) + mine, 0
        for replica in in_flight.keys() - {id(slot)}:
            theirs = self.took.get(replica)
            if theirs is not None:
                sooner += max(math.ceil((done_at - free_in(replica, theirs)) / theirs) - 1, 0)
        return sooner >= len(self.todo)

    def _lost(self, actor: Any) -> None:
        """`actor` died: none of its slots takes a shard before it has restarted."""
        held = [actor] + [slot for slot in self.idle if slot is actor]
        self.idle = [slot for slot in self.idle if slot is not actor]
        for slot in held:
            self._probe(slot)

    def _probe(self, slot: Any) -> None:
        """Ask `slot`'s actor whether it is up; its answer gives the slot back."""
        self.pending[slot.ready.remote()] = (None, slot, time.perf_counter())
