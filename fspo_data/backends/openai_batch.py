"""Batch mode of the `openai` backend (`openai.request_mode: batch`).

One `complete` call becomes one batch file in the OpenAI batch format, a JSON line per
request (custom_id, method, url, body). The file is uploaded (POST /files, purpose 'batch'),
a batch is created (POST /batches) and polled (GET /batches/{id}) until it ends, and its
output and error files (GET /files/{id}/content) are matched back to the requests by
custom_id and parsed by `openai_wire`, the parser of the synchronous path, so a batch answer
becomes the same `Completion` a direct call gives. Each request that did not come back whole
gets a reason (`RETRY_REASONS`); the backend retries those synchronously and counts them.

Resume without paying twice: a shard's requests are deterministic, so a recomputed shard
writes the same bytes. `BatchJournal` keeps RUN_DIR/batches/<sha256 of the file>.json with the
uploaded file id, then the batch id, each written atomically before the next step; a driver
killed while a batch runs finds the journal on resume and polls that batch again instead of
submitting it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import openai

from fspo_data.backends.openai_wire import MalformedCompletion, completion_from_body, request_body
from fspo_data.core import storage
from fspo_data.core.chat import ChatRequest, Completion
from fspo_data.core.model_config import OpenAISettings
from fspo_data.core.shards import atomic_write_bytes, make_dir
from fspo_data.core.storage import Location

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# Why a request is retried: its line was an error ('error'), its answer did not parse
# ('malformed'), the batch ended before it ran ('expired', 'cancelled', or 'error' for a batch
# that failed as a whole), or a completed batch left it out ('missing').
RETRY_REASONS = ("error", "malformed", "expired", "cancelled", "missing")
_UNFINISHED_REASON = {"failed": "error", "expired": "expired", "cancelled": "cancelled"}


def custom_id(index: int) -> str:
    return f"request-{index}"


def batch_file(model: str, requests: list[ChatRequest]) -> bytes:
    """The batch input file of `requests`: the same bytes whenever the requests are the same."""
    lines = (
        json.dumps(
            {
                "custom_id": custom_id(i),
                "method": "POST",
                "url": ENDPOINT,
                "body": request_body(model, request, request.seed),
            },
            sort_keys=True,
        )
        for i, request in enumerate(requests)
    )
    return "".join(line + "\n" for line in lines).encode()


def line_result(line: dict[str, object], top_logprobs: int) -> Completion | str:
    """One output or error line: its `Completion`, or the reason it must be retried."""
    response = line.get("response")
    status = response.get("status_code") if isinstance(response, dict) else None
    if line.get("error") or status != 200:
        return "error"
    try:
        return completion_from_body(response.get("body"), top_logprobs)
    except MalformedCompletion:
        return "malformed"


def read_results(
    requests: list[ChatRequest], batch_status: str, files: list[str]
) -> list[Completion | str]:
    """Per request, in order: its `Completion`, or the reason it must be retried.

    `files` are the batch's output and error files (JSON lines, in any order); a request
    with no line gets the reason the batch ended without it.
    """
    index = {custom_id(i): i for i in range(len(requests))}
    results: list[Completion | str | None] = [None] * len(requests)
    for text in files:
        for raw in text.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # a cut or blank line: its request is retried as missing
            i = index.get(line.get("custom_id")) if isinstance(line, dict) else None
            if i is not None and results[i] is None:
                results[i] = line_result(line, requests[i].top_logprobs)
    missing = _UNFINISHED_REASON.get(batch_status, "missing")
    return [missing if result is None else result for result in results]


class BatchJournal:
    """What was submitted for which batch file, under a folder (RUN_DIR/batches)."""

    def __init__(self, folder: Location | None) -> None:
        self.folder = folder  # None: nothing is kept, a killed driver submits again

    def load(self, digest: str) -> dict[str, str]:
        path = self._path(digest)
        exists = path is not None and storage.exists(path)
        return json.loads(storage.read_bytes(path)) if exists else {}

    def save(self, digest: str, entry: dict[str, str]) -> None:
        path = self._path(digest)
        if path is not None:
            make_dir(path.parent)
            atomic_write_bytes(path, json.dumps(entry, sort_keys=True).encode())

    def progress(self, digest: str) -> Callable[[str], None]:
        """Records a batch's latest progress line, with when it was seen, in its journal."""

        def record(line: str) -> None:
            seen = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            self.save(digest, self.load(digest) | {"progress": f"{line} (at {seen})"})

        return record

    def in_flight(self) -> list[str]:
        """The latest progress line of every journaled batch that has not ended."""
        if self.folder is None:
            return []
        entries = [
            json.loads(storage.read_bytes(p)) for p in storage.list_files(self.folder, "*.json")
        ]
        return [
            e.get("progress", f"openai batch {e.get('batch_id', '?')}: submitted")
            for e in entries
            if not any(f": {status}," in e.get("progress", "") for status in FINAL_STATUSES)
        ]

    def _path(self, digest: str) -> Location | None:
        return None if self.folder is None else self.folder / f"{digest}.json"


