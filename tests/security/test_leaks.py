"""No loaded key and no key-shaped string reaches a log line or an error body.

Every integration test already checks its logs on teardown (tests/conftest.py); this one
adds the answers the clients got, across the scenarios that tend to leak: a provider that
echoes the rejected key, streamed and not, for each auth style; bad input; timeouts; a
rejected credential file.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Stack, assert_no_secrets, wait_for
from tests.helpers.http import call, chat_body


def scenario_bodies(stack: Stack) -> list[str]:
    answers: list[str] = []

    def record(path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        status, answer_headers, answer = call(stack.origin, path, body, headers)
        answers.append(f"{status} {json.dumps(answer_headers)} {json.dumps(answer)}")

    message = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    stack.state.accepted_keys.clear()  # every provider now refuses, echoing the key
    for model in ("gpt-4o-mini", "azure-chat", "local-model"):
        record("/v1/chat/completions", chat_body(model=model))
        record("/v1/chat/completions", chat_body(model=model, stream=True))
    record("/v1/messages", json.dumps(message).encode())
    record("/v1/messages", json.dumps({**message, "stream": True}).encode())
    record("/v1/chat/completions", chat_body(), {"authorization": "Bearer " + stack.keys["openai"]})
    record("/v1/chat/completions", b"{bad json " + stack.keys["openai"].encode())
    record("/v1/chat/completions", chat_body(model=stack.keys["openai"]))
    return answers


def test_nothing_secret_in_answers_or_logs(stack: Stack, ca_file: Path) -> None:
    # Control: the provider really does echo a fragment of the key it refuses, so the
    # checks below are not passing for want of anything to catch.
    stack.state.accepted_keys.clear()
    request = urllib.request.Request(
        f"https://127.0.0.1:{stack.provider_port}/v1/chat/completions",
        data=chat_body(),
        headers={
            "authorization": "Bearer " + stack.keys["openai"],
            "content-type": "application/json",
        },
    )
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        urllib.request.urlopen(request, context=context)  # noqa: S310 - https, test server
    except urllib.error.HTTPError as refused:
        raw = refused.read().decode()
    assert stack.keys["openai"][-4:] in raw and "sk-" in raw

    answers = scenario_bodies(stack)
    assert any("Incorrect API key" in a for a in answers)
    assert_no_secrets("\n".join(answers), stack.all_keys)


def test_rejected_credential_file_is_named_but_not_shown(stack: Stack) -> None:
    leaked = "sk-" + "partial" + "halfwritten" * 3 + "\nsecond line"
    stack.volume.publish({**stack.keys, "openai": leaked})
    wait_for(lambda: "credential rejected" in stack.log.getvalue())
    log = stack.log.getvalue()
    assert "openai" in log and "not a single printable token" in log
    assert "halfwritten" not in log


def test_timeouts_and_unreachable_name_no_key(make_stack: Callable[..., Stack]) -> None:
    def short(raw: dict[str, Any]) -> None:
        raw["providers"]["openai"]["timeouts"] = {"connect": 1, "read": 0.2}

    stack = make_stack(short)
    stack.state.delay = 0.5
    status, headers, answer = call(stack.origin, "/v1/chat/completions", chat_body())
    assert status == 504
    assert_no_secrets(json.dumps([headers, answer]), stack.all_keys)
