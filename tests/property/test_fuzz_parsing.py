"""Hypothesis: parsing and relaying hold their promises for any input."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidegate import errors, redact
from sidegate.sidecar import endpoints, payloads, usage

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet='[]{}"\\ab'),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(json_values, st.integers(min_value=1, max_value=12))
def test_depth_scan_agrees_with_a_real_parse(value: Any, limit: int) -> None:
    data = json.dumps(value).encode()
    assert payloads.json_depth_exceeds(data, limit) == (depth(value) > limit)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.sampled_from(endpoints.ALL))
def test_any_bytes_are_a_request_error_or_a_body(data: bytes, endpoint: endpoints.Endpoint) -> None:
    try:
        payloads.parse(endpoint, data, max_depth=16)
    except errors.RequestError as exc:
        assert 400 <= exc.status < 500


chat_like = st.fixed_dictionaries(
    {"model": st.one_of(st.text(max_size=300), st.integers(), st.none())},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant", "x", 1])},
                optional={"content": json_values},
            ),
            max_size=3,
        ),
        "stream": json_values,
        "max_tokens": json_values,
        "stream_options": json_values,
        "input": json_values,
        "prompt": json_values,
        "n": json_values,
        "temperature": json_values,
    },
)


@settings(max_examples=300)
@given(
    chat_like,
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
    st.sampled_from(endpoints.ALL),
)
def test_any_json_object_is_a_request_error_or_a_body(
    document: dict[str, Any], extra: dict[str, Any], endpoint: endpoints.Endpoint
) -> None:
    try:
        body = payloads.parse(endpoint, json.dumps({**extra, **document}).encode(), max_depth=16)
    except errors.RequestError as exc:
        assert 400 <= exc.status < 500
    else:
        assert isinstance(body.model, str) and 1 <= len(body.model) <= 256


events = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=30),
        st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n"]),
    ).map(lambda p: b"data: " + p[0].replace(b"\n", b"").replace(b"\r", b"") + p[1]),
    max_size=8,
)


@given(events, st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_any_chunking_yields_the_same_events(stream: list[bytes], cuts: list[int]) -> None:
    data = b"".join(stream)
    splitter = usage.EventSplitter()
    seen: list[bytes] = []
    position = 0
    for cut in cuts:
        seen += splitter.feed(data[position : position + cut])
        position += cut
    seen += splitter.feed(data[position:])
    rest = splitter.rest()  # a stream ending in a lone CR: known to end only at EOF
    assert seen + ([rest] if rest else []) == stream


@given(
    st.text(max_size=50),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=16, max_size=40),
    st.text(max_size=50),
)
def test_a_remembered_secret_never_survives_scrubbing(before: str, secret: str, after: str) -> None:
    redactor = redact.Redactor()
    redactor.remember([redact.Secret(secret)])
    assert secret not in redactor.scrub(before + secret + after)
