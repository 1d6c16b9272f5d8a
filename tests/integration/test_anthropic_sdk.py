"""The official anthropic SDK, sync and async, streamed and not, through the sidecar."""

from __future__ import annotations

import asyncio

import anthropic
import pytest

from tests.conftest import APP_PLACEHOLDER, Stack


def client(stack: Stack) -> anthropic.Anthropic:
    return stack.anthropic()


def test_message_reaches_provider_with_sidecar_key(stack: Stack) -> None:
    message = client(stack).messages.create(
        model="claude-test-large", max_tokens=64, messages=[{"role": "user", "content": "hi there"}]
    )
    assert message.content[0].text == "echo: hi there"  # type: ignore[union-attr]
    seen = stack.state.received[-1]
    assert seen.key == stack.keys["anthropic"]
    assert seen.headers["anthropic-version"]  # the SDK's own, passed through
    assert APP_PLACEHOLDER not in str(seen.headers)
    assert (
        stack.metric(
            "sidegate_tokens_total", provider="anthropic", model="claude-*", direction="input"
        )
        == 2
    )


def test_streamed_message_and_its_usage(stack: Stack) -> None:
    with client(stack).messages.stream(
        model="claude-test-small", max_tokens=64, messages=[{"role": "user", "content": "a b c"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: a b c"
    assert final.usage.output_tokens == 4
    assert (
        stack.metric(
            "sidegate_tokens_total", provider="anthropic", model="claude-*", direction="output"
        )
        == 4
    )


def test_async_client(stack: Stack) -> None:
    async def scenario() -> str:
        async with anthropic.AsyncAnthropic(
            base_url=stack.origin, api_key=APP_PLACEHOLDER, max_retries=0
        ) as c:
            message = await c.messages.create(
                model="claude-test-async",
                max_tokens=8,
                messages=[{"role": "user", "content": "async"}],
            )
            return message.content[0].text  # type: ignore[union-attr]

    assert asyncio.run(scenario()) == "echo: async"


def test_errors_come_back_in_anthropic_shape(stack: Stack) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(stack).messages.create(
            model="claude-x", max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_openai_model_on_messages_route_is_refused(stack: Stack) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(stack).messages.create(
            model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert "does not speak /v1/messages" in str(caught.value)
    assert not stack.state.received


def test_models_list_in_anthropic_shape(stack: Stack) -> None:
    ids = [m.id for m in client(stack).models.list()]
    assert "gpt-4o-mini" in ids
