"""The chat completions wire format: the request body sent and the one parser of an answer.

The synchronous path and batch mode (`openai_batch`) both build bodies and read answers
here, so a batch result becomes the same `Completion` a direct call gives.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from fspo_data.core.chat import ChatRequest, Completion


class MalformedCompletion(Exception):
    """A 200 answer that cannot be turned into a whole `Completion`."""


def request_body(model: str, request: ChatRequest, seed: int) -> dict[str, Any]:
    """Keyword arguments of `chat.completions.create` for one request."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [asdict(message) for message in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": seed,
    }
    if request.top_logprobs > 0:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs
    return body


def parse_completion(raw: bytes, top_logprobs: int) -> Completion:
    """Turn a 200 response body into a `Completion`, or raise `MalformedCompletion`.

    Text is required unless logprobs were asked: a one-token judge answer may decode to
    whitespace, and its logprobs are what the caller reads.
    """
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise MalformedCompletion("invalid JSON body") from exc
    return completion_from_body(body, top_logprobs)


def completion_from_body(body: object, top_logprobs: int) -> Completion:
    """`parse_completion` of a body already decoded (a batch output line holds it decoded)."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedCompletion("empty choices")
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if content is not None and not isinstance(content, str):
        raise MalformedCompletion("content is not a string")
    text = _well_formed(content or "")
    logprobs = first_token_logprobs(choice.get("logprobs")) if top_logprobs > 0 else {}
    if top_logprobs == 0 and not text.strip():
        raise MalformedCompletion("empty content")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details")
    return Completion(
        text=text,
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        cached_prompt_tokens=_count(details, "cached_tokens") if isinstance(details, dict) else 0,
        first_token_logprobs=logprobs,
        finish_reason=choice.get("finish_reason") or "",
    )


def _well_formed(text: str) -> str:
    """`text` with lone UTF-16 surrogates replaced by U+FFFD.

    JSON may escape half a surrogate pair ("\\ud800"); Python decodes it, but UTF-8, and so
    Parquet, cannot hold it, and the shard's write would fail on every resume.
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def first_token_logprobs(logprobs: object) -> dict[str, float]:
    """{stripped decoded token: best logprob} over the first token and its alternatives.

    Several tokens decode to the same answer (" A", "A"); the best of them stands for it.
    """
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        raise MalformedCompletion("missing logprobs")
    first = content[0]
    alternatives = first.get("top_logprobs")
    if not isinstance(alternatives, list) or not alternatives:
        raise MalformedCompletion("missing top_logprobs")
    best: dict[str, float] = {}
    for entry in [first, *alternatives]:
        token = entry.get("token") if isinstance(entry, dict) else None
        logprob = entry.get("logprob") if isinstance(entry, dict) else None
        if not isinstance(token, str) or not isinstance(logprob, int | float):
            raise MalformedCompletion("bad logprob entry")
        key = token.strip()
        best[key] = max(best.get(key, -math.inf), float(logprob))
    return best


def _count(mapping: dict[str, Any], key: str) -> int:
    value = mapping.get(key)
    return value if isinstance(value, int) and value >= 0 else 0