async def run_batch(
    client: openai.AsyncOpenAI,
    settings: OpenAISettings,
    requests: list[ChatRequest],
    journal: BatchJournal,
) -> tuple[list[Completion | str], bool]:
    """Submit `requests` as a batch, or find the one the journal names; wait for it and read
    it back. Returns the per-request results (`read_results`) and whether a batch was created.
    """
    payload = batch_file(settings.model, requests)
    digest = hashlib.sha256(payload).hexdigest()
    entry = journal.load(digest)
    created = False
    batch = None
    if "batch_id" in entry:
        try:
            batch = await client.batches.retrieve(entry["batch_id"])
            logger.info("openai batch %s: resumed from the journal", batch.id)
        except openai.NotFoundError:
            logger.warning("openai batch %s is gone; submitting again", entry["batch_id"])
            entry = {}
    if batch is None:
        batch = await _submit(client, settings, payload, digest, entry, journal)
        created = True
    batch = await _wait(client, batch, settings.batch_poll_interval_s, journal.progress(digest))
    files = [
        (await client.files.content(file_id)).text
        for file_id in (batch.output_file_id, batch.error_file_id)
        if file_id
    ]
    return read_results(requests, batch.status, files), created


async def _submit(
    client: openai.AsyncOpenAI,
    settings: OpenAISettings,
    payload: bytes,
    digest: str,
    entry: dict[str, str],
    journal: BatchJournal,
) -> openai.types.Batch:
    # Each id is journaled before the next step, so a kill at any point repeats at most the
    # upload (free), never a batch that is already running.
    if "input_file_id" not in entry:
        uploaded = await client.files.create(file=(f"{digest}.jsonl", payload), purpose="batch")
        entry = {"input_file_id": uploaded.id}
        journal.save(digest, entry)
    batch = await client.batches.create(
        input_file_id=entry["input_file_id"],
        endpoint=ENDPOINT,
        completion_window=settings.batch_completion_window,
        metadata={"fspo_batch_file_sha256": digest},
    )
    journal.save(digest, entry | {"batch_id": batch.id})
    logger.info("openai batch %s: submitted %s", batch.id, entry["input_file_id"])
    return batch


async def _wait(
    client: openai.AsyncOpenAI,
    batch: openai.types.Batch,
    interval_s: float,
    report: Callable[[str], None],
) -> openai.types.Batch:
    """Poll until the batch ends, with a progress line at each look (hours are possible),
    logged and handed to `report` (the journal, which `fspo-data status` reads: engine
    workers' logs do not reach the driver)."""
    while True:
        counts = batch.request_counts
        line = (
            f"openai batch {batch.id}: {batch.status}, {counts.completed if counts else 0} of "
            f"{counts.total if counts else 0} requests done, {counts.failed if counts else 0} "
            "failed"
        )
        logger.info(line)
        report(line)
        if batch.status in FINAL_STATUSES:
            return batch
        await asyncio.sleep(interval_s)
        batch = await client.batches.retrieve(batch.id)
