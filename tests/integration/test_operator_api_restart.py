"""The leading operator outlives an API server restart: its connections reset, the port
refusing for a few seconds, then back (``tests/helpers/restarts.py``). A restart is a
connection error, not an HTTP status, so a loop that caught only ``kopf.TemporaryError``
ended on it for good: the leader kept kopf's lease but stopped its release namespace watch
(no key fan-out, no bundle restored, no certificate upkeep). After the restart the leader's
loops still do their work."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

import aiohttp
import pytest

from sidegate.operator import leadership
from tests.conftest import fake_key
from tests.helpers import restarts
from tests.helpers.kubernetes import (
    PEERING,
    POLICIES,
    SOURCES,
    Emulator,
    cluster,
    eventually,
    get,
    operator,
    policy,
    send,
    source_secret,
)
from tests.integration.test_operator_policies import policies_of
from tests.integration.test_webhook_certificates import (
    WANTED,
    ca_bundles,
    install_configurations,
    remove_ca_bundles,
)

CREDENTIALS = f"{SOURCES}/sidegate-credentials"
LIFETIME = 12  # the peering keep-alive's: the leader reads the peering every 2 s
# Down long enough that the leader's peering poll and the certificate check (every second)
# each meet it at least once; shorter than LIFETIME, so the leader stays the leader.
DOWN_SECONDS = 2 * leadership.Peering(PEERING, "x", 0, LIFETIME).poll_seconds + 1


def peering() -> leadership.Peering:
    """The only replica: it leads once kopf has announced it."""
    return leadership.Peering(
        name=PEERING,
        identity=leadership.identity(None),
        priority=leadership.priority(time.time()),
        lifetime=LIFETIME,
    )


async def credentials(k8s: Emulator) -> dict[str, str]:
    data = ((await get(k8s, CREDENTIALS)) or {}).get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items() if v is not None}


def warned(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> bool:
    return any(
        r.name == logger and r.levelno == logging.WARNING and text in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.asyncio
async def test_the_emulated_restart_resets_refuses_and_comes_back() -> None:
    """The failure is a real one at the socket: an open watch is reset, a new connection is
    refused, and afterwards the same address serves the same objects."""
    async with cluster() as (k8s, url):
        assert await send(k8s, "POST", SOURCES, source_secret(openai="a")) < 300
        async with aiohttp.ClientSession() as session:
            watch = await session.get(f"{url}{SOURCES}?watch=true")
            assert watch.status == 200
            async with restarts.down(k8s):
                with pytest.raises(aiohttp.ClientError):
                    await read_to_the_end(watch)
                watch.release()
                with pytest.raises(aiohttp.ClientConnectorError) as refused:
                    await session.get(f"{url}{SOURCES}/llm-keys")
                assert isinstance(refused.value.os_error, ConnectionRefusedError)
            async with session.get(f"{url}{SOURCES}/llm-keys") as answer:
                assert answer.status == 200
                assert (await answer.json())["metadata"]["name"] == "llm-keys"


@pytest.mark.asyncio
async def test_the_leader_still_fans_out_a_rotation_after_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidegate")
    first, second = fake_key(), fake_key()
    async with cluster() as (k8s, url), operator(url, peering=peering()):
        assert await send(k8s, "POST", SOURCES, source_secret(openai=first)) < 300
        # Fanned out: this replica leads and its release namespace watch runs.
        assert await eventually(lambda: _equal(credentials(k8s), {"openai": first}), 30)

        await restarts.restart(k8s, DOWN_SECONDS)

        rotated = {"data": source_secret(openai=second)["data"]}
        assert await send(k8s, "PATCH", SOURCES + "/llm-keys", rotated) < 300
        # The release namespace watch lists again after its back-off (at most 8 s here).
        assert await eventually(
            lambda: _equal(credentials(k8s), {"openai": second, "openai.previous": first}), 30
        )
        # kopf resumed too: a new policy is compiled, signed and published.
        assert await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"])) < 300
        assert await eventually(lambda: _equal(policies_of(k8s), ["gpt"]), 30)
    # The restart did reach the leader's peering poll (or the test proves nothing).
    assert warned(caplog, leadership.__name__, f"peering {PEERING} unreadable")


@pytest.mark.asyncio
async def test_the_leader_still_keeps_the_webhook_certificates_after_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidegate")
    async with cluster() as (k8s, url):
        await install_configurations(k8s)
        async with operator(url, peering=peering(), webhook_certificates=WANTED):
            encoded = await eventually(lambda: one_ca_bundle(k8s), seconds=30)
            serving = await get(k8s, f"{SOURCES}/{WANTED.tls_secret}")
            assert serving is not None

            await restarts.restart(k8s, DOWN_SECONDS)

            # A `helm upgrade` removes the caBundles and the serving Secret is deleted: both
            # are put back, from the same CA.
            await remove_ca_bundles(k8s)
            assert await send(k8s, "DELETE", f"{SOURCES}/{WANTED.tls_secret}") < 300
            assert await eventually(lambda: one_ca_bundle(k8s), seconds=20) == encoded
            reissued = await eventually(lambda: get(k8s, f"{SOURCES}/{WANTED.tls_secret}"), 20)
            assert reissued["data"]["tls.crt"] != serving["data"]["tls.crt"]
            assert reissued["data"]["ca.crt"] == serving["data"]["ca.crt"]
    assert warned(caplog, "sidegate.operator.handlers.webhook_certificates", "checking again")


async def one_ca_bundle(k8s: Emulator) -> str | None:
    """The caBundle every webhook of both configurations has, when they all have one."""
    found = await ca_bundles(k8s)
    return found[0] if len(found) == 2 and found[0] and len(set(found)) == 1 else None


async def read_to_the_end(answer: aiohttp.ClientResponse) -> None:
    async with asyncio.timeout(5):  # a watch that is not reset would run on
        async for _ in answer.content.iter_any():
            pass


async def _equal(read: Any, expected: Any) -> bool:
    return bool(await read == expected)
