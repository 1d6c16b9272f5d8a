"""OpenAI's Responses API through the sidecar with the official SDK: create, whole and
streamed, with policy, limits settled from `response.completed`, audit and broken streams."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import APP_PLACEHOLDER, Stack, wait_for
from tests.helpers.http import call
from tests.integration.test_count_tokens_and_moderations import audit_events
from tests.integration.test_policy_enforcement import SA, allow_all_limited, policy_yaml

MODEL = "gpt-4.1-mini"  # served by the stand-in's `gpt-*` route


def with_audit(spool: Path) -> Callable[[dict[str, Any]], None]:
    def apply(raw: dict[str, Any]) -> None:
        raw["audit"] = {"spool_directory": str(spool), "durability": "acknowledged"}

    return apply


def tokens(stack: Stack, direction: str) -> float:
    return stack.metric(
        "sidegate_tokens_total", provider="openai", model="gpt-*", direction=direction
    )


def test_create_whole(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(with_audit(tmp_path / "spool"))
    response = stack.openai().responses.create(
        model=MODEL, input="hello there", instructions="be brief", store=False
    )
    assert response.output_text == "echo: hello there"
    assert response.usage is not None and response.usage.output_tokens == 3
    seen = stack.state.received[-1]
    assert seen.path == "/v1/responses" and seen.key == stack.keys["openai"]
    assert APP_PLACEHOLDER not in str(seen.headers)
    assert tokens(stack, "input") == 2 and tokens(stack, "output") == 3
    (event,) = [e for e in audit_events(tmp_path / "spool") if e.get("request_id")]
    assert event["action"] == "llm.responses"
    assert event["usage"] == {"input_tokens": 2, "output_tokens": 3}


def test_create_streamed(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(with_audit(tmp_path / "spool"))
    events = list(
        stack.openai().responses.create(
            model=MODEL,
            input=[{"role": "user", "content": "one two three"}],
            stream=True,
            store=False,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "echo: one two three"
    assert tokens(stack, "output") == 4 and tokens(stack, "input") == 3
    # The last event waited for the audit event (acknowledged durability): it is on disk.
    (event,) = [e for e in audit_events(tmp_path / "spool") if e.get("request_id")]
    assert event["usage"] == {"input_tokens": 3, "output_tokens": 4}
    assert event["outcome"]["status"] == 200


def test_the_stream_helper_gets_the_final_response(stack: Stack) -> None:
    with stack.openai().responses.stream(model=MODEL, input="a b", store=False) as stream:
        final = stream.get_final_response()
    assert final.output_text == "echo: a b"
    assert final.usage is not None and final.usage.total_tokens == 5


@pytest.mark.parametrize("fault", ["abort", "unfinished"])
def test_a_broken_stream_raises_in_the_sdk(stack: Stack, fault: str) -> None:
    stack.state.stream_fault = fault
    with pytest.raises(openai.APIError) as caught:
        list(stack.openai().responses.create(model=MODEL, input="a b c d", stream=True))
    assert "request id" in str(caught.value)
    # Counted once the handler ends, which may be just after the client saw the error.
    wait_for(
        lambda: (
            stack.metric(
                "sidegate_requests_total",
                route="responses",
                provider="openai",
                model="gpt-*",
                status="502",
            )
            == 1
        )
    )
    stack.state.stream_fault = None
    events = list(stack.openai().responses.create(model=MODEL, input="a", stream=True))
    assert events[-1].type == "response.completed"


def test_reservations_settle_from_response_completed(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(allow_all_limited({"tokensPerMinute": 1000}))
    client = stack.openai()
    # Each reserves its bytes/4 plus max_output_tokens=500 and uses a handful: without
    # settling from the reported usage the second would already be refused.
    for index in range(4):
        answer = client.responses.create(
            model=MODEL, input="hi", max_output_tokens=500, stream=index % 2 == 1, store=False
        )
        if index % 2:
            list(answer)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=5000, store=False)
    assert caught.value.code == "rate_limit_tokens"
    remaining = int(caught.value.response.headers["x-ratelimit-remaining-tokens"])
    assert 950 < remaining < 1000


def test_responses_is_an_action_of_its_own(make_stack: Callable[..., Stack]) -> None:
    chat_only = policy_yaml(
        "p", {"subjects": SA, "rules": [{"effect": "Allow", "models": ["*"], "actions": ["chat"]}]}
    )

    def configure(raw: dict[str, Any]) -> None:
        directory = Path(raw["policy"]["directory"])
        for old in directory.iterdir():
            old.unlink()
        (directory / "p.yaml").write_text(chat_only)

    stack = make_stack(configure)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        stack.openai().responses.create(model=MODEL, input="x")
    assert caught.value.code == "no_matching_allow"
    assert not stack.state.received


def test_strict_validation(stack: Stack) -> None:
    def create(**fields: Any) -> tuple[int, Any]:
        status, _, body = call(
            stack.origin, "/v1/responses", json.dumps({"model": MODEL, **fields}).encode()
        )
        return status, body

    status, body = create(input="x", temprature=0.5)
    assert status == 400 and body["error"]["code"] == "unknown_field"
    status, body = create(input="x", store="false")
    assert status == 400 and body["error"]["param"] == "store"
    status, body = create(input="x", max_output_tokens=0)
    assert status == 400 and body["error"]["param"] == "max_output_tokens"
    status, body = create(input="x", model="azure-chat")
    assert status == 400 and body["error"]["code"] == "wrong_api_for_model"
    assert not stack.state.received


@pytest.mark.parametrize("end", ["failed", "error"])
def test_the_providers_own_failure_events_end_the_stream(
    make_stack: Callable[..., Stack], tmp_path: Path, end: str
) -> None:
    stack = make_stack(with_audit(tmp_path / "spool"))
    stack.state.responses_end = end
    events = list(stack.openai().responses.create(model=MODEL, input="a b", stream=True))
    # Relayed as the provider sent them: the stream is complete, not cut by the sidecar.
    assert events[-1].type == ("response.failed" if end == "failed" else "error")
    (event,) = [e for e in audit_events(tmp_path / "spool") if e.get("request_id")]
    assert event["outcome"]["status"] == 200
    # response.failed carries the usage so far, and it is what is metered and audited.
    expected = {"input_tokens": 2, "output_tokens": 3} if end == "failed" else None
    assert event["usage"] == expected
