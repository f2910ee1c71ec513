"""The model calls of the shard a worker computes: counted, and an outage never dropped.

`CallTally` wraps a worker's backend. A call that failed because the endpoint or engine was
unavailable (after the backend's retries and its wait for the outage to end) stops the shard
at once, uncommitted, with `ModelUnavailable`: the run stops and its resume computes the shard
whole, so no record is lost to an outage. A shard whose every call failed otherwise (a refused
key) is not committed either. Calls refused one by one or answered badly are the stage's to
drop and count.
"""

from __future__ import annotations

from fspo_data.core.batch import Letters, PromptBatch, answer_letters
from fspo_data.core.chat import BackendStats, ChatRequest, Completion, Failure, LLMBackend
from fspo_data.stages.base import ShardSpec


class ModelUnavailable(RuntimeError):
    """A model call of a shard failed for want of the endpoint, or every call failed, so the
    shard is not committed."""


class CallTally:
    """Wraps a worker's backend to count the current shard's model calls that failed for good,
    and to stop the shard at the first that failed because the endpoint was unavailable: a
    record is never dropped for an outage."""

    def __init__(self, backend: LLMBackend, name: str | None = None) -> None:
        self.backend = backend
        # The roster's name of the model (core/roles_config.py), which its counters carry.
        self.model_name = name or backend.model_name
        self.reset()

    def reset(self, spec: ShardSpec | None = None) -> None:
        self.shard = f"{spec.stage}/{spec.name}" if spec else "the shard"
        self.calls = 0
        self.failed = 0
        self.first_error = ""
        self.stats_before = self.backend.stats()

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        completions = self.backend.complete(requests)
        self._tally(len(completions), [(c.failure, c.error) for c in completions if c.failure])
        return completions

    def complete_letters(self, batch: PromptBatch) -> Letters:
        letters = answer_letters(self.backend, batch)
        self._tally(len(letters), list(letters.failures.values()))
        return letters

    def _tally(self, calls: int, failed: list[tuple[Failure, str]]) -> None:
        """Count `calls` calls of which `failed` (kind, error) failed, in call order."""
        unavailable = [error for kind, error in failed if kind == "unavailable"]
        if unavailable:
            raise ModelUnavailable(
                f"the model or endpoint is unavailable: {len(unavailable)} of "
                f"{calls} model calls of {self.shard} failed "
                f"({unavailable[0] or 'no reason given'}); {self.shard} is not committed"
            )
        self.calls += calls
        self.failed += len(failed)
        self.first_error = self.first_error or (failed[0][1] if failed else "")

    def stats(self) -> BackendStats:
        return self.backend.stats()

    def backend_counters(self) -> dict[str, int]:
        """The shard's requests asked again after an outage, batches and batch retries by
        reason (openai batch mode), nonzero only."""
        before, after = self.stats_before, self.backend.stats()
        counters = {
            "outage_retried": after.outage_retried - before.outage_retried,
            "batches": after.batches - before.batches,
        } | {
            f"batch_retried_{reason}": n - before.batch_retried.get(reason, 0)
            for reason, n in after.batch_retried.items()
        }
        return {name: n for name, n in counters.items() if n}

    def check(self) -> None:
        if self.calls and self.failed == self.calls:
            raise ModelUnavailable(
                f"the model or endpoint is unavailable: all {self.calls} model calls of "
                f"{self.shard} failed ({self.first_error or 'no reason given'})"
            )
