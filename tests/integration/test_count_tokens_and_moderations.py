"""Anthropic token counting and OpenAI moderations through the sidecar, with the official
SDKs: their own policy actions, request limits (never token budgets), audit and metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import APP_PLACEHOLDER, Stack
from tests.helpers.http import call
from tests.integration.test_policy_enforcement import SA, policy_yaml, with_policies

MODERATION_ROUTE = {"model": "omni-moderation-*", "provider": "openai"}
MESSAGES = [{"role": "user", "content": "how many tokens is this"}]


def configure(*documents: str, audit: Path | None = None) -> Callable[[dict[str, Any]], None]:
    """The stand-in's routes plus one for OpenAI's moderation models, these policies, and an
    acknowledged audit spool (events on disk before the answer) when ``audit`` is given."""
    policies = with_policies(*documents)

    def apply(raw: dict[str, Any]) -> None:
        raw["routes"].append(MODERATION_ROUTE)
        policies(raw)
        if audit is not None:
            raw["audit"] = {"spool_directory": str(audit), "durability": "acknowledged"}

    return apply


def allow(actions: list[str] | None = None, **spec: Any) -> str:
    rule: dict[str, Any] = {"effect": "Allow", "models": ["*"]}
    if actions is not None:
        rule["actions"] = actions
    return policy_yaml("p", {"subjects": SA, "rules": [rule], **spec})


def audit_events(spool: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for segment in sorted(spool.rglob("*.jsonl"))
        for line in segment.read_bytes().splitlines()
    ]


def test_count_tokens_with_the_anthropic_sdk(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(configure(allow(), audit=tmp_path / "spool"))
    counted = stack.anthropic().messages.count_tokens(
        model="claude-test-large",
        messages=MESSAGES,
        system="be brief",  # type: ignore[arg-type]
    )
    assert counted.input_tokens == 7
    seen = stack.state.received[-1]
    assert seen.path == "/v1/messages/count_tokens"
    assert seen.key == stack.keys["anthropic"]
    assert APP_PLACEHOLDER not in str(seen.headers)
    labels = {"provider": "anthropic", "model": "claude-*", "status": "200"}
    assert stack.metric("sidegate_requests_total", route="messages.count_tokens", **labels) == 1
    # A count is not a use of the model: no tokens are metered.
    assert (
        stack.metric(
            "sidegate_tokens_total", provider="anthropic", model="claude-*", direction="input"
        )
        == 0
    )
    (event,) = [e for e in audit_events(tmp_path / "spool") if e.get("request_id")]
    assert event["action"] == "llm.messages.count_tokens"
    assert event["outcome"]["result"] == "allowed"
    assert event["resource"] == {
        "provider": "anthropic",
        "model": "claude-test-large",
        "route": "messages.count_tokens",
    }


def test_moderations_with_the_openai_sdk(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(configure(allow(), audit=tmp_path / "spool"))
    client = stack.openai()
    checked = client.moderations.create(input=["a calm day", "attack them"])
    assert [r.flagged for r in checked.results] == [False, True]
    assert checked.results[1].categories.violence
    seen = stack.state.received[-1]
    assert seen.path == "/v1/moderations" and seen.key == stack.keys["openai"]
    assert "model" not in seen.body  # the provider applies its own default, as without us
    named = client.moderations.create(model="omni-moderation-2024-09-26", input="fine")
    assert named.model == "omni-moderation-2024-09-26"
    events = [e for e in audit_events(tmp_path / "spool") if e.get("request_id")]
    assert [e["action"] for e in events] == ["llm.moderations"] * 2
    # Without a model the decision is on OpenAI's default, and the audit says so.
    assert [e["resource"]["model"] for e in events] == [
        "omni-moderation-latest",
        "omni-moderation-2024-09-26",
    ]
    assert (
        stack.metric(
            "sidegate_requests_total",
            route="moderations",
            provider="openai",
            model="omni-moderation-*",
            status="200",
        )
        == 2
    )


def test_each_is_an_action_of_its_own(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(configure(allow(["messages", "chat"])))
    with pytest.raises(anthropic.PermissionDeniedError) as counted:
        stack.anthropic().messages.count_tokens(
            model="claude-test-large",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    assert "no_matching_allow" in str(counted.value)
    with pytest.raises(openai.PermissionDeniedError) as moderated:
        stack.openai().moderations.create(input="x")
    assert moderated.value.code == "no_matching_allow"
    assert not stack.state.received
    stack.anthropic().messages.create(model="claude-x", max_tokens=8, messages=MESSAGES)  # type: ignore[arg-type]


def test_limited_by_requests_never_by_tokens(make_stack: Callable[..., Stack]) -> None:
    # One token a minute: any chat would exhaust it; counting and moderating spend none.
    limits = {"requestsPerMinute": 4, "tokensPerMinute": 1}
    stack = make_stack(configure(allow(rateLimits=limits)))
    for _ in range(2):
        stack.anthropic().messages.count_tokens(model="claude-a", messages=MESSAGES)  # type: ignore[arg-type]
        stack.openai().moderations.create(input="fine")
    with pytest.raises(openai.RateLimitError) as caught:
        stack.openai().moderations.create(input="fine")
    assert caught.value.code == "rate_limit_requests"
    assert len(stack.state.received) == 4


def test_strict_bodies(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(configure(allow()))
    counting = {"model": "claude-a", "messages": MESSAGES, "max_tokens": 5}
    status, _, body = call(
        stack.origin,
        "/v1/messages/count_tokens",
        json.dumps(counting).encode(),
        {"anthropic-version": "2023-06-01"},
    )
    assert status == 400 and body["type"] == "error"  # in Anthropic's shape
    assert "max_tokens" in body["error"]["message"]
    status, _, body = call(
        stack.origin, "/v1/moderations", json.dumps({"input": "x", "stream": True}).encode()
    )
    assert status == 400 and body["error"]["param"] == "stream"
    status, _, body = call(stack.origin, "/v1/moderations", json.dumps({"model": "m"}).encode())
    assert status == 400 and body["error"]["param"] == "input"
    assert not stack.state.received


def test_azure_deployments_do_not_moderate(make_stack: Callable[..., Stack]) -> None:
    def azure_moderation(raw: dict[str, Any]) -> None:
        raw["routes"].insert(0, {"model": "azure-moderation", "provider": "azure"})

    stack = make_stack(azure_moderation)
    with pytest.raises(openai.BadRequestError) as caught:
        stack.openai().moderations.create(model="azure-moderation", input="x")
    assert caught.value.code == "wrong_api_for_model"
    assert not stack.state.received
