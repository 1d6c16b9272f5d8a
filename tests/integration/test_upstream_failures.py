"""What the client sees when the provider is slow, gone, or refuses the key."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Stack, fake_key, wait_for
from tests.helpers.http import call, chat_body

CHAT = "/v1/chat/completions"


def test_slow_provider_is_a_504_naming_the_request_id(make_stack: Callable[..., Stack]) -> None:
    def short_read(raw: dict[str, Any]) -> None:
        raw["providers"]["openai"]["timeouts"] = {"connect": 1, "read": 0.3}

    stack = make_stack(short_read)
    stack.state.delay = 1.5
    status, headers, answer = call(stack.origin, CHAT, chat_body(), {"x-request-id": "slow-1"})
    assert status == 504
    assert answer["error"]["code"] == "upstream_timeout"
    assert "request id slow-1" in answer["error"]["message"]
    assert headers["x-request-id"] == "slow-1"


def test_unreachable_provider_is_a_502(make_stack: Callable[..., Stack]) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]

    def dead(raw: dict[str, Any]) -> None:
        raw["providers"]["openai"]["base_url"] = f"https://127.0.0.1:{dead_port}/v1"

    stack = make_stack(dead)
    status, headers, answer = call(stack.origin, CHAT, chat_body())
    assert status == 502
    assert answer["error"]["code"] == "upstream_unreachable"
    assert headers["x-request-id"] in answer["error"]["message"]


def test_provider_401_is_passed_through_with_the_echoed_key_scrubbed(stack: Stack) -> None:
    stack.state.accepted_keys.clear()  # the provider no longer takes our key
    with pytest.raises(openai.AuthenticationError) as caught:
        stack.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    message = str(caught.value)
    assert "Incorrect API key provided" in message
    assert "[REDACTED]" in message
    key = stack.keys["openai"]
    assert key[-4:] not in message and "sk-" not in message


def test_a_401_is_retried_once_with_the_previous_key(stack: Stack) -> None:
    old = stack.keys["openai"]
    new = fake_key()
    # The new key is published but the provider does not take it yet (activation lag).
    stack.publish_keys({**stack.keys, "openai": new}, extra={"openai.previous": old})
    stack.state.accepted_keys.discard(new)
    for _ in range(100):  # until the reload has happened (milliseconds)
        status, _, answer = call(stack.origin, CHAT, chat_body())
        assert status == 200, answer  # never a failure, before or after the swap
        if [r.key for r in stack.state.received[-2:]] == [new, old]:
            break
    else:
        pytest.fail("the new key never reached the provider")
    assert stack.metric("sidegate_upstream_auth_retries_total", provider="openai") >= 1


def test_not_ready_until_every_provider_has_a_key(stack: Stack) -> None:
    assert call(stack.origin, "/readyz", method="GET")[0] == 200
    keys = dict(stack.keys)
    del keys["azure"]
    stack.volume.publish(keys)  # a volume without azure's key: the old one stays in force
    wait_for(
        lambda: (
            stack.metric("sidegate_credential_reloads_total", provider="azure", result="failed")
            == 1
        )
    )
    assert call(stack.origin, "/readyz", method="GET")[0] == 200


def test_readyz_names_providers_without_a_key(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    empty = tmp_path / "no-keys"
    empty.mkdir()
    stack = make_stack(lambda raw: raw.update(credentials={"directory": str(empty)}))
    status, _, answer = call(stack.origin, "/readyz", method="GET")
    assert status == 503
    assert answer == {
        "ready": False,
        "missing_credentials": ["anthropic", "azure", "compat", "openai"],
        "policy_loaded": True,
        "credentials_stale": False,
    }
    status, _, answer = call(stack.origin, CHAT, chat_body())
    assert status == 503 and answer["error"]["code"] == "not_ready"
    (empty / "openai").write_text(stack.keys["openai"])
    wait_for(lambda: call(stack.origin, CHAT, chat_body())[0] == 200)


def test_healthz_answers_while_serving(stack: Stack) -> None:
    assert call(stack.origin, "/healthz", method="GET")[:3:2] == (200, {"status": "ok"})


def test_metrics_endpoint_counts_requests(stack: Stack) -> None:
    call(stack.origin, CHAT, chat_body())
    status, headers, text = call(stack.origin, "/metrics", method="GET")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert (
        'sidegate_requests_total{model="gpt-4o-mini",provider="openai",route="chat",'
        'status="200"} 1.0' in text
    )
    assert "sidegate_upstream_duration_seconds_bucket" in text


def test_a_client_hanging_up_mid_stream_is_a_499_not_an_error(stack: Stack) -> None:
    stack.state.stream_delay = 0.05  # the provider streams slowly
    body = chat_body(stream=True)
    with socket.create_connection(("127.0.0.1", int(stack.origin.rsplit(":", 1)[1]))) as connection:
        connection.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"data:" not in received:
            received += connection.recv(4096)
    labels = {"route": "chat", "provider": "openai", "model": "gpt-4o-mini", "status": "499"}
    wait_for(lambda: stack.metric("sidegate_requests_total", **labels) == 1)
    log = stack.log.getvalue()
    assert "unexpected error" not in log and "stream ended with an error" not in log
    assert call(stack.origin, CHAT, chat_body())[0] == 200  # and the sidecar carries on
