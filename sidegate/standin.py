"""A local stand-in provider that speaks OpenAI's, Azure OpenAI's and Anthropic's wire formats.

OpenAI: chat completions, completions, embeddings, moderations, models. Anthropic: messages
and token counting. Azure OpenAI: chat completions and embeddings under a deployment.

It lets ``sidegate demo``, the tests and the benchmarks run with no provider account. It
checks the auth header the way the real APIs do (and, like them, echoes a masked fragment
of a rejected key in the 401 message) and records what it received, so a test can prove
which key reached the provider and which client headers did not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]
    key: str | None  # the credential the provider saw, whatever header carried it


@dataclasses.dataclass
class StandInState:
    accepted_keys: set[str] = dataclasses.field(default_factory=set)
    received: list[Received] = dataclasses.field(default_factory=list)
    delay: float = 0.0  # seconds before answering (timeout tests)
    stream_delay: float = 0.0  # seconds between streamed events
    record: bool = True
    # Faults of a streamed answer, after `fault_after` events: "abort" closes the connection
    # mid-body; "stall" stops sending (until the client gives up); "unfinished" ends the body
    # cleanly but without the stream's last event.
    stream_fault: str | None = None
    fault_after: int = 2
    event_padding: int = 0  # bytes of padding added to the first streamed event


STATE = web.AppKey("standin.state", StandInState)


def _words(messages: Any) -> list[str]:
    text = ""
    if isinstance(messages, list) and messages:
        content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    elif isinstance(messages, str):
        text = messages
    return ("echo: " + text).split()


def _masked(key: str) -> str:
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else "***"


async def _check(
    request: web.Request, header: str, bearer: bool
) -> tuple[dict[str, Any], str | None]:
    state = request.app[STATE]
    if request.path.startswith("/openai/deployments/"):
        # Azure OpenAI: key in `api-key`, and api-version is required.
        header, bearer = "api-key", False
        if not request.query.get("api-version"):
            raise web.HTTPNotFound(
                text='{"error": {"code": "404", "message": "Resource not found"}}',
                content_type="application/json",
            )
    raw = request.headers.get(header)
    key = raw[7:] if bearer and raw and raw.startswith("Bearer ") else (None if bearer else raw)
    body = await request.json()
    if state.record:
        state.received.append(
            Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body, key)
        )
    if state.delay:
        await asyncio.sleep(state.delay)
    if key not in state.accepted_keys:
        # Real providers do this: the message carries a masked form of the rejected key.
        message = f"Incorrect API key provided: {_masked(key or '')}."
        if header == "x-api-key":
            raise web.HTTPUnauthorized(
                text=json.dumps(
                    {"type": "error", "error": {"type": "authentication_error", "message": message}}
                ),
                content_type="application/json",
            )
        raise web.HTTPUnauthorized(
            text=json.dumps(
                {
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                }
            ),
            content_type="application/json",
        )
    return body, key


async def _sse(request: web.Request, events: AsyncIterator[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    state = request.app[STATE]
    sent = 0
    async for event in events:
        if state.stream_fault and sent == state.fault_after:
            if state.stream_fault == "abort":
                if request.transport is not None:
                    request.transport.close()  # no terminating chunk
                return response
            if state.stream_fault == "stall":  # until the client gives up
                # aiohttp has no event for a client that went away: poll the transport.
                while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                return response
            if state.stream_fault == "unfinished":
                break
        if sent == 0 and state.event_padding:
            event = event.replace(b"{", b'{"padding": "' + b"x" * state.event_padding + b'", ', 1)
        try:
            await response.write(event)
        except ConnectionResetError:
            return response  # the client (the sidecar) went away
        sent += 1
        if state.stream_delay:
            await asyncio.sleep(state.stream_delay)
    await response.write_eof()
    return response


async def openai_chat(request: web.Request) -> web.StreamResponse:
    body, _ = await _check(request, "Authorization", bearer=True)
    words = _words(body.get("messages"))
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    model = request.match_info.get("deployment") or body.get("model", "")
    created = int(time.time())
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": " ".join(words),
                            "refusal": None,
                        },
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(words),
                    "total_tokens": prompt_tokens + len(words),
                },
            },
            headers={"x-request-id": "req_standin"},
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        document: dict[str, Any] = {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            document["usage"] = None
        return b"data: " + json.dumps(document).encode() + b"\n\n"

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""}, None)
        for index, word in enumerate(words):
            yield chunk({"content": (" " if index else "") + word}, None)
        yield chunk({}, "stop")
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            }
            document: dict[str, Any] = {
                "id": "chatcmpl-standin",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield b"data: " + json.dumps(document).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return await _sse(request, events())


async def openai_completions(request: web.Request) -> web.StreamResponse:
    body, _ = await _check(request, "Authorization", bearer=True)
    prompt = body.get("prompt")
    words = _words(prompt if isinstance(prompt, str) else " ".join(map(str, prompt or [])))
    usage = {
        "prompt_tokens": len(str(prompt).split()),
        "completion_tokens": len(words),
        "total_tokens": len(str(prompt).split()) + len(words),
    }
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": "cmpl-standin",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
    }
    if not body.get("stream"):
        return web.json_response(
            {
                **base,
                "choices": [
                    {"index": 0, "text": " ".join(words), "finish_reason": "stop", "logprobs": None}
                ],
                "usage": usage,
            }
        )

    async def events() -> AsyncIterator[bytes]:
        for index, word in enumerate(words):
            document = {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "text": (" " if index else "") + word,
                        "finish_reason": None,
                        "logprobs": None,
                    }
                ],
            }
            yield b"data: " + json.dumps(document).encode() + b"\n\n"
        if include_usage:
            yield b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return await _sse(request, events())


async def openai_embeddings(request: web.Request) -> web.Response:
    body, _ = await _check(request, "Authorization", bearer=True)
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for index, item in enumerate(items):
        digest = hashlib.sha256(str(item).encode()).digest()
        data.append(
            {"object": "embedding", "index": index, "embedding": [b / 255 for b in digest[:8]]}
        )
    tokens = sum(len(str(item).split()) for item in items)
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    body, _ = await _check(request, "x-api-key", bearer=False)
    words = _words(body.get("messages"))
    input_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    message = {
        "id": "msg_standin",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": " ".join(words)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": len(words)},
    }
    if not body.get("stream"):
        return web.json_response(message)

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        yield event("message_start", {"type": "message_start", "message": start})
        yield event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        yield event("ping", {"type": "ping"})
        for index, word in enumerate(words):
            delta = {"type": "text_delta", "text": (" " if index else "") + word}
            yield event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(words)},
            },
        )
        yield event("message_stop", {"type": "message_stop"})

    return await _sse(request, events())


async def anthropic_count_tokens(request: web.Request) -> web.Response:
    body, _ = await _check(request, "x-api-key", bearer=False)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or "max_tokens" in body:
        return _anthropic_invalid("messages: a non-empty list, and no max_tokens, is required")
    tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    tokens += len(str(body.get("system", "")).split())
    return web.json_response({"input_tokens": tokens})


# Words the stand-in's moderation flags, so a test can see both answers.
_FLAGGED_WORDS = frozenset({"attack", "kill"})
_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


async def openai_moderations(request: web.Request) -> web.Response:
    body, _ = await _check(request, "Authorization", bearer=True)
    inputs = body.get("input")
    if isinstance(inputs, str):
        items = [inputs]
    elif isinstance(inputs, list) and inputs:
        items = [i if isinstance(i, str) else str(i.get("text", "")) for i in inputs]
    else:
        return _openai_invalid("input must be a string or a non-empty array", "input")
    results = []
    for item in items:
        flagged = not _FLAGGED_WORDS.isdisjoint(item.lower().split())
        categories = {name: flagged and name == "violence" for name in _CATEGORIES}
        scores = {name: 0.9 if value else 0.001 for name, value in categories.items()}
        results.append(
            {
                "flagged": flagged,
                "categories": categories,
                "category_scores": scores,
                "category_applied_input_types": {name: ["text"] for name in _CATEGORIES},
            }
        )
    return web.json_response(
        {
            "id": "modr-standin",
            "model": body.get("model", "omni-moderation-latest"),
            "results": results,
        }
    )


def _openai_invalid(message: str, param: str | None = None) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        },
        status=400,
    )


def _anthropic_invalid(message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": "invalid_request_error", "message": message}},
        status=400,
    )


async def openai_models(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": "standin-model", "object": "model", "created": 0, "owned_by": "standin"}
            ],
        }
    )


def create_app(state: StandInState | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = state or StandInState()
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_post("/v1/completions", openai_completions)
    app.router.add_post("/v1/embeddings", openai_embeddings)
    app.router.add_get("/v1/models", openai_models)
    app.router.add_post("/v1/messages", anthropic_messages)
    app.router.add_post("/v1/messages/count_tokens", anthropic_count_tokens)
    app.router.add_post("/v1/moderations", openai_moderations)
    # Azure OpenAI: deployment in the path, key in `api-key`, api-version required.
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", openai_chat)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", openai_embeddings)
    return app
