"""Request body validation, without a server."""

from __future__ import annotations

import json

import pytest

from sidegate import errors
from sidegate.sidecar import endpoints, payloads, proxying, routing


def parse(endpoint: endpoints.Endpoint, document: object) -> payloads.Body:
    return payloads.parse(endpoint, json.dumps(document).encode(), max_depth=64)


def test_chat_reads_what_it_needs() -> None:
    body = parse(
        endpoints.CHAT,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "max_completion_tokens": 7,
        },
    )
    assert body.streaming and body.output_budget == 7


def test_anthropic_needs_max_tokens_and_user_assistant_roles() -> None:
    with pytest.raises(errors.InvalidRequest, match="max_tokens: missing"):
        parse(endpoints.MESSAGES, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(errors.InvalidRequest, match=r"messages\.0\.role"):
        parse(
            endpoints.MESSAGES,
            {"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]},
        )


def test_unknown_field_is_named_and_allow_list_works() -> None:
    document = {"model": "m", "input": "x", "extra_thing": 1}
    with pytest.raises(errors.UnknownField) as caught:
        parse(endpoints.EMBEDDINGS, document)
    assert caught.value.param == "extra_thing"
    allowed = payloads.parse(
        endpoints.EMBEDDINGS,
        json.dumps(document).encode(),
        max_depth=64,
        allowed_extra={"extra_thing"},
    )
    assert allowed.model == "m"


def test_bool_is_not_an_int_and_strings_are_not_numbers() -> None:
    for bad in (True, "3", 3.0):
        with pytest.raises(errors.InvalidRequest, match="max_tokens"):
            parse(endpoints.CHAT, {"model": "m", "messages": [{"role": "user"}], "max_tokens": bad})


@pytest.mark.parametrize(
    ("data", "limit", "deep"),
    [
        (b'{"a": [[[1]]]}', 4, False),
        (b'{"a": [[[[1]]]]}', 4, True),
        (b'{"a": "[[[[[[[[[["}', 2, False),  # brackets inside strings do not count
        (b'{"a": "\\"[[[[[[[[[["}', 2, False),  # nor after an escaped quote
        (b'{"a": "\\\\", "b": [[[[1]]]]}', 4, True),  # an escaped backslash ends at the quote
    ],
)
def test_json_depth(data: bytes, limit: int, deep: bool) -> None:
    assert payloads.json_depth_exceeds(data, limit) is deep


def test_upstream_body_is_untouched_unless_it_must_change() -> None:
    data = b'{"model":"gpt-renamed","messages":[{"role":"user","content":"x"}],"temperature":0.5}'
    body = payloads.parse(endpoints.CHAT, data, max_depth=64)
    same, hide = proxying.upstream_body(
        endpoints.CHAT, data, body, routing.Target("openai", "gpt-renamed", None)
    )
    assert same is data and not hide
    renamed, _ = proxying.upstream_body(
        endpoints.CHAT, data, body, routing.Target("openai", "gpt-renamed", "real")
    )
    assert json.loads(renamed) == {**json.loads(data), "model": "real"}


def test_streams_ask_for_usage_and_remember_to_hide_it() -> None:
    data = b'{"model":"m","messages":[{"role":"user"}],"stream":true,"stream_options":{"x":1}}'
    body = payloads.parse(endpoints.CHAT, data, max_depth=64, allowed_extra=())
    sent, hide = proxying.upstream_body(
        endpoints.CHAT, data, body, routing.Target("openai", "m", None)
    )
    assert hide and json.loads(sent)["stream_options"] == {"x": 1, "include_usage": True}


def test_hop_by_hop_and_sidecar_owned_headers_are_dropped_from_answers() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    upstream = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "application/json"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Set-Cookie", "__cf_bm=abc"),
                ("x-request-id", "req_1"),
                ("openai-processing-ms", "12"),
            ]
        )
    )
    kept = proxying.response_headers(upstream)
    assert dict(kept) == {
        "Content-Type": "application/json",
        "openai-processing-ms": "12",
        "x-upstream-request-id": "req_1",
    }
