"""Batch mode of the `openai` backend against the scripted server's files and batches API:
results matched by custom_id, items that did not come back retried and counted by reason,
progress lines while waiting, and the journal that keeps a batch from being submitted twice."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from fspo_data.backends.openai_backend import OpenAIBackend, OpenAISettings
from fspo_data.backends.openai_batch import batch_file, read_results
from fspo_data.core.chat import ChatRequest

from .fake_openai_server import BatchScript, FakeOpenAIServer, expected_text
from .test_openai_backend import KEY_ENV, make_requests, request_payload


def batch_backend(
    server: FakeOpenAIServer, journal: Path | None = None, path: str = ""
) -> OpenAIBackend:
    settings = OpenAISettings(
        base_url=server.base_url + path,
        model=server.model,
        api_key_env=KEY_ENV,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        request_mode="batch",
        batch_poll_interval_s=0.01,
    )
    return OpenAIBackend(settings, journal)


def texts(requests: list[ChatRequest]) -> list[str]:
    return [expected_text(request_payload(r)) for r in requests]


def test_read_results_matches_lines_by_custom_id_whatever_their_order() -> None:
    requests = make_requests(4, top_logprobs=2)
    lines = [json.loads(line) for line in batch_file("m", requests).decode().splitlines()]
    output = []
    for line in reversed(lines):
        body = {
            "choices": [
                {
                    "message": {"content": line["custom_id"]},
                    "finish_reason": "stop",
                    "logprobs": {
                        "content": [
                            {
                                "token": "A",
                                "logprob": -0.1,
                                "top_logprobs": [{"token": "B", "logprob": -2.0}],
                            }
                        ]
                    },
                }
            ]
        }
        output.append(
            {"custom_id": line["custom_id"], "response": {"status_code": 200, "body": body}}
        )
    output[0]["response"]["body"] = {"choices": []}  # the last request's answer is malformed
    unknown = {"custom_id": "request-99", "response": {"status_code": 200, "body": {}}}
    text = "\n".join(json.dumps(line) for line in [*output[:2], unknown, *output[3:]])
    results = read_results(requests, "completed", [text + '\n{"cut'])

    assert [r if isinstance(r, str) else r.text for r in results] == [
        "request-0",
        "missing",  # its line (output[2]) was left out
        "request-2",
        "malformed",
    ]
    assert results[0].first_token_logprobs == {"A": -0.1, "B": -2.0}
    assert read_results(requests, "expired", [])[0] == "expired"


def test_batch_mode_gives_the_answers_of_sync_mode_in_request_order(caplog) -> None:
    requests = make_requests(12, top_logprobs=3)
    with FakeOpenAIServer(batch_script=BatchScript(polls_in_progress=2, shuffle_seed=5)) as server:
        backend = batch_backend(server)
        with caplog.at_level(logging.INFO, logger="fspo_data.backends.openai_batch"):
            completions = backend.complete(requests)
        batch = server.batches["batch-0"]
        output = server.files[batch["output_file_id"]].decode().splitlines()

    assert [c.text for c in completions] == texts(requests)
    assert all(c.first_token_logprobs == {"A": -0.5, "B": -1.0} for c in completions)
    assert all(c.finish_reason == "stop" and c.prompt_tokens > 0 for c in completions)
    order = [json.loads(line)["custom_id"] for line in output]
    assert order != sorted(order, key=lambda name: int(name.split("-")[1]))  # shuffled
    assert server.counters.calls == 0  # nothing went the synchronous way
    assert len(server.counters.batch_creates) == 1
    stats = backend.stats()
    assert (stats.requests, stats.batches, stats.batch_retried) == (12, 1, {})
    progress = [r.getMessage() for r in caplog.records if "in_progress" in r.getMessage()]
    assert progress and "of 12 requests done" in progress[0]


def test_failed_malformed_and_expired_items_are_retried_and_counted_by_reason() -> None:
    requests = make_requests(8)
    script = BatchScript(errors=frozenset({1, 4}), malformed=frozenset({2}), expire_after=6)
    with FakeOpenAIServer(batch_script=script) as server:
        backend = batch_backend(server)
        completions = backend.complete(requests)
        synchronous = server.counters.calls

    assert all(c.ok for c in completions)
    assert [c.text for c in completions] == texts(requests)
    assert [c.retries for c in completions] == [0, 1, 1, 0, 1, 0, 1, 1]
    assert synchronous == 5
    assert backend.stats().batch_retried == {"error": 2, "malformed": 1, "expired": 2}


def test_the_journal_keeps_a_batch_from_being_submitted_twice(tmp_path) -> None:
    requests = make_requests(3)
    with FakeOpenAIServer() as server:
        first = batch_backend(server, tmp_path).complete(requests)
        # A later backend (a resumed driver) with the same requests finds the journal.
        again = batch_backend(server, tmp_path).complete(requests)
        creates, uploads = list(server.counters.batch_creates), server.counters.uploads

    digest = hashlib.sha256(batch_file(server.model, requests)).hexdigest()
    journal = json.loads((tmp_path / f"{digest}.json").read_text())
    assert journal.pop("progress").startswith("openai batch batch-0: completed, 3 of 3 requests")
    assert journal == {"batch_id": "batch-0", "input_file_id": "file-0"}
    assert creates == [digest] and uploads == 1
    assert [c.text for c in again] == [c.text for c in first] == texts(requests)


def test_a_journaled_batch_the_server_no_longer_knows_is_submitted_again(tmp_path) -> None:
    requests = make_requests(2)
    with FakeOpenAIServer() as server:
        digest = hashlib.sha256(batch_file(server.model, requests)).hexdigest()
        (tmp_path / f"{digest}.json").write_text('{"batch_id": "batch-gone", "input_file_id": "x"}')
        completions = batch_backend(server, tmp_path).complete(requests)
        creates = len(server.counters.batch_creates)

    assert creates == 1
    assert [c.text for c in completions] == texts(requests)


def test_an_endpoint_without_the_batch_api_fails_every_request_with_the_reason() -> None:
    with FakeOpenAIServer() as server:
        completions = batch_backend(server, path="/missing").complete(make_requests(3))

    assert [(c.ok, c.error) for c in completions] == [
        (False, "batch: http 404: not found: not found")
    ] * 3
