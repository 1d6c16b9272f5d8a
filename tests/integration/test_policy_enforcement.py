"""RBACPolicy enforcement in a running sidecar: 403s, 429s, tenants, token settling."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Stack, wait_for
from tests.helpers.http import call, chat_body

CHAT = "/v1/chat/completions"


def policy_yaml(name: str, spec: dict[str, Any], namespace: str = "default") -> str:
    return json.dumps(
        {
            "apiVersion": "sidegate.io/v1alpha1",
            "kind": "RBACPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def with_policies(*documents: str) -> Callable[[dict[str, Any]], None]:
    def configure(raw: dict[str, Any]) -> None:
        directory = Path(raw["policy"]["directory"])
        for old in directory.iterdir():
            old.unlink()
        (directory / "policies.yaml").write_text("\n---\n".join(documents))

    return configure


SA = [{"kind": "ServiceAccount", "name": "default"}]


def allow_all_limited(limits: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Every model for the default service account, with these rate limits."""
    spec = {"subjects": SA, "rules": [{"effect": "Allow", "models": ["*"]}], "rateLimits": limits}
    return with_policies(policy_yaml("p", spec))


def test_denied_model_is_a_403_that_reveals_no_policy(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        with_policies(
            policy_yaml(
                "secret-team-policy",
                {
                    "subjects": SA,
                    "rules": [
                        {"effect": "Allow", "models": ["gpt-*"]},
                        {"effect": "Deny", "models": ["gpt-4o"]},
                    ],
                },
            )
        )
    )
    with pytest.raises(openai.PermissionDeniedError) as caught:
        stack.openai().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "denied_by_rule" and body["type"] == "permission_error"
    assert "secret-team-policy" not in json.dumps(body)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        stack.openai().chat.completions.create(
            model="claude-3", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["code"] == "no_matching_allow"  # type: ignore[index]
    assert stack.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    assert [r.body["model"] for r in stack.state.received] == ["gpt-4o-mini"]
    assert stack.metric("sidegate_policy_denials_total", reason="denied_by_rule") == 1


def test_messages_denial_in_anthropic_shape(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        with_policies(
            policy_yaml("p", {"subjects": SA, "rules": [{"effect": "Allow", "models": ["gpt-*"]}]})
        )
    )
    body = json.dumps(
        {"model": "claude-3", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    status, _, answer = call(stack.origin, "/v1/messages", body)
    assert status == 403
    assert answer["type"] == "error" and answer["error"]["type"] == "permission_error"


def test_models_list_shows_only_granted_models(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        with_policies(
            policy_yaml(
                "p",
                {
                    "subjects": SA,
                    "rules": [{"effect": "Allow", "models": ["gpt-4o-mini", "azure-*"]}],
                },
            )
        )
    )
    assert [m.id for m in stack.openai().models.list()] == ["gpt-4o-mini", "azure-chat"]


def test_tenant_scoped_rules_and_hostile_tenant_headers(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        with_policies(
            policy_yaml(
                "t",
                {
                    "subjects": SA,
                    "rules": [{"effect": "Allow", "models": ["*"], "tenants": ["acme"]}],
                },
            )
        )
    )
    status, _, _ = call(stack.origin, CHAT, chat_body())
    assert status == 403  # no tenant: the scoped rule does not match
    status, _, _ = call(stack.origin, CHAT, chat_body(), {"x-sidegate-tenant": "acme"})
    assert status == 200
    assert "x-sidegate-tenant" not in stack.state.received[-1].headers
    for hostile in ("a" * 64, "acme;drop", "../acme", "ac me"):
        status, _, answer = call(stack.origin, CHAT, chat_body(), {"x-sidegate-tenant": hostile})
        assert status == 400 and answer["error"]["code"] == "invalid_tenant", hostile
    status, _, answer = call(
        stack.origin,
        CHAT,
        chat_body(),
        {"x-sidegate-tenant": "ac\u00e9me".encode().decode("latin-1")},
    )
    assert status == 400
    assert len(stack.state.received) == 1


def test_429_with_openai_headers_streamed_and_not(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(allow_all_limited({"requestsPerMinute": 2}))
    c = stack.openai()
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "1"}])
    list(
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "2"}], stream=True
        )
    )
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as caught:
            c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "3"}], stream=stream
            )
        headers = caught.value.response.headers
        assert int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-limit-requests"] == "2"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert caught.value.body["code"] == "rate_limit_requests"  # type: ignore[index]
    assert len(stack.state.received) == 2


def test_token_reservations_are_settled_with_reported_usage(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(allow_all_limited({"tokensPerMinute": 1000}))
    c = stack.openai()
    # Each request reserves ~550 tokens (its bytes/4 plus max_tokens=500) and uses ~10.
    # Without settling, the second would already be refused.
    for index in range(4):
        stream = index % 2 == 1
        reply = c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=500,
            stream=stream,
        )
        if stream:
            list(reply)  # type: ignore[call-overload]
    # A request that could use the whole minute's budget needs a full bucket: refused now.
    with pytest.raises(openai.RateLimitError) as caught:
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5000
        )
    headers = caught.value.response.headers
    assert caught.value.body["code"] == "rate_limit_tokens"  # type: ignore[index]
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert 900 < int(headers["x-ratelimit-remaining-tokens"]) < 1000


def test_concurrency_limit(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(allow_all_limited({"maxConcurrent": 1}))
    stack.state.delay = 0.5
    results: list[int] = []
    slow = threading.Thread(target=lambda: results.append(call(stack.origin, CHAT, chat_body())[0]))
    slow.start()
    wait_for(lambda: len(stack.state.received) == 1)
    status, _, answer = call(stack.origin, CHAT, chat_body())
    slow.join()
    assert (status, answer["error"]["code"]) == (429, "rate_limit_concurrency")
    assert results == [200]
    stack.state.delay = 0
    assert call(stack.origin, CHAT, chat_body())[0] == 200  # the slot was released


def test_tenant_override_is_a_sub_budget(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        allow_all_limited(
            {
                "requestsPerMinute": 3,
                "tenantOverrides": [{"tenant": "small", "requestsPerMinute": 1}],
            }
        )
    )
    small = [
        call(stack.origin, CHAT, chat_body(), {"x-sidegate-tenant": "small"})[0] for _ in range(2)
    ]
    assert small == [200, 429]
    others = [
        call(stack.origin, CHAT, chat_body(), {"x-sidegate-tenant": f"t{i}"})[0] for i in range(3)
    ]
    assert others == [200, 200, 429]  # one budget for the account, whatever it claims


def test_bad_policy_file_keeps_the_last_good_policy(stack: Stack) -> None:
    (stack.policy_dir / "broken.yaml").write_text(
        "apiVersion: sidegate.io/v1alpha1\nkind: RBACPolicy\nmetadata: {name: b}\nspec: {rules: [{effect: Maybe}]}\n"
    )
    wait_for(lambda: stack.metric("sidegate_policy_reloads_total", result="failed") >= 1)
    assert call(stack.origin, CHAT, chat_body())[0] == 200
    log = stack.log.getvalue()
    assert "policy rejected" in log and "broken.yaml:4" in log
