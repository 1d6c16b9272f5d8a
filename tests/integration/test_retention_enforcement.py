"""A retention policy in a running sidecar: Responses requests that leave `store` out are
sent with `store: false`; asking for storage (or background) is refused."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.conftest import Stack
from tests.integration.test_policy_enforcement import SA, policy_yaml, with_policies

MODEL = "gpt-4.1-mini"
RETAIN_NOTHING = policy_yaml(
    "hipaa",
    {
        "subjects": SA,
        "rules": [{"effect": "Allow", "models": ["*"]}],
        "retention": {"providerStorage": "Forbidden"},
    },
)


@pytest.fixture
def strict(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(with_policies(RETAIN_NOTHING))


def test_store_left_out_is_sent_as_false(strict: Stack) -> None:
    client = strict.openai()
    response = client.responses.create(model=MODEL, input="private")
    assert response.store is False and response.output_text == "echo: private"
    assert strict.state.received[-1].body["store"] is False
    assert response.id not in strict.state.responses  # the provider kept nothing
    events = list(client.responses.create(model=MODEL, input="a", stream=True))
    assert events[-1].type == "response.completed"
    assert strict.state.received[-1].body["store"] is False


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"store": True}, "store"), ({"background": True}, "background")],
)
def test_asking_for_storage_is_refused(strict: Stack, fields: dict[str, bool], param: str) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        strict.openai().responses.create(model=MODEL, input="x", **fields)  # type: ignore[call-overload]
    assert caught.value.code == "store_forbidden"
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert not strict.state.received
    assert strict.metric("sidegate_policy_denials_total", reason="store_forbidden") == 1


def test_chat_completions_may_not_ask_to_store(strict: Stack) -> None:
    client = strict.openai()
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], store=True
        )
    assert caught.value.code == "store_forbidden"
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], store=False
    )
    assert reply.choices[0].message.content == "echo: x"


def test_callers_without_the_policy_may_store(stack: Stack) -> None:
    response = stack.openai().responses.create(model=MODEL, input="kept")
    assert response.store is True and response.id in stack.state.responses
