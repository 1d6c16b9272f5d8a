"""Token usage from whole and streamed answers."""

from __future__ import annotations

import json

import pytest

from sidegate.sidecar import usage


def sse(document: object) -> bytes:
    return b"data: " + json.dumps(document).encode() + b"\n\n"


def test_openai_stream_usage_chunk_is_read_and_hidden_when_asked() -> None:
    meter = usage.StreamMeter("openai", hide_usage_chunk=True)
    content = sse({"choices": [{"delta": {"content": "x"}}], "usage": None})
    final = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    assert meter.keep(content)
    assert not meter.keep(final)
    assert meter.keep(b"data: [DONE]\n\n")
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (3, 5)


def test_openai_usage_chunk_kept_when_client_asked() -> None:
    meter = usage.StreamMeter("openai", hide_usage_chunk=False)
    assert meter.keep(sse({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}))
    assert meter.usage.total == 3


def test_anthropic_stream_counts_cache_tokens_as_input() -> None:
    meter = usage.StreamMeter("anthropic", hide_usage_chunk=False)
    start = {
        "type": "message_start",
        "message": {
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}
        },
    }
    meter.keep(b"event: message_start\n" + sse(start))
    meter.keep(
        b"event: message_delta\n" + sse({"type": "message_delta", "usage": {"output_tokens": 42}})
    )
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (15, 42)


def test_whole_bodies() -> None:
    body = json.dumps({"usage": {"prompt_tokens": 2, "completion_tokens": 4}}).encode()
    assert usage.from_body("openai", body).total == 6
    assert not usage.from_body("openai", b'{"data": []}').reported
    assert not usage.from_body("openai", b'{"usage": {broken').reported


def test_splitter_handles_crlf_and_partial_events() -> None:
    splitter = usage.EventSplitter()
    assert splitter.feed(b"data: 1\r\n\r\ndata: 2\n") == [b"data: 1\r\n\r\n"]
    assert splitter.feed(b"\ndata: 3") == [b"data: 2\n\n"]
    assert splitter.rest() == b"data: 3"


def test_splitter_handles_bare_cr_and_mixed_line_endings() -> None:
    splitter = usage.EventSplitter()
    assert splitter.feed(b"data: 1\r\rdata: 2\n\r\n") == [b"data: 1\r\r", b"data: 2\n\r\n"]
    assert splitter.feed(b"data: 3\r") == []  # the CR of a CRLF may be next
    assert splitter.feed(b"\n\r\n") == [b"data: 3\r\n\r\n"]


def test_a_terminator_split_across_chunks_is_found() -> None:
    splitter = usage.EventSplitter()
    data = b"data: a\r\n\r\ndata: b\n\n"
    events = []
    for byte in range(len(data)):
        events += splitter.feed(data[byte : byte + 1])
    assert events == [b"data: a\r\n\r\n", b"data: b\n\n"]


def test_an_event_over_the_limit_raises_however_it_arrives() -> None:
    splitter = usage.EventSplitter(max_event_bytes=1024)
    for _ in range(4):
        splitter.feed(b"data: " + b"x" * 200)
    with pytest.raises(usage.EventTooLarge):
        splitter.feed(b"data: " + b"x" * 200)
    with pytest.raises(usage.EventTooLarge):
        usage.EventSplitter(max_event_bytes=1024).feed(b"data: " + b"x" * 2000 + b"\n\n")
    assert usage.EventSplitter(max_event_bytes=1024).feed(b"data: ok\n\n") == [b"data: ok\n\n"]


def test_a_stream_is_finished_only_by_its_last_event() -> None:
    openai_meter = usage.StreamMeter("openai", hide_usage_chunk=False)
    openai_meter.keep(b'data: {"choices": [{"delta": {"content": "an error [DONE]"}}]}\n\n')
    assert not openai_meter.finished  # model output that merely mentions the words
    openai_meter.keep(b"data: [DONE]\n\n")
    assert openai_meter.finished
    anthropic_meter = usage.StreamMeter("anthropic", hide_usage_chunk=False)
    anthropic_meter.keep(
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"text": "message_stop"}}\n\n'
    )
    assert not anthropic_meter.finished
    anthropic_meter.keep(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
    assert anthropic_meter.finished


def typed(kind: str, **fields: object) -> bytes:
    return f"event: {kind}\n".encode() + sse({"type": kind, **fields})


@pytest.mark.parametrize("end", ["response.completed", "response.failed", "response.incomplete"])
def test_a_responses_stream_ends_with_its_final_response_and_its_usage(end: str) -> None:
    meter = usage.StreamMeter("openai", hide_usage_chunk=False)
    assert meter.keep(typed("response.created", response={"usage": None}))
    # Model output that mentions the end, and an event whose text looks like usage.
    assert meter.keep(typed("response.output_text.delta", delta=f'{end} "usage": {{'))
    assert not meter.finished and not meter.usage.reported
    final = {"status": "completed", "usage": {"input_tokens": 7, "output_tokens": 11}}
    assert meter.keep(typed(end, response=final))
    assert meter.finished
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (7, 11)


def test_responses_whole_body_usage() -> None:
    body = {"id": "resp_1", "output": [], "usage": {"input_tokens": 4, "output_tokens": 6}}
    found = usage.from_body("openai", json.dumps(body).encode())
    assert (found.input_tokens, found.output_tokens, found.reported) == (4, 6, True)
