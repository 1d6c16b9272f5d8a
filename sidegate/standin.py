"""A local stand-in provider that speaks OpenAI's, Azure OpenAI's and Anthropic's wire formats.

OpenAI: chat completions, completions, embeddings, moderations, models, and the Responses
API (create whole and streamed, stored responses: retrieve, delete, cancel, input items,
``previous_response_id``, ``background``). Anthropic: messages
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
import secrets
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
    # How a streamed Responses answer ends: "completed", "failed" (response.failed: the model
    # run failed, usage so far reported) or "error" (an `event: error`, no final response).
    responses_end: str = "completed"
    # Responses API: what the provider stores (store: true, the default), by id.
    responses: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    input_items: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)


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
    body = await request.json() if request.can_read_body else {}
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


def _input_items(value: Any) -> list[dict[str, Any]]:
    """A Responses ``input`` as the provider lists it back: messages with ids."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    items = []
    for item in value if isinstance(value, list) else []:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        items.append(
            {
                "id": "msg_" + secrets.token_hex(8),
                "type": "message",
                "role": item.get("role", "user") if isinstance(item, dict) else "user",
                "status": "completed",
                "content": content or [],
            }
        )
    return items


def _words_of(items: list[dict[str, Any]]) -> list[str]:
    last = items[-1]["content"] if items else []
    return ("echo: " + " ".join(str(part.get("text", "")) for part in last)).split()


def _not_found(message: str, param: str | None = None, status: int = 404) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        },
        status=status,
    )


async def openai_responses(request: web.Request) -> web.StreamResponse:
    body, _ = await _check(request, "Authorization", bearer=True)
    state = request.app[STATE]
    store = body.get("store", True)
    background = bool(body.get("background"))
    if background and not store:
        return _openai_invalid("Background mode requires store to be true.", "background")
    previous = body.get("previous_response_id")
    if previous is not None and previous not in state.responses:
        return _not_found(
            f"Previous response with id '{previous}' not found.", "previous_response_id", 400
        )
    items = _input_items(body.get("input"))
    words = _words_of(items)
    history = state.input_items.get(previous, []) if previous else []
    input_tokens = sum(
        len(str(part.get("text", "")).split()) for item in items for part in item["content"]
    )
    response_id = "resp_" + secrets.token_hex(12)
    message_id = "msg_" + secrets.token_hex(12)
    text = " ".join(words)
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(words),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + len(words),
    }
    output_item = {
        "type": "message",
        "id": message_id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }
    final: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "background": background,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"),
        "output": [output_item],
        "parallel_tool_calls": True,
        "previous_response_id": previous,
        "store": store,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }
    if store:
        state.input_items[response_id] = history + items
        state.responses[response_id] = final
    if background:  # accepted, not yet run: it completes when first retrieved
        queued = {**final, "status": "queued", "output": [], "usage": None}
        state.responses[response_id] = {**final, "status": "queued_then_completed"}
        return web.json_response(queued)
    if not body.get("stream"):
        return web.json_response(final)
    sequence = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        document = {"type": kind, "sequence_number": next(sequence), **fields}
        return f"event: {kind}\ndata: {json.dumps(document)}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        started = {**final, "status": "in_progress", "output": [], "usage": None}
        yield event("response.created", response=started)
        yield event("response.in_progress", response=started)
        empty_item = {**output_item, "status": "in_progress", "content": []}
        yield event("response.output_item.added", output_index=0, item=empty_item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        yield event("response.content_part.added", **where, part=part)
        for index, word in enumerate(words):
            delta = (" " if index else "") + word
            yield event("response.output_text.delta", **where, delta=delta, logprobs=[])
        yield event("response.output_text.done", **where, text=text, logprobs=[])
        yield event("response.content_part.done", **where, part=output_item["content"][0])
        if state.responses_end == "error":
            yield event("error", code="server_error", message="The model failed.", param=None)
            return
        if state.responses_end == "failed":
            error = {"code": "server_error", "message": "The model failed."}
            yield event("response.failed", response={**final, "status": "failed", "error": error})
            return
        yield event("response.output_item.done", output_index=0, item=output_item)
        yield event("response.completed", response=final)

    return await _sse(request, events())


def _stored(request: web.Request) -> dict[str, Any] | None:
    found = request.app[STATE].responses.get(request.match_info["response_id"])
    if found is not None and found["status"] == "queued_then_completed":
        found["status"] = "completed"
    return found


async def openai_response_get(request: web.Request) -> web.Response:
    await _check(request, "Authorization", bearer=True)
    found = _stored(request)
    if found is None:
        return _not_found(f"Response with id '{request.match_info['response_id']}' not found.")
    return web.json_response(found)


async def openai_response_delete(request: web.Request) -> web.Response:
    await _check(request, "Authorization", bearer=True)
    response_id = request.match_info["response_id"]
    state = request.app[STATE]
    if state.responses.pop(response_id, None) is None:
        return _not_found(f"Response with id '{response_id}' not found.")
    state.input_items.pop(response_id, None)
    return web.json_response({"id": response_id, "object": "response", "deleted": True})


async def openai_response_cancel(request: web.Request) -> web.Response:
    await _check(request, "Authorization", bearer=True)
    response_id = request.match_info["response_id"]
    found = request.app[STATE].responses.get(response_id)
    if found is None:
        return _not_found(f"Response with id '{response_id}' not found.")
    if not found["background"]:
        return _openai_invalid("Only responses created with background=true can be cancelled.")
    if found["status"] == "queued_then_completed":
        found.update(status="cancelled", output=[], usage=None)
    return web.json_response(found)


async def openai_response_input_items(request: web.Request) -> web.Response:
    await _check(request, "Authorization", bearer=True)
    response_id = request.match_info["response_id"]
    items = request.app[STATE].input_items.get(response_id)
    if items is None:
        return _not_found(f"Response with id '{response_id}' not found.")
    listed = list(reversed(items)) if request.query.get("order", "desc") == "desc" else items
    return web.json_response(
        {
            "object": "list",
            "data": listed,
            "first_id": listed[0]["id"] if listed else None,
            "last_id": listed[-1]["id"] if listed else None,
            "has_more": False,
        }
    )


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
    app.router.add_post("/v1/responses", openai_responses)
    app.router.add_get("/v1/responses/{response_id}", openai_response_get)
    app.router.add_delete("/v1/responses/{response_id}", openai_response_delete)
    app.router.add_post("/v1/responses/{response_id}/cancel", openai_response_cancel)
    app.router.add_get("/v1/responses/{response_id}/input_items", openai_response_input_items)
    # Azure OpenAI: deployment in the path, key in `api-key`, api-version required.
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", openai_chat)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", openai_embeddings)
    return app
