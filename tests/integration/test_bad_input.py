"""Bad input gets a clear 4xx in the API's own error shape: never a 500, never a traceback,
and never a call to the provider."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Stack
from tests.helpers.http import call, chat_body

CHAT = "/v1/chat/completions"


def openai_error(answer: Any) -> dict[str, Any]:
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    error: dict[str, Any] = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (b"", 400, None, "empty"),
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "must be a JSON object"),
        (chat_body(stream="true"), 400, "stream", "boolean"),
        (chat_body(max_tokens="5"), 400, "max_tokens", "integer"),
        (chat_body(max_tokens=0), 400, "max_tokens", "greater than or equal"),
        (chat_body(n=1000), 400, "n", "less than or equal"),
        (chat_body(messages=[]), 400, "messages", "at least 1"),
        (
            chat_body(messages=[{"role": "root", "content": "x"}]),
            400,
            "messages.0.role",
            "Input should be",
        ),
        (chat_body(model=""), 400, "model", "at least 1"),
        (chat_body(model=5), 400, "model", "string"),
        (
            json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
            400,
            "model",
            "missing",
        ),
        (chat_body(temprature=0.2), 400, "temprature", "unknown field"),
        (
            chat_body(stream_options={"include_usage": "yes"}),
            400,
            "stream_options.include_usage",
            "boolean",
        ),
    ],
)
def test_invalid_chat_bodies(
    stack: Stack, body: bytes, status: int, param: str | None, words: str
) -> None:
    got, headers, answer = call(stack.origin, CHAT, body)
    assert got == status
    error = openai_error(answer)
    assert error["param"] == param
    assert words in error["message"]
    assert headers["x-request-id"]
    assert not stack.state.received


def test_deep_json_is_refused_before_parsing(stack: Stack) -> None:
    nested: Any = "x"
    for _ in range(70):
        nested = [nested]
    status, _, answer = call(
        stack.origin, CHAT, chat_body(messages=[{"role": "user", "content": nested}])
    )
    assert status == 400
    assert "nests deeper than 64" in openai_error(answer)["message"]


def test_wrong_content_type(stack: Stack) -> None:
    status, _, answer = call(stack.origin, CHAT, chat_body(), {"content-type": "text/plain"})
    assert status == 415
    assert openai_error(answer)["code"] == "unsupported_media_type"


def test_body_over_the_limit(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(lambda raw: raw.update(limits={"max_body_bytes": 2048}))
    status, _, answer = call(
        stack.origin, CHAT, chat_body(messages=[{"role": "user", "content": "x" * 4000}])
    )
    assert status == 413
    assert "2048" in openai_error(answer)["message"]


def test_header_over_the_limit(stack: Stack) -> None:
    status, _, _ = call(stack.origin, CHAT, chat_body(), {"x-padding": "a" * 9000})
    assert status == 400


def test_unknown_path_and_wrong_method(stack: Stack) -> None:
    status, _, answer = call(stack.origin, "/v1/fine_tuning/jobs", chat_body())
    assert status == 404 and openai_error(answer)["type"] == "not_found_error"
    status, _, answer = call(stack.origin, CHAT, method="GET")
    assert status == 405 and openai_error(answer)


def test_embeddings_cannot_stream(stack: Stack) -> None:
    body = json.dumps({"model": "text-embedding-3-small", "input": "x", "stream": True}).encode()
    status, _, answer = call(stack.origin, "/v1/embeddings", body)
    assert status == 400 and openai_error(answer)["param"] == "stream"


def test_known_parameters_pass_and_allowed_extras_are_configurable(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(lambda raw: raw.update(limits={"allowed_extra_fields": ["guided_json"]}))
    status, _, _ = call(
        stack.origin, CHAT, chat_body(temperature=0.1, tools=[], guided_json={"a": 1})
    )
    assert status == 200
    assert stack.state.received[-1].body["guided_json"] == {"a": 1}


def test_messages_errors_use_anthropic_shape(stack: Stack) -> None:
    status, _, answer = call(stack.origin, "/v1/messages", b"{}")
    assert status == 400
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert answer["request_id"]


def test_anthropic_version_default_when_client_sends_none(stack: Stack) -> None:
    body = json.dumps(
        {"model": "claude-test", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    status, _, _ = call(stack.origin, "/v1/messages", body)
    assert status == 200
    assert stack.state.received[-1].headers["anthropic-version"] == "2023-06-01"


def test_client_auth_and_hop_by_hop_headers_stay_behind(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(lambda raw: raw.update(limits={"forward_headers": ["X-Trace-Tag"]}))
    status, _, _ = call(
        stack.origin,
        CHAT,
        chat_body(),
        {
            "authorization": "Bearer client-token-value",
            "x-api-key": "client-anthropic-value",
            "api-key": "client-azure-value",
            "cookie": "session=abc",
            "te": "trailers",
            "proxy-authorization": "Basic abc",
            "x-trace-tag": "t-1",
            "x-something-else": "no",
        },
    )
    assert status == 200
    seen = stack.state.received[-1]
    assert seen.headers["authorization"] == "Bearer " + stack.keys["openai"]
    for name in ("x-api-key", "api-key", "cookie", "te", "proxy-authorization", "x-something-else"):
        assert name not in seen.headers, name
    assert seen.headers["x-trace-tag"] == "t-1"


def test_no_status_500_from_a_grab_bag_of_garbage(stack: Stack) -> None:
    bodies = [
        b"\x00\xff",
        b"null",
        b"1e999999",
        b'{"model": {"$ne": 1}}',
        b'{"model":"gpt-4o-mini","messages":"hi"}',
    ]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"):
        for body in bodies:
            status, _, _ = call(stack.origin, path, body)
            assert 400 <= status < 500, (path, body, status)
