"""What a client is told about a body the sidecar refuses, and the few values it reads from
the bodies it accepts: the exact messages and `param`s, the boundaries of the depth limit."""

from __future__ import annotations

import json

import pytest

from sidegate import errors
from sidegate.sidecar import endpoints, payloads

USER = [{"role": "user", "content": "x"}]


def parse(endpoint: endpoints.Endpoint, data: bytes | object, depth: int = 64) -> payloads.Body:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return payloads.parse(endpoint, raw, max_depth=depth)


def refusal(endpoint: endpoints.Endpoint, data: bytes | object) -> tuple[str, str | None]:
    with pytest.raises(errors.InvalidRequest) as caught:
        parse(endpoint, data)
    return caught.value.message, caught.value.param


def test_streaming_and_output_budgets_by_api() -> None:
    chat = {"model": "m", "messages": USER}
    assert not parse(endpoints.CHAT, chat).streaming
    assert not parse(endpoints.CHAT, {**chat, "stream": False}).streaming
    assert parse(endpoints.CHAT, {**chat, "stream": True}).streaming
    assert parse(endpoints.CHAT, chat).output_budget is None
    assert parse(endpoints.CHAT, {**chat, "max_tokens": 5}).output_budget == 5
    both = {**chat, "max_tokens": 5, "max_completion_tokens": 9}
    assert parse(endpoints.CHAT, both).output_budget == 9  # the newer name wins
    completion = {"model": "m", "prompt": "x"}
    assert parse(endpoints.COMPLETIONS, completion).output_budget is None
    assert parse(endpoints.COMPLETIONS, {**completion, "max_tokens": 3}).output_budget == 3
    assert parse(endpoints.EMBEDDINGS, {"model": "m", "input": "x"}).output_budget is None
    messages = {"model": "m", "messages": USER, "max_tokens": 4}
    assert parse(endpoints.MESSAGES, messages).output_budget == 4
    assert parse(endpoints.RESPONSES, {"model": "m", "input": "x"}).output_budget is None
    responses = {"model": "m", "input": "x", "max_output_tokens": 8}
    assert parse(endpoints.RESPONSES, responses).output_budget == 8
    assert parse(endpoints.COUNT_TOKENS, {"model": "m", "messages": USER}).output_budget is None
    moderation = parse(endpoints.MODERATIONS, {"input": "x"})
    assert moderation.model == "omni-moderation-latest" and moderation.output_budget is None


@pytest.mark.parametrize(
    ("data", "limit", "deep"),
    [
        (b"[[1]]", 2, False),  # as many brackets as the limit: no scan needed
        (b"[[[1]]]", 2, True),
        (b"[[],[],[]]", 2, False),  # many brackets, none deeper than 2
        (b'["{{{", [[]]]', 3, False),
        (b'["{{{", [[[]]]]', 3, True),
        (b'["\\\\", [[[]]]]', 3, True),  # an escaped backslash: the string ends at the quote
        (b'["\\"[[[", []]', 3, False),  # an escaped quote: the string goes on
        (b'["\\\\\\"[[[[", []]', 3, False),  # \\ then \": still inside the string
        (b'{"a":{"b":{"c":{}}}}', 4, False),
        (b'{"a":{"b":{"c":{}}}}', 3, True),
    ],
)
def test_the_depth_limit_is_exact(data: bytes, limit: int, deep: bool) -> None:
    assert payloads.json_depth_exceeds(data, limit) is deep


def test_too_deep_a_body_is_refused_with_the_limit() -> None:
    assert refusal_at_depth(b'{"model":[[[[1]]]]}', 4) == (
        "request body nests deeper than 4 levels",
        None,
    )


