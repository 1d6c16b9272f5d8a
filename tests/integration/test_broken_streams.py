"""A stream the provider breaks ends in an error every client sees: an error event in the
stream's dialect, then a chunked body without its terminating chunk. Against the real
`sidegate sidecar` process, with the official SDKs and with raw sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx  # the HTTP client under both official SDKs
import openai
import pytest

from sidegate import standin
from tests.conftest import APP_PLACEHOLDER
from tests.helpers.http import call, chat_body
from tests.helpers.processes import Process
from tests.helpers.sidecars import exchange, post, sidecar_process

MAX_EVENT = 64 * 1024


def short_limits(config: dict[str, Any]) -> None:
    for provider in config["providers"].values():
        provider["timeouts"] = {"connect": 2, "read": 1}
    config["limits"] = {"max_sse_event_bytes": MAX_EVENT}


@pytest.fixture
def sidecar(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> Iterator[Process]:
    process = sidecar_process(tmp_path, provider, ca_file, short_limits)
    yield process
    log = process.stop()
    assert "Traceback" not in log


@pytest.fixture
def state(provider: tuple[int, standin.StandInState]) -> standin.StandInState:
    return provider[1]


def openai_stream(sidecar: Process) -> list[str]:
    client = openai.OpenAI(base_url=sidecar.origin + "/v1", api_key=APP_PLACEHOLDER, max_retries=0)
    with client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "one two three four five"}],
            stream=True,
        )
        return [c.choices[0].delta.content or "" for c in stream if c.choices]


def anthropic_stream(sidecar: Process) -> list[str]:
    client = anthropic.Anthropic(base_url=sidecar.origin, api_key=APP_PLACEHOLDER, max_retries=0)
    with client:
        stream = client.messages.create(
            model="claude-test-large",
            max_tokens=50,
            messages=[{"role": "user", "content": "one two three four five"}],
            stream=True,
        )
        return [event.type for event in stream]


def requests_with_status(sidecar: Process, route: str, status: str) -> float:
    _, _, text = call(sidecar.origin, "/metrics", method="GET")
    for line in text.splitlines():
        wanted = f'route="{route}"' in line and f'status="{status}"' in line
        if line.startswith("sidegate_requests_total{") and wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("fault", ["abort", "stall", "unfinished"])
def test_openai_sdk_raises_when_the_provider_breaks_the_stream(
    sidecar: Process, state: standin.StandInState, fault: str
) -> None:
    state.stream_fault = fault
    with pytest.raises(openai.APIError) as caught:
        openai_stream(sidecar)
    assert "request id" in str(caught.value)
    status = "504" if fault == "stall" else "502"
    assert requests_with_status(sidecar, "chat", status) == 1
    state.stream_fault = None
    assert "".join(openai_stream(sidecar)).startswith("echo:")  # and the sidecar carries on


@pytest.mark.parametrize("fault", ["abort", "stall", "unfinished"])
def test_anthropic_sdk_raises_when_the_provider_breaks_the_stream(
    sidecar: Process, state: standin.StandInState, fault: str
) -> None:
    state.stream_fault = fault
    with pytest.raises(anthropic.APIError):
        anthropic_stream(sidecar)
    state.stream_fault = None
    assert anthropic_stream(sidecar)[-1] == "message_stop"


def chunked_body(raw: bytes) -> tuple[bytes, list[bytes], bool]:
    """Headers, the chunks, and whether the terminating 0-chunk arrived."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    chunks = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head, chunks, True
        chunks.append(rest[:size])
        rest = rest[size + 2 :]
    return head, chunks, False


def test_a_plain_http_client_sees_an_incomplete_body(
    sidecar: Process, state: standin.StandInState
) -> None:
    state.stream_fault = "abort"
    raw = exchange(sidecar, post("/v1/chat/completions", chat_body(stream=True)))
    head, chunks, terminated = chunked_body(raw)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    assert not terminated
    last = b"".join(chunks).rsplit(b"\n\n", 2)[-2]
    error = json.loads(last.removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_stream_broken" and error["type"] == "api_error"
    assert b"[DONE]" not in raw
    # httpx, under both SDKs, calls it what it is.
    with httpx.Client() as client, pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012
        request = client.build_request(
            "POST",
            sidecar.origin + "/v1/chat/completions",
            content=chat_body(stream=True),
            headers={"content-type": "application/json"},
        )
        client.send(request).read()


def test_a_clean_stream_still_ends_with_its_terminating_chunk(sidecar: Process) -> None:
    raw = exchange(
        sidecar, post("/v1/chat/completions", chat_body(stream=True), extra="Connection: close\r\n")
    )
    _, chunks, terminated = chunked_body(raw)
    assert terminated and b"".join(chunks).endswith(b"data: [DONE]\n\n")


def test_an_oversized_event_ends_the_stream_with_an_error(
    sidecar: Process, state: standin.StandInState
) -> None:
    state.event_padding = 4 * MAX_EVENT
    with pytest.raises(openai.APIError) as caught:
        openai_stream(sidecar)
    assert "over the limit" in str(caught.value)
    assert call(sidecar.origin, "/healthz", method="GET")[0] == 200
    state.event_padding = MAX_EVENT // 2  # under the limit: relayed whole
    assert "".join(openai_stream(sidecar)).startswith("echo:")


def test_bare_cr_line_endings_are_split_into_events(
    sidecar: Process, state: standin.StandInState
) -> None:
    raw = exchange(
        sidecar, post("/v1/chat/completions", chat_body(stream=True), extra="Connection: close\r\n")
    )
    assert raw.count(b"data: ") >= 3  # the stand-in's \n\n; bare CR is covered in unit tests
