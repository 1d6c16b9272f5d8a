"""A provider key Secret in the release namespace whose value is not text.

A Secret holds any bytes (an External Secrets sync of a binary file, a hand-made mistake).
Decoding one as UTF-8 used to end the leader's release watch for good: no more key fan-out,
bundle restores or signing-key reloads, while the leader gauge still read 1. Now the bad
value is refused with the Secret and key named, the keys in force stay, and the watch goes on.
"""

from __future__ import annotations

import base64
import logging

import pytest

from tests.conftest import fake_key
from tests.helpers.kubernetes import (
    SOURCES,
    Emulator,
    cluster,
    eventually,
    get,
    operator,
    send,
    source_secret,
)

CREDENTIALS = f"{SOURCES}/sidegate-credentials"
NOT_TEXT = base64.b64encode(b"\xff\xfe\x00binary").decode()


async def credentials(k8s: Emulator) -> dict[str, str]:
    data = ((await get(k8s, CREDENTIALS)) or {}).get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items() if v is not None}


async def holds(k8s: Emulator, wanted: dict[str, str]) -> bool:
    return await credentials(k8s) == wanted


@pytest.mark.asyncio
async def test_a_source_value_that_is_not_text_keeps_the_keys_in_force(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="sidegate.operator.handlers.release")
    first, third = fake_key(), fake_key()
    async with cluster() as (k8s, url), operator(url) as state:
        assert await send(k8s, "POST", SOURCES, source_secret(openai=first)) < 300
        assert await eventually(lambda: holds(k8s, {"openai": first}), 30)

        # The same Secret rotated to a value that is not text, and a second source Secret
        # that is nothing but such a value.
        patch = {"data": {"openai": NOT_TEXT}}
        assert await send(k8s, "PATCH", f"{SOURCES}/llm-keys", patch) < 300
        other = source_secret(anthropic="x")
        other["metadata"]["name"] = "binary-keys"
        other["data"] = {"anthropic": NOT_TEXT}
        assert await send(k8s, "POST", SOURCES, other) < 300

        def refused(name: str) -> bool:
            return any(
                f"source Secret {name}: " in r.getMessage() and "kept" in r.getMessage()
                for r in caplog.records
            )

        async def both_refused() -> bool:
            return refused("llm-keys") and refused("binary-keys")

        assert await eventually(both_refused, 30)
        # What was in force stays: no key lost, nothing undecodable fanned out.
        assert await credentials(k8s) == {"openai": first}
        assert state.release_watch is not None and not state.release_watch.done()

        # The watch goes on: a good value is fanned out as a rotation.
        good = {"data": source_secret(openai=third)["data"]}
        assert await send(k8s, "PATCH", f"{SOURCES}/llm-keys", good) < 300
        assert await eventually(lambda: holds(k8s, {"openai": third, "openai.previous": first}), 30)
        assert state.release_watch is not None and not state.release_watch.done()
        # No value, good or bad, reached the log.
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert first not in text and third not in text and NOT_TEXT not in text
