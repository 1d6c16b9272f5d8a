"""The official openai SDK, sync and async, streamed and not, through the sidecar."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.conftest import APP_PLACEHOLDER, Stack


def client(stack: Stack) -> openai.OpenAI:
    return stack.openai()


def test_chat_completion_reaches_provider_with_sidecar_key(stack: Stack) -> None:
    reply = client(stack).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    seen = stack.state.received[-1]
    assert seen.key == stack.keys["openai"]
    assert APP_PLACEHOLDER not in str(seen.headers)
    assert "cookie" not in seen.headers and "x-stainless-lang" not in seen.headers


def test_streamed_chat_arrives_in_chunks_without_the_usage_chunk(stack: Stack) -> None:
    chunks = list(
        client(stack).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three"
    # The sidecar asked upstream for usage, but the client did not: no choice-less chunk.
    assert all(c.choices for c in chunks)
    assert stack.state.received[-1].body["stream_options"] == {"include_usage": True}
    # The middleware counts tokens once the stream's last bytes are written, which the
    # client can see first: wait a little for the metric, never accept another value.
    deadline = time.monotonic() + 5
    while (
        output := stack.metric(
            "sidegate_tokens_total", provider="openai", model="gpt-4o-mini", direction="output"
        )
    ) != 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert output == 4


def test_streamed_chat_keeps_usage_chunk_when_client_asked(stack: Stack) -> None:
    chunks = list(
        client(stack).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "a b"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_completions_and_embeddings(stack: Stack) -> None:
    c = client(stack)
    completion = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="say this")
    assert completion.choices[0].text == "echo: say this"
    streamed = list(c.completions.create(model="gpt-3.5-turbo-instruct", prompt="x y", stream=True))
    assert "".join(s.choices[0].text for s in streamed) == "echo: x y"
    vectors = c.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"])
    assert len(vectors.data) == 3


def test_models_lists_exact_routes(stack: Stack) -> None:
    ids = [m.id for m in client(stack).models.list()]
    assert ids == ["gpt-4o-mini", "text-embedding-3-small", "gpt-renamed", "azure-chat"]


def test_renamed_model_goes_upstream_under_its_upstream_name(stack: Stack) -> None:
    client(stack).chat.completions.create(
        model="gpt-renamed", messages=[{"role": "user", "content": "x"}]
    )
    assert stack.state.received[-1].body["model"] == "gpt-4o-2024-08-06"


def test_azure_deployment_url_and_api_key_header(stack: Stack) -> None:
    reply = client(stack).chat.completions.create(
        model="azure-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.model == "prod-gpt4o"
    seen = stack.state.received[-1]
    assert seen.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert seen.headers["api-key"] == stack.keys["azure"]
    assert "authorization" not in seen.headers


def test_openai_compatible_provider_gets_its_own_key(stack: Stack) -> None:
    client(stack).chat.completions.create(
        model="local-llama", messages=[{"role": "user", "content": "hi"}]
    )
    assert stack.state.received[-1].key == stack.keys["compat"]


def test_async_client_streamed_and_not(stack: Stack) -> None:
    async def scenario() -> tuple[str, str]:
        async with openai.AsyncOpenAI(
            base_url=stack.base_url, api_key=APP_PLACEHOLDER, max_retries=0
        ) as c:
            whole = await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "async"}]
            )
            stream = await c.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "async stream"}],
                stream=True,
            )
            parts = [
                chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices
            ]
            return whole.choices[0].message.content or "", "".join(parts)

    whole, streamed = asyncio.run(scenario())
    assert whole == "echo: async"
    assert streamed == "echo: async stream"


def test_request_id_is_honoured_and_echoed(stack: Stack) -> None:
    raw = client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-request-id": "abc-123"},
    )
    assert raw.headers["x-request-id"] == "abc-123"
    assert raw.headers["x-upstream-request-id"] == "req_standin"
    generated = client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-request-id": "bad id\twith tab"},
    )
    assert len(generated.headers["x-request-id"]) == 32


def test_unknown_model_is_a_404_in_openai_shape(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(stack).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert not stack.state.received
