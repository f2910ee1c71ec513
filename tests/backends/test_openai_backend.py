"""The OpenAI-compatible backend against a scripted local server: retries, limits, secrecy."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, replace

import pytest

from fspo_data.backends.openai_backend import (
    OpenAIBackend,
    OpenAISettings,
    TokenBucket,
    estimate_tokens,
    safe_error,
    scrub,
)
from fspo_data.backends.openai_wire import (
    MalformedCompletion,
    first_token_logprobs,
    parse_completion,
)
from fspo_data.core.chat import ChatMessage, ChatRequest, LLMBackend

from .fake_openai_server import (
    FakeOpenAIServer,
    Fault,
    FaultScript,
    expected_text,
)

SECRET = "sk-test-SECRET123"
KEY_ENV = "FSPO_TEST_OPENAI_KEY"


def make_requests(n: int, top_logprobs: int = 0, max_tokens: int = 8) -> list[ChatRequest]:
    return [
        ChatRequest(
            messages=[
                ChatMessage(role="system", content="be brief"),
                ChatMessage(role="user", content=f"question {i}"),
            ],
            max_tokens=max_tokens,
            temperature=0.7,
            top_p=0.9,
            seed=1000 + i,
            top_logprobs=top_logprobs,
        )
        for i in range(n)
    ]


def make_backend(server: FakeOpenAIServer, **overrides: object) -> OpenAIBackend:
    settings = {
        "base_url": server.base_url,
        "model": server.model,
        "api_key_env": KEY_ENV,
        "request_timeout_s": 2.0,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "outage_wait_s": 0.0,  # fail as unavailable at once; the rounds have their own tests
        **overrides,
    }
    return OpenAIBackend(OpenAISettings(**settings))


def request_payload(request: ChatRequest, seed: int | None = None) -> dict[str, object]:
    return {
        "messages": [asdict(m) for m in request.messages],
        "seed": request.seed if seed is None else seed,
    }


def test_twenty_percent_faults_all_complete_and_retries_match_faults() -> None:
    # Timeouts ("slow") are left to their own tests: on a loaded machine an ordinary call can
    # time out too, and the retry count would no longer equal the faults injected.
    kinds: tuple[Fault, ...] = ("429", "500", "truncated", "empty")
    script = FaultScript(rate=0.2, kinds=kinds, seed=7)
    requests = make_requests(40, top_logprobs=3)
    with FakeOpenAIServer(script) as server:
        backend = make_backend(server, max_retries=8, max_malformed_retries=8)
        completions = backend.complete(requests)
    counters = server.counters

    assert all(c.ok for c in completions), [c.error for c in completions if not c.ok]
    assert set(counters.faults) == set(kinds)
    assert sum(c.retries for c in completions) == counters.total_faults
    assert counters.calls == len(requests) + counters.total_faults
    stats = backend.stats()
    assert (stats.requests, stats.failed, stats.retries) == (40, 0, counters.total_faults)
    # A malformed answer is asked again with the next seed, so texts are checked against the
    # seed the server last saw for each request.
    final_seed = {b["messages"][-1]["content"]: b["seed"] for b in counters.bodies}
    for request, completion in zip(requests, completions, strict=True):
        seed = final_seed[request.messages[-1].content]
        assert completion.text == expected_text(request_payload(request, seed))
        assert completion.first_token_logprobs == {"A": -0.5, "B": -1.0}


def test_results_come_back_in_request_order_with_usage() -> None:
    requests = make_requests(12)
    with FakeOpenAIServer() as server:
        completions = make_backend(server).complete(requests)
    assert [c.text for c in completions] == [expected_text(request_payload(r)) for r in requests]
    assert all(c.prompt_tokens > 0 and c.completion_tokens == 2 for c in completions)
    assert all(c.cached_prompt_tokens == 3 and c.retries == 0 for c in completions)


def test_the_finish_reason_is_read() -> None:
    requests = make_requests(4)
    cut = {"question 1", "question 3"}
    with FakeOpenAIServer(
        finish_reason=lambda body: "length" if body["messages"][-1]["content"] in cut else "stop"
    ) as server:
        completions = make_backend(server).complete(requests)
    assert [c.finish_reason for c in completions] == ["stop", "length", "stop", "length"]
    assert [c.truncated for c in completions] == [False, True, False, True]


def test_sampling_parameters_reach_the_server() -> None:
    (request,) = make_requests(1, top_logprobs=5)
    with FakeOpenAIServer() as server:
        make_backend(server).complete([request])
    (body,) = server.counters.bodies
    assert body["model"] == server.model
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 8)
    assert (body["seed"], body["logprobs"], body["top_logprobs"]) == (1000, True, 5)


def test_no_logprobs_asked_when_top_logprobs_is_zero() -> None:
    with FakeOpenAIServer() as server:
        make_backend(server).complete(make_requests(1))
    (body,) = server.counters.bodies
    assert "logprobs" not in body and "top_logprobs" not in body


def test_retry_after_is_honoured() -> None:
    script = FaultScript(sequence=("429",), retry_after="1")
    with FakeOpenAIServer(script) as server:
        backend = make_backend(server, backoff_initial_s=0.001, backoff_max_s=5.0)
        (completion,) = backend.complete(make_requests(1))
    first, second = server.counters.call_times
    assert completion.ok and completion.retries == 1
    assert second - first >= 0.95  # backoff alone would have waited ~1 ms


def test_a_timed_out_call_is_retried() -> None:
    with FakeOpenAIServer(FaultScript(sequence=("slow",), slow_s=5.0)) as server:
        (completion,) = make_backend(server, request_timeout_s=0.3).complete(make_requests(1))
    assert completion.ok and completion.retries >= 1  # more only if the machine is overloaded
    assert server.counters.faults == {"slow": 1}


@pytest.mark.parametrize(
    ("fault", "error"),
    [("500", "http 500: internal server error: internal error"), ("slow", "timeout")],
)
def test_transient_errors_stop_after_max_retries(fault: Fault, error: str) -> None:
    with FakeOpenAIServer(FaultScript(always=fault, slow_s=5.0)) as server:
        backend = make_backend(server, max_retries=2, request_timeout_s=0.2)
        (completion,) = backend.complete(make_requests(1))
    assert completion.failure == "unavailable" and completion.retries == 2
    assert completion.error == error
    assert server.counters.calls <= 3


def test_bad_request_is_not_retried() -> None:
    with FakeOpenAIServer(FaultScript(always="400")) as server:
        backend = make_backend(server, max_retries=5)
        completions = backend.complete(make_requests(3))
    assert server.counters.calls == 3
    for completion in completions:
        assert completion.failure == "refused" and completion.retries == 0
        assert completion.error == "http 400: bad request: scripted bad request"
        assert completion.text == ""
    assert (backend.stats().failed, backend.stats().retries) == (3, 0)


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_an_outage_past_the_retries_is_waited_out_in_rounds(fault: Fault) -> None:
    # The first 12 calls fail: 4 requests x 3 attempts, the whole retry budget of each.
    script = FaultScript(sequence=(fault,) * 12)
    with FakeOpenAIServer(script) as server:
        backend = make_backend(server, max_retries=2, outage_wait_s=5.0)
        requests = make_requests(4)
        completions = backend.complete(requests)
    assert [c.text for c in completions] == [expected_text(request_payload(r)) for r in requests]
    assert all(c.retries == 3 for c in completions)  # 2 retries, then a round
    assert backend.stats().outage_retried == 4 and backend.stats().failed == 0


def test_an_outage_longer_than_the_wait_fails_as_unavailable() -> None:
    with FakeOpenAIServer(FaultScript(always="503")) as server:
        backend = make_backend(server, max_retries=0, backoff_max_s=0.01, outage_wait_s=0.05)
        (completion,) = backend.complete(make_requests(1))
    assert completion.failure == "unavailable" and completion.error.startswith("http 503")
    # Pauses of 0.01, 0.02 and the 0.02 left: three rounds after the first call.
    assert server.counters.calls == 4 and backend.stats().outage_retried == 3


@pytest.mark.parametrize(
    ("fault", "top_logprobs", "reason"),
    [
        ("empty", 0, "empty choices"),
        ("truncated", 0, "invalid JSON body"),
        ("null_content", 0, "empty content"),
        ("no_logprobs", 3, "missing logprobs"),
    ],
)
def test_malformed_past_budget_fails_without_retrying_forever(
    fault: Fault, top_logprobs: int, reason: str
) -> None:
    with FakeOpenAIServer(FaultScript(always=fault)) as server:
        backend = make_backend(server, max_malformed_retries=2, max_retries=10)
        completions = backend.complete(make_requests(2, top_logprobs=top_logprobs))
    assert server.counters.calls == 2 * 3
    for completion in completions:
        assert completion == replace(
            completion, failure="bad_output", error=f"malformed: {reason}", retries=2
        )
        assert completion.text == "" and completion.first_token_logprobs == {}
    # Each retry asks for the next seed: a deterministic server would repeat the same answer.
    seeds = sorted(body["seed"] for body in server.counters.bodies)
    assert seeds == sorted([1000, 1000 + 1, 1000 + 2, 1001, 1001 + 1, 1001 + 2])


def test_null_content_is_fine_when_only_logprobs_are_wanted() -> None:
    with FakeOpenAIServer(FaultScript(always="null_content")) as server:
        (completion,) = make_backend(server).complete(make_requests(1, top_logprobs=4))
    assert completion.ok and completion.text == ""
    assert completion.first_token_logprobs == {"A": -0.5, "B": -1.0}


def test_concurrency_bound_is_respected() -> None:
    with FakeOpenAIServer(FaultScript(latency_s=0.05)) as server:
        completions = make_backend(server, max_concurrency=3).complete(make_requests(24))
    assert all(c.ok for c in completions)
    assert 2 <= server.counters.max_in_flight <= 3


def test_tokens_per_minute_limit_delays_requests() -> None:
    requests = make_requests(12, max_tokens=100)
    excess = 10  # tokens beyond one minute's budget: ~0.5 s of refill at ~20 tokens/s
    budget = sum(estimate_tokens(r) for r in requests) - excess
    with FakeOpenAIServer() as server:
        backend = make_backend(server, tokens_per_minute=budget)
        started = time.monotonic()
        assert all(c.ok for c in backend.complete(requests))
    assert time.monotonic() - started >= 0.9 * excess / (budget / 60)


def test_token_bucket_books_ahead_and_refills() -> None:
    now = [0.0]
    bucket = TokenBucket(per_minute=60, clock=lambda: now[0])  # 1 per second, capacity 60
    assert bucket.reserve(60) == 0.0
    assert bucket.reserve(2) == pytest.approx(2.0)
    assert bucket.reserve(1) == pytest.approx(3.0)
    now[0] = 10.0
    assert bucket.reserve(1) == 0.0  # the 10 s refill paid the 3 booked and left 6
    now[0] = 1000.0
    assert bucket.reserve(60) == 0.0  # refill stops at capacity
    assert bucket.reserve(1) == pytest.approx(1.0)


def test_complete_works_inside_a_running_event_loop() -> None:
    async def from_async_code(backend: OpenAIBackend) -> list[str]:
        return [c.text for c in backend.complete(make_requests(3))]

    with FakeOpenAIServer() as server:
        texts = asyncio.run(from_async_code(make_backend(server)))
    assert texts == [expected_text(request_payload(r)) for r in make_requests(3)]


def test_the_api_key_never_leaks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    # This server echoes the Authorization header into its errors, as careless proxies do.
    script = FaultScript(sequence=("500", "400"), echo_auth_in_errors=True)
    with FakeOpenAIServer(script) as server:
        backend = make_backend(server, max_concurrency=1)
        settings = backend.settings
        completions = backend.complete(make_requests(1))
    assert server.counters.auth_headers == {f"Bearer {SECRET}"}  # the key is used...
    (completion,) = completions
    assert not completion.ok and "***" in completion.error
    texts = [completion.error, repr(completion), repr(backend), str(backend), repr(settings)]
    texts += [str(settings), settings.model_dump_json(), json.dumps(vars(backend), default=repr)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.args) for record in caplog.records]
    assert caplog.records
    for text in texts:  # ...and appears nowhere else
        assert SECRET not in text


def test_missing_key_sends_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAIServer() as server:
        make_backend(server).complete(make_requests(1))
    assert server.counters.auth_headers == {"Bearer EMPTY"}


def test_backend_satisfies_the_protocol_and_handles_empty_batches() -> None:
    with FakeOpenAIServer() as server:
        backend: LLMBackend = make_backend(server)
        assert backend.complete([]) == []
    assert backend.model_name == "fake-model" and server.counters.calls == 0


def test_settings_refuse_unknown_fields_and_describe_every_field() -> None:
    with pytest.raises(ValueError, match="extra"):
        OpenAISettings(base_url="http://x/v1", model="m", api_key="sk-oops")
    assert all(field.description for field in OpenAISettings.model_fields.values())


def test_first_token_logprobs_keeps_the_best_of_equal_stripped_tokens() -> None:
    logprobs = {
        "content": [
            {
                "token": "B",
                "logprob": -2.0,
                "top_logprobs": [
                    {"token": " A", "logprob": -0.9},
                    {"token": "A", "logprob": -0.4},
                    {"token": "B", "logprob": -2.0},
                    {"token": " B ", "logprob": -1.5},
                    {"token": "\n", "logprob": -5.0},
                ],
            },
            {"token": "ignored", "logprob": -0.1, "top_logprobs": []},
        ]
    }
    assert first_token_logprobs(logprobs) == {"A": -0.4, "B": -1.5, "": -5.0}


@pytest.mark.parametrize(
    "logprobs",
    [
        None,
        {},
        {"content": []},
        {"content": [{"token": "A", "logprob": -1.0}]},
        {"content": [{"token": "A", "logprob": "x", "top_logprobs": [{"token": "A"}]}]},
    ],
)
def test_first_token_logprobs_rejects_missing_or_broken_entries(logprobs: object) -> None:
    with pytest.raises(MalformedCompletion):
        first_token_logprobs(logprobs)


def test_parse_completion_reads_text_and_usage() -> None:
    body = {
        "choices": [{"message": {"content": "hello"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 1, "prompt_tokens_details": None},
    }
    completion = parse_completion(json.dumps(body).encode(), top_logprobs=0)
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == (
        "hello",
        7,
        1,
    )
    assert completion.cached_prompt_tokens == 0 and completion.ok


@pytest.mark.parametrize("raw", [b"[]", b"{}", b'{"choices": [null]}', b'{"choices": [{}]}'])
def test_parse_completion_rejects_shapeless_bodies(raw: bytes) -> None:
    with pytest.raises(MalformedCompletion):
        parse_completion(raw, top_logprobs=0)


def test_scrub_removes_the_key_but_not_the_placeholder() -> None:
    assert scrub(f"Bearer {SECRET} refused", SECRET) == "Bearer *** refused"
    assert scrub("Bearer EMPTY", "EMPTY") == "Bearer EMPTY"


def test_safe_error_scrubs_before_capping_the_length() -> None:
    text = "x" * 190 + SECRET  # the cap (200) falls inside the key
    assert SECRET[:6] not in safe_error(text, SECRET)
    assert len(safe_error("y" * 500, SECRET)) == 200
