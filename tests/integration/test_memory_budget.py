"""The memory budget, against the real process: bodies are admitted before they are read,
and a request that would pass the budget gets 503 with Retry-After, unread."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidegate import standin
from tests.conftest import Stack, wait_for
from tests.helpers.http import call, chat_body
from tests.helpers.processes import Process
from tests.helpers.sidecars import address, sidecar_process

BUDGET, MAX_BODY = 2 * 1024 * 1024, 700 * 1024  # a body is charged twice


def small_budget(config: dict[str, Any]) -> None:
    config["limits"] = {"memory_budget_bytes": BUDGET, "max_body_bytes": MAX_BODY}


@pytest.fixture
def sidecar(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> Iterator[Process]:
    process = sidecar_process(tmp_path, provider, ca_file, small_budget)
    yield process
    process.stop()


def big_body(size: int) -> bytes:
    # The stand-in echoes the last message: a short one, so the answer stays small.
    return chat_body(
        messages=[{"role": "user", "content": "x" * size}, {"role": "user", "content": "hi"}]
    )


def headers_only(length: int, chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def answer(connection: socket.socket) -> tuple[int, dict[str, str], Any]:
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += connection.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body)


def budget_used(sidecar: Process) -> float:
    _, _, text = call(sidecar.origin, "/metrics", method="GET")
    line = next(x for x in text.splitlines() if x.startswith("sidegate_memory_budget_used_bytes "))
    return float(line.split()[1])


def test_a_body_over_the_limit_is_refused_before_it_is_sent(sidecar: Process) -> None:
    with socket.create_connection(address(sidecar), timeout=10) as connection:
        connection.sendall(headers_only(50 * 1024 * 1024))  # and not one byte of the body
        status, headers, body = answer(connection)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert headers["connection"] == "close"


def test_a_body_that_would_pass_the_budget_gets_a_503_unread(sidecar: Process) -> None:
    first_body = big_body(600 * 1024)
    with (
        socket.create_connection(address(sidecar), timeout=10) as first,
        socket.create_connection(address(sidecar), timeout=10) as second,
    ):
        first.sendall(headers_only(len(first_body)) + first_body[:1000])  # admitted, reading
        while budget_used(sidecar) == 0:
            pass
        second.sendall(headers_only(len(first_body)))
        status, headers, body = answer(second)
        assert status == 503 and headers["retry-after"] == "1"
        assert body["error"]["code"] == "overloaded"
        first.sendall(first_body[1000:])
        assert answer(first)[0] == 200
    assert budget_used(sidecar) == 0
    assert call(sidecar.origin, "/v1/chat/completions", big_body(600 * 1024))[0] == 200


def test_a_chunked_body_is_bounded_as_it_arrives(sidecar: Process) -> None:
    with socket.create_connection(address(sidecar), timeout=10) as connection:
        connection.sendall(headers_only(0, chunked=True))
        piece = b"x" * (256 * 1024)
        for _ in range(3):  # 768 KiB held: under the budget, over max_body_bytes soon
            connection.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        status, _, _ = answer(connection)
    assert status == 413
    assert budget_used(sidecar) == 0


def test_requests_past_the_in_flight_cap_get_a_503(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(lambda raw: raw.update(listen={"max_in_flight": 1}))
    stack.state.delay = 1.0  # the first request waits at the provider
    first = threading.Thread(target=call, args=(stack.origin, "/v1/chat/completions", chat_body()))
    first.start()
    wait_for(lambda: len(stack.state.received) == 1)
    status, headers, answer = call(stack.origin, "/v1/chat/completions", chat_body())
    first.join()
    assert status == 503 and headers["retry-after"] == "1"
    assert answer["error"]["code"] == "overloaded"
    assert stack.metric("sidegate_refusals_total", reason="in_flight") == 1
    assert call(stack.origin, "/v1/chat/completions", chat_body())[0] == 200
