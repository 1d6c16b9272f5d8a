"""A real `sidegate sidecar` process fed by the broker (on kmock): the official SDKs get 200
with the delivered key added upstream, the admin API takes the delivered token, nothing
secret reaches its log; with the broker stopped it keeps serving until the staleness limit,
then answers 503 broker_unreachable."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import trustme

from sidegate import standin
from tests.conftest import APP_PLACEHOLDER, assert_no_secrets, fake_key
from tests.helpers import brokers
from tests.helpers.http import call, chat_body
from tests.helpers.processes import Process, free_port, start_sidecar
from tests.policies import allow, policy


@pytest.fixture
async def world(
    tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> AsyncIterator[brokers.World]:
    grant = [policy("p", rules=[allow("gpt-*", "claude-*")])]
    async with brokers.world(tmp_path, ca, server_cert, grant, max_wait=10) as running_world:
        yield running_world


def sidecar_config(
    world: brokers.World,
    ca_file: Path,
    token_file: Path,
    provider_port: int,
    *,
    staleness: float = 300,
    admin_port: int | None = None,
) -> dict[str, Any]:
    origin = f"https://127.0.0.1:{provider_port}"
    tls = {"ca_file": str(ca_file)}
    config: dict[str, Any] = {
        "broker": {
            "url": f"https://127.0.0.1:{world.replica.api_port}",
            "ca_file": str(ca_file),
            "token_file": str(token_file),
            "max_staleness_seconds": staleness,
            "wait_seconds": 1,
        },
        "policy": {"trusted_keys": world.trusted},
        "identity": {"namespace": "team-a", "service_account": "app"},
        "providers": {
            "openai": {"kind": "openai", "base_url": origin + "/v1", "tls": tls},
            "anthropic": {"kind": "anthropic", "base_url": origin, "tls": tls},
        },
        "routes": [
            {"model": "gpt-*", "provider": "openai"},
            {"model": "claude-*", "provider": "anthropic"},
        ],
    }
    if admin_port is not None:
        config["admin"] = {"port": admin_port}
    return config


async def start(config: dict[str, Any], workdir: Path) -> Process:
    # Blocking (it polls /readyz): in a thread, so the broker on this loop can answer.
    return await asyncio.to_thread(start_sidecar, config, workdir)


async def test_the_sdks_through_a_broker_fed_sidecar_get_200_with_the_delivered_key(
    world: brokers.World,
    ca_file: Path,
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidegate.broker.server")
    port, state = provider
    state.accepted_keys.update(world.keys.values())
    new_key = fake_key()  # delivered later, not accepted by the provider yet
    token_file = tmp_path / "token"
    token_file.write_text(await world.pod_token())
    admin_port = free_port()
    config = sidecar_config(world, ca_file, token_file, port, admin_port=admin_port)
    config["audit"] = {"spool_directory": str(tmp_path / "spool")}
    process = await start(config, tmp_path)
    try:
        chat = await asyncio.to_thread(_chat, process.origin)
        message = await asyncio.to_thread(_message, process.origin)
        assert chat == "echo: hi" and message == "echo: hi"
        assert [r.key for r in state.received] == [world.keys["openai"], world.keys["anthropic"]]
        admin = f"http://127.0.0.1:{admin_port}"
        bearer = {"Authorization": f"Bearer {world.admin_token}"}
        listed = await asyncio.to_thread(call, admin, "/admin/v1/policies", None, bearer, "GET")
        assert listed[0] == 200 and listed[2]["items"][0]["metadata"]["name"] == "p"
        wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(24)}"}
        refused = await asyncio.to_thread(call, admin, "/admin/v1/policies", None, wrong, "GET")
        assert refused[0] == 401
        # A rotation with overlap, delivered: the new key is not active upstream yet, so the
        # one retry on 401 uses the delivered previous key, and no request fails.
        old_key = world.keys["openai"]
        await brokers.put(
            world.k8s,
            brokers.credentials_secret(
                {**world.keys, "openai": new_key, "openai.previous": old_key}
            ),
        )
        deadline = time.monotonic() + 10
        while not any(r.key == new_key for r in state.received):
            assert await asyncio.to_thread(_chat, process.origin) == "echo: hi"
            assert time.monotonic() < deadline, "the rotated key never reached the sidecar"
        assert state.received[-1].key == old_key  # the retry, after the 401 to the new key
    finally:
        log = process.stop()
    secrets_used = {*world.keys.values(), new_key, world.admin_token, token_file.read_text()}
    assert_no_secrets(log, secrets_used)
    assert "delivery installed" in log
    # The audit key this run printed is the one the broker registered for the pod.
    printed = next(
        json.loads(line) for line in log.splitlines() if "audit signing key for this run" in line
    )
    registered = [r for r in caplog.records if r.getMessage() == "audit key registered"]
    assert [r.audit_key_id for r in registered] == [printed["key_id"]]  # type: ignore[attr-defined]


def _chat(origin: str) -> str | None:
    with openai.OpenAI(base_url=origin + "/v1", api_key=APP_PLACEHOLDER, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    return reply.choices[0].message.content


def _message(origin: str) -> str:
    with anthropic.Anthropic(base_url=origin, api_key=APP_PLACEHOLDER, max_retries=0) as client:
        reply = client.messages.create(
            model="claude-test-large",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
        )
    block = reply.content[0]
    assert block.type == "text"
    return block.text


async def test_with_the_broker_stopped_the_sidecar_serves_until_the_staleness_limit(
    world: brokers.World,
    ca_file: Path,
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
) -> None:
    port, state = provider
    state.accepted_keys.update(world.keys.values())
    token_file = tmp_path / "token"
    token_file.write_text(await world.pod_token())
    staleness = 4.0
    config = sidecar_config(world, ca_file, token_file, port, staleness=staleness)
    process = await start(config, tmp_path)
    try:
        assert (await asyncio.to_thread(call, process.origin, "/v1/chat/completions", chat_body()))[
            0
        ] == 200
        await world.stop_broker()
        stopped = time.monotonic()
        # The last answer it had was at most one long-poll (1 s) before the stop.
        await asyncio.sleep(1.0)
        assert (await asyncio.to_thread(call, process.origin, "/v1/chat/completions", chat_body()))[
            0
        ] == 200
        while True:
            status, _, answer = await asyncio.to_thread(
                call, process.origin, "/v1/chat/completions", chat_body()
            )
            if status != 200:
                break
            assert time.monotonic() - stopped < staleness + 5, "still serving past the limit"
            await asyncio.sleep(0.1)
        waited = time.monotonic() - stopped
        assert status == 503 and answer["error"]["code"] == "broker_unreachable", answer
        assert staleness - 1.5 <= waited, f"refused after {waited:.1f} s, before the limit"
        ready = await asyncio.to_thread(call, process.origin, "/readyz", None, None, "GET")
        assert ready[0] == 503 and ready[2]["credentials_stale"] is True
    finally:
        log = process.stop()
    assert_no_secrets(log, {*world.keys.values(), world.admin_token})
