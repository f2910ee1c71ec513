"""A scripted OpenAI-compatible server on 127.0.0.1 for backend tests (a test double).

It answers `POST /v1/chat/completions` with a deterministic text (a hash of the request) and,
when asked, first-token logprobs in the OpenAI format; a seeded fault script makes some calls
fail the ways real servers do. Counters say what happened, so tests can compare the client's
retries with the faults injected.

It also plays the batch API: `POST /v1/files` (multipart upload), `POST /v1/batches`,
`GET /v1/batches/{id}` and `GET /v1/files/{id}/content`. A batch answers `in_progress` for
`BatchScript.polls_in_progress` status checks (or while a test holds batches), then runs its
lines like chat calls, with scripted item errors, malformed answers and expiry, and writes
its output lines in a shuffled order.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

# "drop" closes the connection without an answer (a server going away mid-call).
Fault = Literal[
    "429",
    "500",
    "503",
    "drop",
    "slow",
    "truncated",
    "empty",
    "null_content",
    "no_logprobs",
    "400",
    "401",
]
RETRYABLE_FAULTS: tuple[Fault, ...] = ("429", "500", "slow", "truncated", "empty")

# First-token alternatives served when logprobs are asked: several decode to the same
# stripped string, so tests can check that the best one wins.
FIRST_TOKEN_ALTERNATIVES: tuple[tuple[str, float], ...] = (
    (" A", -0.5),
    ("A", -0.7),
    (" B", -1.0),
    ("B", -1.2),
    ("\n", -3.0),
    (" C", -4.0),
)


@dataclass
class FaultScript:
    """Which calls fail and how. `sequence` scripts the first calls; `rate` the rest."""

    rate: float = 0.0
    kinds: tuple[Fault, ...] = RETRYABLE_FAULTS
    sequence: tuple[Fault | None, ...] = ()
    always: Fault | None = None
    seed: int = 0
    retry_after: str = "0"
    slow_s: float = 2.0
    latency_s: float = 0.0
    echo_auth_in_errors: bool = False


@dataclass
class BatchScript:
    """How scripted batches end; indices are lines of a batch's input file."""

    errors: frozenset[int] = frozenset()  # go to the error file as HTTP 500
    malformed: frozenset[int] = frozenset()  # answer 200 with no choices
    expire_after: int | None = None  # only the first n lines run; the batch ends 'expired'
    polls_in_progress: int = 1
    shuffle_seed: int = 0


@dataclass
class ServerCounters:
    calls: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    call_times: list[float] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: set[str] = field(default_factory=set)
    uploads: int = 0
    # sha256 of each batch's input file, once per POST /v1/batches: a repeat is a batch paid twice
    batch_creates: list[str] = field(default_factory=list)
    batch_polls: int = 0

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())


def expected_text(body: dict[str, Any]) -> str:
    """The text the server returns for a request body: a hash of its messages and seed."""
    key = json.dumps([body["messages"], body.get("seed")], sort_keys=True)
    return "echo " + hashlib.sha256(key.encode()).hexdigest()[:16]


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connects under a burst of concurrent clients; the client
    # then times out before the server ever sees the call, and retries stop matching faults.
    request_queue_size = 128


