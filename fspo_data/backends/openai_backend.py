"""The `openai` backend: any OpenAI-compatible chat endpoint (`vllm serve`, hosted APIs).

Requests run concurrently on an `openai.AsyncOpenAI` client, bounded by a semaphore and by
optional requests/tokens-per-minute buckets. Retries live here, at the network edge, with an
explicit list of retryable statuses; the client's own retries are off so that one policy
(jittered backoff, honouring Retry-After) governs. A request that still fails, or whose answer
stays malformed, comes back failed with its kind (`failure_of`) and reason, never half-formed.

An outage outlasts the per-request budget: requests that failed for want of the endpoint
are asked again in rounds, after pauses that double (`outage_wait_s`), so that an endpoint
restarting mid-shard costs a wait, not records. One still unavailable after that comes back
`unavailable`, and the orchestrator leaves its shard uncommitted.

The API key is read from the environment variable the settings name and is kept out of every
repr, log record and error string.

With `request_mode: batch` a call's requests go out as one batch file instead
(`openai_batch`); what does not come back whole is retried here, synchronously.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import openai
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from fspo_data.backends.openai_batch import BatchJournal, run_batch
from fspo_data.backends.openai_wire import MalformedCompletion, parse_completion, request_body
from fspo_data.core.chat import BackendStats, ChatRequest, Completion, Failure
from fspo_data.core.model_config import OpenAISettings

logger = logging.getLogger(__name__)

PLACEHOLDER_API_KEY = "EMPTY"
RETRYABLE_STATUSES = frozenset({408, 409, 429})  # plus every 5xx
RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_ERROR_CHARS = 200

T = TypeVar("T")


@dataclass
class _Tally:
    """Per-request attempt counters that pick which retry budget an error spends."""

    attempts: int = 0
    transient: int = 0
    malformed: int = 0


class TokenBucket:
    """A per-minute budget refilled continuously; capacity is one minute's worth.

    `reserve` books the amount at once (the level may go negative) and returns how long the
    caller must wait, so waiters queue fairly without polling. A threading lock, not an
    asyncio one, because the bucket outlives the event loop of any one `complete` call.
    """

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._capacity = per_minute
        self._level = per_minute
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self, amount: float) -> float:
        with self._lock:
            now = self._clock()
            self._level = min(self._capacity, self._level + (now - self._stamp) * self._rate)
            self._stamp = now
            self._level -= amount
            return max(0.0, -self._level / self._rate)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute buckets; either may be absent."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self._requests = TokenBucket(requests_per_minute) if requests_per_minute else None
        self._tokens = TokenBucket(tokens_per_minute) if tokens_per_minute else None

    async def acquire(self, tokens: int) -> None:
        wait = 0.0
        if self._requests is not None:
            wait = self._requests.reserve(1)
        if self._tokens is not None:
            wait = max(wait, self._tokens.reserve(tokens))
        if wait > 0:
            await asyncio.sleep(wait)


def estimate_tokens(request: ChatRequest) -> int:
    """Tokens a request may use: all of max_tokens plus ~4 prompt characters per token."""
    prompt_chars = sum(len(message.content) for message in request.messages)
    return request.max_tokens + math.ceil(prompt_chars / 4)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: timeouts, lost connections, 408/409/429 and 5xx."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUSES or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)  # APITimeoutError included


def failure_of(exc: BaseException) -> Failure:
    """The kind of a failure that outlived the retries: the endpoint was unavailable (worth
    asking again later), it refused the request (another 4xx), or its answer was unusable."""
    if isinstance(exc, MalformedCompletion):
        return "bad_output"
    return "unavailable" if is_transient(exc) else "refused"


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, MalformedCompletion) or is_transient(exc)


def retry_after_s(exc: BaseException | None) -> float | None:
    """The server's Retry-After in seconds on a 429/503, if it sent a number."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in RETRY_AFTER_STATUSES:
        return None
    try:
        seconds = float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: fall back to backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class BackoffOrRetryAfter:
    """Tenacity wait: the server's Retry-After when it gives one, else full-jitter backoff."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self._backoff = wait_random_exponential(multiplier=initial_s, max=max_s)
        self._max_s = max_s

    def __call__(self, state: RetryCallState) -> float:
        hinted = retry_after_s(state.outcome.exception() if state.outcome else None)
        if hinted is not None:
            return min(hinted, self._max_s)
        return self._backoff(state)


def describe_error(exc: BaseException) -> str:
    """A reason such as 'http 400: bad request: <server message>'; pass it to `safe_error`."""
    if isinstance(exc, MalformedCompletion):
        return f"malformed: {exc}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection error: {type(cause).__name__}" if cause else "connection error"
    if isinstance(exc, openai.APIStatusError):
        return _describe_status(exc)
    return type(exc).__name__


def _describe_status(exc: openai.APIStatusError) -> str:
    try:
        phrase = HTTPStatus(exc.status_code).phrase.lower()
    except ValueError:
        phrase = "error"
    detail = ""
    if isinstance(exc.body, dict):
        error = exc.body.get("error", exc.body)
        message = error.get("message") if isinstance(error, dict) else error
        detail = str(message or "")
    return f"http {exc.status_code}: {phrase}" + (f": {detail}" if detail else "")


def scrub(text: str, secret: str) -> str:
    """Remove the key from text a server or library produced (some echo request headers)."""
    if not secret or secret == PLACEHOLDER_API_KEY:
        return text
    return text.replace(secret, "***")


def safe_error(text: str, secret: str) -> str:
    """Scrub, then cap the length: capping first could cut the key and let a prefix through."""
    return scrub(text, secret)[:MAX_ERROR_CHARS]


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop.

    `asyncio.run` refuses to nest (Ray async actors, notebooks), so in that case the
    coroutine gets a private loop on a helper thread and this thread blocks on it.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-backend") as pool:
        return pool.submit(asyncio.run, coroutine).result()


class OpenAIBackend:
    """`LLMBackend` over an OpenAI-compatible endpoint; batch ids are journaled under
    `batch_journal` (RUN_DIR/batches in a job)."""

    def __init__(self, settings: OpenAISettings, batch_journal: Path | None = None) -> None:
        self.settings = settings
        self.model_name = settings.model
        self._journal = BatchJournal(batch_journal)
        self._api_key = SecretStr(os.environ.get(settings.api_key_env) or PLACEHOLDER_API_KEY)
        self._limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self._stats = BackendStats()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model_name!r}, base_url={self.settings.base_url!r})"

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        started = time.perf_counter()
        completions = self._outlast_outage(requests, run_sync(self._complete(requests)))
        with self._stats_lock:
            self._stats.add(completions, time.perf_counter() - started)
        self._log_failures(completions)
        return completions

    def stats(self) -> BackendStats:
        with self._stats_lock:
            return self._stats.model_copy()

    def _complete(self, requests: list[ChatRequest]) -> Coroutine[Any, Any, list[Completion]]:
        batch = self.settings.request_mode == "batch"
        return self._complete_batch(requests) if batch else self._complete_all(requests)

    def _outlast_outage(
        self, requests: list[ChatRequest], completions: list[Completion]
    ) -> list[Completion]:
        """Ask the requests that failed as `unavailable` again, all together, after pauses
        that start at `backoff_max_s` and double, until they are answered or `outage_wait_s`
        of pauses is spent. The requests are the same (same seeds), so are their answers."""
        waited, pause = 0.0, self.settings.backoff_max_s
        while waited < self.settings.outage_wait_s:
            waiting = [i for i, c in enumerate(completions) if c.failure == "unavailable"]
            if not waiting:
                break
            pause = min(pause, self.settings.outage_wait_s - waited)
            logger.warning(
                "openai backend: the endpoint is unavailable for %d of %d requests (%s); "
                "asking them again in %.1fs",
                len(waiting),
                len(requests),
                completions[waiting[0]].error,
                pause,
            )
            time.sleep(pause)
            waited, pause = waited + pause, pause * 2
            again = run_sync(self._complete([requests[i] for i in waiting]))
            for i, completion in zip(waiting, again, strict=True):
                completion.retries += completions[i].retries + 1
                completions[i] = completion
            with self._stats_lock:
                self._stats.outage_retried += len(waiting)
        return completions

    def _client(self, max_retries: int) -> openai.AsyncOpenAI:
        # Clients belong to one call's event loop; a new loop may run the next call.
        return openai.AsyncOpenAI(
            base_url=self.settings.base_url,
            api_key=self._api_key.get_secret_value(),
            max_retries=max_retries,
            timeout=self.settings.request_timeout_s,
        )

    async def _complete_all(self, requests: list[ChatRequest]) -> list[Completion]:
        semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        async with self._client(max_retries=0) as client:
            jobs = (self._complete_one(client, semaphore, request) for request in requests)
            return list(await asyncio.gather(*jobs))

    async def _complete_batch(self, requests: list[ChatRequest]) -> list[Completion]:
        """One batch; then what did not come back whole, synchronously (one retry each)."""
        # The few batch-control calls use the client's own retries (its backoff honours
        # Retry-After too); the per-request policy above is for the many chat calls.
        try:
            async with self._client(max_retries=self.settings.max_retries) as client:
                results, created = await run_batch(client, self.settings, requests, self._journal)
        except openai.APIError as exc:
            # No batch API, a refused key, an endpoint down past the retries: every request
            # fails with the reason, as a direct call would (a shard of them stops the run).
            error = self._safe_error(f"batch: {describe_error(exc)}")
            return [Completion(failure=failure_of(exc), error=error) for _ in requests]
        retry = [i for i, result in enumerate(results) if isinstance(result, str)]
        redone = await self._complete_all([requests[i] for i in retry]) if retry else []
        with self._stats_lock:
            self._stats.batches += created
            for i in retry:
                reason = results[i]
                self._stats.batch_retried[reason] = self._stats.batch_retried.get(reason, 0) + 1
        for completion in redone:
            completion.retries += 1  # the batch was its first attempt
        again = dict(zip(retry, redone, strict=True))
        return [again[i] if isinstance(r, str) else r for i, r in enumerate(results)]

    async def _complete_one(
        self, client: openai.AsyncOpenAI, semaphore: asyncio.Semaphore, request: ChatRequest
    ) -> Completion:
        tally = _Tally()
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_retryable),
            stop=lambda _state: self._budget_spent(tally),
            wait=BackoffOrRetryAfter(self.settings.backoff_initial_s, self.settings.backoff_max_s),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    completion = await self._attempt(client, semaphore, request, tally)
        except (openai.APIError, MalformedCompletion) as exc:
            error = self._safe_error(describe_error(exc))
            return Completion(failure=failure_of(exc), error=error, retries=tally.attempts - 1)
        completion.retries = tally.attempts - 1
        return completion

    async def _attempt(
        self,
        client: openai.AsyncOpenAI,
        semaphore: asyncio.Semaphore,
        request: ChatRequest,
        tally: _Tally,
    ) -> Completion:
        tally.attempts += 1
        body = request_body(self.model_name, request, request.seed + tally.malformed)
        try:
            async with semaphore:
                await self._limiter.acquire(estimate_tokens(request))
                raw = await client.chat.completions.with_raw_response.create(**body)
            return parse_completion(raw.content, request.top_logprobs)
        except MalformedCompletion:
            tally.malformed += 1
            raise
        except openai.APIError as exc:
            tally.transient += is_transient(exc)
            raise

    def _budget_spent(self, tally: _Tally) -> bool:
        return (
            tally.transient > self.settings.max_retries
            or tally.malformed > self.settings.max_malformed_retries
        )

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = self._safe_error(describe_error(exc)) if exc else "unknown"
        logger.debug(
            "openai backend: attempt %d failed (%s); retrying in %.2fs",
            state.attempt_number,
            reason,
            state.upcoming_sleep,
        )

    def _log_failures(self, completions: list[Completion]) -> None:
        failed = [c for c in completions if not c.ok]
        if failed:
            logger.warning(
                "openai backend: %d of %d requests failed (first: %s)",
                len(failed),
                len(completions),
                failed[0].error,
            )

    def _safe_error(self, text: str) -> str:
        return safe_error(text, self._api_key.get_secret_value())