def refusal_at_depth(data: bytes, depth: int) -> tuple[str, str | None]:
    with pytest.raises(errors.InvalidRequest) as caught:
        payloads.parse(endpoints.CHAT, data, max_depth=depth)
    return caught.value.message, caught.value.param


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"model":"a","model":"b"}', "duplicate key 'model'"),
        (b'{"a":1,"model":"x","model":"y"}', "duplicate key 'model'"),  # the repeated one
        (b'{"x":[{"k":1,"k":1}]}', "duplicate key 'k'"),
        (b'{"' + b"k" * 100 + b'":1,"' + b"k" * 100 + b'":2}', f"duplicate key {'k' * 64!r}"),
        (b'{"t":NaN}', "NaN is not JSON"),
        (b'{"t":Infinity}', "Infinity is not JSON"),
        (b'{"t":-Infinity}', "-Infinity is not JSON"),
    ],
)
def test_json_that_parsers_read_differently_is_refused(data: bytes, message: str) -> None:
    assert refusal(endpoints.CHAT, data) == (f"request body is ambiguous JSON: {message}", None)
    with pytest.raises(errors.InvalidRequest):
        payloads.refuse_ambiguous_json(data)


def test_unambiguous_and_malformed_json_pass_the_ambiguity_check() -> None:
    assert payloads.refuse_ambiguous_json(b'{"a":{"a":1},"b":[{"a":2},{"a":3}]}') is None
    assert payloads.refuse_ambiguous_json(b'{"a":') is None  # the model's parser names it
    assert refusal(endpoints.CHAT, b'{"a":') == ("request body is not valid JSON", None)


@pytest.mark.parametrize(
    ("endpoint", "document", "expected"),
    [
        (endpoints.CHAT, [], ("request body must be a JSON object", None)),
        (endpoints.CHAT, "x", ("request body must be a JSON object", None)),
        (endpoints.CHAT, {"model": "m"}, ("messages: missing required field", "messages")),
        (
            endpoints.CHAT,
            {"messages": USER, "max_tokens": "5"},
            ("model: missing required field (and 1 more error)", "model"),
        ),
        (
            endpoints.CHAT,
            {"stream": "yes"},
            ("model: missing required field (and 2 more errors)", "model"),
        ),
        (
            endpoints.CHAT,
            {"stream": "yes", "n": 0},
            ("model: missing required field (and 3 more errors)", "model"),
        ),
        (
            endpoints.CHAT,
            {"model": "m", "messages": [{"role": "robot"}]},
            (
                "messages.0.role: Input should be 'system', 'developer', 'user', 'assistant', "
                "'tool' or 'function'",
                "messages.0.role",
            ),
        ),
        (
            endpoints.EMBEDDINGS,
            {"model": "m", "input": "x", "stream": True},
            ("stream: Input should be null", "stream"),
        ),
    ],
)
def test_invalid_bodies_name_the_first_problem_and_count_the_rest(
    endpoint: endpoints.Endpoint, document: object, expected: tuple[str, str | None]
) -> None:
    assert refusal(endpoint, document) == expected


def test_unknown_fields_are_named_and_known_or_allowed_ones_pass() -> None:
    document = {"model": "m", "messages": USER, "temperature": 0.5, "typo_field": 1}
    with pytest.raises(errors.UnknownField) as caught:
        parse(endpoints.CHAT, document)
    assert caught.value.message == (
        "unknown field 'typo_field': not a parameter of /chat/completions and not in "
        "limits.allowed_extra_fields"
    )
    assert caught.value.param == "typo_field"
    allowed = payloads.parse(
        endpoints.CHAT, json.dumps(document).encode(), max_depth=8, allowed_extra=["typo_field"]
    )
    assert allowed.model_extra == {"temperature": 0.5, "typo_field": 1}
    # a parameter of another API is unknown here
    with pytest.raises(errors.UnknownField, match="'top_k'"):
        parse(endpoints.CHAT, {"model": "m", "messages": USER, "top_k": 3})
    assert parse(endpoints.MESSAGES, {"model": "m", "messages": USER, "max_tokens": 1, "top_k": 3})