class FakeOpenAIServer:
    """Serve until the `with` block ends; `base_url` ends in /v1 like real endpoints.

    `reply` maps a request body to the answer's text (default `expected_text`), so a test can
    play a model that writes hostile text; `finish_reason` maps it to why the answer ended
    (default 'stop'), so a test can play a model cut at max_tokens ('length').
    """

    def __init__(
        self,
        script: FaultScript | None = None,
        model: str = "fake-model",
        reply: Callable[[dict[str, Any]], str] = expected_text,
        finish_reason: Callable[[dict[str, Any]], str] = lambda _: "stop",
        batch_script: BatchScript | None = None,
    ) -> None:
        self.script = script or FaultScript()
        self.batch_script = batch_script or BatchScript()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._polls: Counter[str] = Counter()
        # While set, every batch answers in_progress: a test holds a job between submit and
        # collect, then releases it.
        self.hold_batches = threading.Event()
        self.model = model
        self.reply = reply
        self.finish_reason = finish_reason
        self.counters = ServerCounters()
        self._lock = threading.Lock()
        self._rng = random.Random(self.script.seed)
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        # A short poll interval so that shutdown, which waits for the next poll, is quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()  # wakes handlers sleeping in a "slow" fault
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def begin_call(self, body: dict[str, Any], auth: str) -> Fault | None:
        with self._lock:
            index = self.counters.calls
            self.counters.calls += 1
            self.counters.call_times.append(time.monotonic())
            self.counters.bodies.append(body)
            self.counters.auth_headers.add(auth)
            self.counters.in_flight += 1
            self.counters.max_in_flight = max(self.counters.max_in_flight, self.counters.in_flight)
            fault = self._pick_fault(index)
            if fault is not None:
                self.counters.faults[fault] += 1
            return fault

    def end_call(self) -> None:
        with self._lock:
            self.counters.in_flight -= 1

    def sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def add_file(self, content: bytes, purpose: str) -> dict[str, Any]:
        with self._lock:
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = content
            self.counters.uploads += purpose == "batch"
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": 0,
            "filename": f"{file_id}.jsonl",
            "purpose": purpose,
            "status": "processed",
        }

    def create_batch(self, request: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            content = self.files.get(request.get("input_file_id", ""))
            if content is None:
                return None
            self.counters.batch_creates.append(hashlib.sha256(content).hexdigest())
            batch_id = f"batch-{len(self.batches)}"
            lines = content.decode().splitlines()
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": request["endpoint"],
                "input_file_id": request["input_file_id"],
                "completion_window": request["completion_window"],
                "created_at": 0,
                "status": "validating",
                "request_counts": {"completed": 0, "failed": 0, "total": len(lines)},
                "metadata": request.get("metadata"),
            }
            return dict(self.batches[batch_id])

    def poll_batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            self.counters.batch_polls += 1
            if batch["status"] in ("validating", "in_progress"):
                self._polls[batch_id] += 1
                held = self.hold_batches.is_set()
                if held or self._polls[batch_id] <= self.batch_script.polls_in_progress:
                    batch["status"] = "in_progress"
                else:
                    self._finish(batch)
            return dict(batch)

    def _finish(self, batch: dict[str, Any]) -> None:
        script = self.batch_script
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].splitlines()]
        ran = lines if script.expire_after is None else lines[: script.expire_after]
        outputs, errors = [], []
        for index, line in enumerate(ran):
            body, status = line["body"], 200
            if index in script.errors:
                status, answer = 500, {"error": {"message": "scripted batch item error"}}
            else:
                fault: Fault | None = "empty" if index in script.malformed else None
                answer = _completion(body, self, self.reply(body), fault)
            result = {
                "id": f"{batch['id']}-{index}",
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": f"req-{index}", "body": answer},
                "error": None,
            }
            (outputs if status == 200 else errors).append(json.dumps(result))
        random.Random(script.shuffle_seed).shuffle(outputs)
        for key, found in (("output_file_id", outputs), ("error_file_id", errors)):
            if found:
                file_id = f"file-{len(self.files)}"
                self.files[file_id] = "".join(line + "\n" for line in found).encode()
                batch[key] = file_id
        batch["status"] = "completed" if script.expire_after is None else "expired"
        batch["request_counts"] |= {"completed": len(outputs), "failed": len(errors)}

    def _pick_fault(self, index: int) -> Fault | None:
        if self.script.always is not None:
            return self.script.always
        if index < len(self.script.sequence):
            return self.script.sequence[index]
        if self._rng.random() < self.script.rate:
            return self._rng.choice(self.script.kinds)
        return None


