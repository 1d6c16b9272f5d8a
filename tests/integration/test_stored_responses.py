"""Stored Responses API responses stay with their creator: retrieve, delete, cancel, input
items, `previous_response_id` and `background` through the official openai SDK, and another
service account (through a second sidecar sharing Redis) refused every one of them."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Stack
from tests.helpers.http import call
from tests.helpers.processes import RedisServer, start_redis

MODEL = "gpt-4.1-mini"


def test_the_creator_uses_its_stored_response(stack: Stack) -> None:
    client = stack.openai()
    first = client.responses.create(model=MODEL, input="remember this")
    assert client.responses.retrieve(first.id).output_text == "echo: remember this"
    items = client.responses.input_items.list(first.id)
    assert [item.type for item in items.data] == ["message"]
    second = client.responses.create(model=MODEL, input="and this", previous_response_id=first.id)
    assert stack.state.received[-1].body["previous_response_id"] == first.id
    assert len(client.responses.input_items.list(second.id).data) == 2
    assert client.responses.delete(first.id) is None
    # Deleted: its record goes too, so the id is nobody's now.
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.responses.retrieve(first.id)
    assert caught.value.code == "response_not_owned"


def test_a_streamed_response_is_on_record_before_its_id_is_seen(stack: Stack) -> None:
    client = stack.openai()
    stream = client.responses.create(model=MODEL, input="a b", stream=True)
    created = next(iter(stream))
    assert created.type == "response.created"
    # Mid-stream, the id just learnt is already usable by its creator.
    assert client.responses.retrieve(created.response.id).id == created.response.id
    assert list(stream)[-1].type == "response.completed"


def test_background_and_cancel(stack: Stack) -> None:
    client = stack.openai()
    queued = client.responses.create(model=MODEL, input="later", background=True)
    assert queued.status == "queued"
    assert client.responses.retrieve(queued.id).status == "completed"
    other = client.responses.create(model=MODEL, input="never", background=True)
    assert client.responses.cancel(other.id).status == "cancelled"


def test_unstored_responses_are_not_recorded(stack: Stack) -> None:
    client = stack.openai()
    response = client.responses.create(model=MODEL, input="x", store=False)
    with pytest.raises(openai.PermissionDeniedError):
        client.responses.retrieve(response.id)


def test_ids_from_before_sidegate_have_no_owner(stack: Stack) -> None:
    client = stack.openai()
    # Made at the provider directly, before the sidecar was put in front.
    made = client.responses.create(model=MODEL, input="old", store=False)
    stack.state.responses["resp_older"] = made.model_dump()
    received = len(stack.state.received)
    for attempt in (
        lambda: client.responses.retrieve("resp_older"),
        lambda: client.responses.delete("resp_older"),
        lambda: client.responses.cancel("resp_older"),
        lambda: client.responses.input_items.list("resp_older"),
        lambda: client.responses.create(
            model=MODEL, input="go on", previous_response_id="resp_older"
        ),
    ):
        with pytest.raises(openai.PermissionDeniedError) as caught:
            attempt()
        assert caught.value.code == "response_not_owned"
    assert len(stack.state.received) == received  # the provider was never asked
    assert stack.metric("sidegate_policy_denials_total", reason="response_not_owned") == 5


def test_strict_paths_and_queries(stack: Stack) -> None:
    response = stack.openai().responses.create(model=MODEL, input="x")
    status, _, body = call(stack.origin, f"/v1/responses/{response.id}?stream=true", method="GET")
    assert status == 400 and body["error"]["code"] == "unknown_field"
    status, _, body = call(stack.origin, "/v1/responses/resp%20x", method="GET")
    assert status == 400 and body["error"]["param"] == "response_id"
    status, _, body = call(
        stack.origin, f"/v1/responses/{response.id}/input_items?order=asc&limit=5", method="GET"
    )
    assert status == 200 and body["object"] == "list"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis(password=secrets.token_hex(12))
    yield server
    server.kill()


def replica(
    redis_server: RedisServer, tmp_path: Path, service_account: str, provider: Stack | None
) -> Callable[[dict[str, Any]], None]:
    """A sidecar of ``service_account`` with owners in Redis, in front of ``provider``'s
    stand-in when given (so both sidecars reach the same stored responses)."""

    def configure(raw: dict[str, Any]) -> None:
        directory = tmp_path / f"redis-{service_account}-{secrets.token_hex(4)}"
        directory.mkdir()
        (directory / "url").write_text(redis_server.url)
        (directory / "password").write_text(redis_server.password or "")
        raw["identity"] = {"namespace": "default", "service_account": service_account}
        raw["rate_limits"] = {
            "backend": "redis",
            "fail_mode": "closed",
            "redis": {
                "url_file": str(directory / "url"),
                "password_file": str(directory / "password"),
            },
        }
        if provider is not None:
            origin = f"https://127.0.0.1:{provider.provider_port}"
            raw["providers"]["openai"]["base_url"] = origin + "/v1"

    return configure


def test_another_service_account_is_refused_across_replicas(
    make_stack: Callable[..., Stack], redis_server: RedisServer, tmp_path: Path
) -> None:
    first = make_stack(replica(redis_server, tmp_path, "app-one", None))
    other = make_stack(replica(redis_server, tmp_path, "app-two", first))
    twin = make_stack(replica(redis_server, tmp_path, "app-one", first))
    for stack in (other, twin):  # they hold their own keys; the shared provider takes them
        first.state.accepted_keys.update(stack.keys.values())
    mine = first.openai().responses.create(model=MODEL, input="private", background=True)
    received = len(first.state.received)
    intruder = other.openai()
    for attempt in (
        lambda: intruder.responses.retrieve(mine.id),
        lambda: intruder.responses.input_items.list(mine.id),
        lambda: intruder.responses.cancel(mine.id),
        lambda: intruder.responses.delete(mine.id),
        lambda: intruder.responses.create(model=MODEL, input="x", previous_response_id=mine.id),
    ):
        with pytest.raises(openai.PermissionDeniedError) as caught:
            attempt()
        assert caught.value.code == "response_not_owned"
    assert len(first.state.received) == received
    # Another replica of the same service account finds the record in Redis.
    assert twin.openai().responses.cancel(mine.id).status == "cancelled"
    follow_up = twin.openai().responses.create(
        model=MODEL, input="go on", previous_response_id=mine.id
    )
    assert first.openai().responses.retrieve(follow_up.id).previous_response_id == mine.id
    assert first.openai().responses.delete(mine.id) is None
    with pytest.raises(openai.PermissionDeniedError):
        twin.openai().responses.retrieve(mine.id)  # forgotten everywhere
