"""The standalone policy directory under the writes that broke it: files created and
written slowly, emptied, cut, or far too large."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import Stack, wait_for
from tests.helpers.http import call, chat_body
from tests.integration.test_policy_enforcement import SA, policy_yaml, with_policies

CHAT = "/v1/chat/completions"
MINI_ONLY = policy_yaml(
    "mini", {"subjects": SA, "rules": [{"effect": "Allow", "models": ["gpt-4o-mini"]}]}
)


def reloads(stack: Stack, result: str) -> float:
    return stack.metric("sidegate_policy_reloads_total", result=result)


def test_a_file_is_read_only_once_its_writer_closes_it(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(with_policies(MINI_ONLY))
    allow = policy_yaml(
        "team", {"subjects": SA, "rules": [{"effect": "Allow", "models": ["gpt-*"]}]}
    )
    deny = policy_yaml(
        "no-4o", {"subjects": SA, "rules": [{"effect": "Deny", "models": ["gpt-4o"]}]}
    )
    before = reloads(stack, "ok")
    with (stack.policy_dir / "team.yaml").open("w") as file:
        file.write(allow + "\n---\n")  # cut at a document boundary: valid YAML on its own
        file.flush()
        time.sleep(0.5)  # a slow writer: the Deny is not there yet
        assert reloads(stack, "ok") == before  # nothing was read half-way
        assert call(stack.origin, CHAT, chat_body(model="gpt-4o"))[0] == 403
        file.write(deny)
    wait_for(lambda: reloads(stack, "ok") > before)
    assert call(stack.origin, CHAT, chat_body(model="gpt-4o"))[0] == 403  # the Deny holds
    assert call(stack.origin, CHAT, chat_body(model="gpt-4.1"))[0] == 200


def test_an_emptied_file_is_a_loud_warning(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(with_policies(MINI_ONLY))
    before = reloads(stack, "ok")
    (stack.policy_dir / "policies.yaml").write_text("")
    wait_for(lambda: reloads(stack, "ok") > before)
    log = stack.log.getvalue()
    assert "empty, so it defines no policy" in log
    assert "policy change leaves callers with no policy" in log
    assert "default/ServiceAccount/default" in log


def test_an_oversized_file_is_refused_unread_and_readyz_says_so(stack: Stack) -> None:
    (stack.policy_dir / "huge.yaml").write_text("# padding\n" * 500_000)  # 5 MB
    wait_for(lambda: reloads(stack, "failed") >= 1)
    status, _, ready = call(stack.origin, "/readyz", method="GET")
    assert status == 200 and "larger than" in ready["policy_last_reload_failed"]
    assert stack.metric("sidegate_policy_last_reload_failed") == 1
    assert call(stack.origin, CHAT, chat_body())[0] == 200  # the last good policy stays
    (stack.policy_dir / "huge.yaml").unlink()
    wait_for(lambda: stack.metric("sidegate_policy_last_reload_failed") == 0)
    assert "policy_last_reload_failed" not in call(stack.origin, "/readyz", method="GET")[2]