def _handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean

        def do_GET(self) -> None:
            path = self.path.rstrip("/")
            if path == "/v1/models":
                self._send_json(200, {"object": "list", "data": [{"id": server.model}]})
            elif path.startswith("/v1/batches/"):
                batch = server.poll_batch(path.removeprefix("/v1/batches/"))
                self._send_json(*((200, batch) if batch else NOT_FOUND))
            elif path.startswith("/v1/files/") and path.endswith("/content"):
                content = server.files.get(path.split("/")[3])
                if content is None:
                    self._send_json(*NOT_FOUND)
                else:
                    self._send_raw(200, content)
            else:
                self._send_json(*NOT_FOUND)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            path = self.path.rstrip("/")
            if path == "/v1/files":
                self._send_json(200, server.add_file(*_multipart_upload(self.headers, raw)))
            elif path == "/v1/batches":
                batch = server.create_batch(json.loads(raw))
                self._send_json(*((200, batch) if batch else NOT_FOUND))
            elif path == "/v1/chat/completions":
                self._chat(json.loads(raw))
            else:
                self._send_json(*NOT_FOUND)

        def _chat(self, body: dict[str, Any]) -> None:
            fault = server.begin_call(body, self.headers.get("Authorization", ""))
            try:
                server.sleep(server.script.latency_s)
                self._answer(body, fault)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout), as real clients do
            finally:
                server.end_call()

        def _answer(self, body: dict[str, Any], fault: Fault | None) -> None:
            script = server.script
            auth = self.headers.get("Authorization", "")
            detail = f" (got {auth})" if script.echo_auth_in_errors else ""
            text = server.reply(body)
            if fault == "429":
                error = {"error": {"message": "rate limited" + detail}}
                self._send_json(429, error, {"Retry-After": script.retry_after})
            elif fault == "500":
                self._send_json(500, {"error": {"message": "internal error" + detail}})
            elif fault == "503":
                error = {"error": {"message": "engine is restarting" + detail}}
                self._send_json(503, error, {"Retry-After": script.retry_after})
            elif fault == "drop":
                self.close_connection = True  # nothing sent: the client sees the line drop
            elif fault == "400":
                self._send_json(400, {"error": {"message": "scripted bad request" + detail}})
            elif fault == "401":  # hosted APIs name the key they refused
                self._send_json(401, {"error": {"message": "invalid api key" + detail}})
            elif fault == "slow":
                server.sleep(script.slow_s)
                self._send_json(200, _completion(body, server, text))
            elif fault == "truncated":
                raw = json.dumps(_completion(body, server, text)).encode()
                self._send_raw(200, raw[: len(raw) // 2])
            else:
                self._send_json(200, _completion(body, server, text, fault))

        def _send_json(
            self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            self._send_raw(status, json.dumps(payload).encode(), headers)

        def _send_raw(self, status: int, raw: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

    return Handler


NOT_FOUND = (404, {"error": {"message": "not found"}})


def _multipart_upload(headers: Any, raw: bytes) -> tuple[bytes, str]:
    """(file content, purpose) of a multipart/form-data upload."""
    head = f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    parts = {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }
    return parts["file"], parts["purpose"].decode()


def _completion(
    body: dict[str, Any], server: FakeOpenAIServer, text: str, fault: Fault | None = None
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": None if fault == "null_content" else text},
        "finish_reason": server.finish_reason(body),
        "logprobs": None,
    }
    top_k = int(body.get("top_logprobs") or 0)
    if body.get("logprobs") and fault != "no_logprobs":
        choice["logprobs"] = {"content": [_first_token_entry(top_k)]}
    prompt_chars = sum(len(m["content"]) for m in body["messages"])
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": server.model,
        "choices": [] if fault == "empty" else [choice],
        "usage": {
            "prompt_tokens": prompt_chars // 4 + 1,
            "completion_tokens": len(text.split()),
            "total_tokens": prompt_chars // 4 + 1 + len(text.split()),
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    }


def _first_token_entry(top_k: int) -> dict[str, Any]:
    token, logprob = FIRST_TOKEN_ALTERNATIVES[0]
    alternatives = [
        {"token": t, "logprob": lp, "bytes": list(t.encode())}
        for t, lp in FIRST_TOKEN_ALTERNATIVES[:top_k]
    ]
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": alternatives,
    }
