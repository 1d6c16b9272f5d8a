"""The leading operator outlives kopf logging in again. The API server answers 401 once the
operator's token is no longer valid (a projected ServiceAccount token expired or rotated):
kopf then runs the login handler again, which makes a new API client with the new token and
closes the old one. The release namespace watch used to keep the client it started with: its
open watch on the closed session waited for events that never came (a rotation of a source
key was not fanned out), and its next list raised RuntimeError("Session is closed"), ending
the task for good.

Here the emulator revokes the token the operator logged in with (401 for it from then on) and
the kubeconfig kopf's login reads carries a new one, as a rotated token would."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest

from sidegate.operator import leadership
from sidegate.operator.kube import SECRETS, ApiClient
from sidegate.operator.state import OperatorState
from tests.conftest import fake_key
from tests.helpers import authorizing
from tests.helpers.kubernetes import (
    PEERING,
    POLICIES,
    RELEASE,
    SOURCES,
    Emulator,
    cluster,
    eventually,
    get,
    kubeconfig,
    operator,
    policy,
    send,
    source_secret,
)
from tests.integration.test_operator_api_restart import one_ca_bundle
from tests.integration.test_operator_policies import policies_of
from tests.integration.test_webhook_certificates import (
    WANTED,
    install_configurations,
    remove_ca_bundles,
)

CREDENTIALS = f"{SOURCES}/sidegate-credentials"
# What kube-apiserver's 401 leaves in the emulator's record of refused requests.
UNAUTHENTICATED = "unauthenticated: a bearer token of no known account"
# How soon a rotation made after the new login reaches the credentials Secret.
FAN_OUT_SECONDS = 15


def operator_token(k8s: Emulator) -> str:
    """A token the emulated API server issued to the operator's service account, held to the
    chart's RBAC for the operator."""
    token = k8s.issue_token(RELEASE, "sidegate-operator", audiences=())
    k8s.accounts[token] = authorizing.operator_grants()
    return token


def peering() -> leadership.Peering:
    """The only replica: it leads once kopf has announced it."""
    return leadership.Peering(
        name=PEERING,
        identity=leadership.identity(None),
        priority=leadership.priority(time.time()),
        lifetime=12,
    )


async def credentials(k8s: Emulator) -> dict[str, str]:
    data = ((await get(k8s, CREDENTIALS)) or {}).get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items() if v is not None}


async def log_in_again(
    k8s: Emulator, state: OperatorState, config: Path, url: str, old: str
) -> None:
    """The kubeconfig kopf's login reads gets a new token, then ``old`` is revoked: the
    operator's next request with it gets a 401, and kopf logs in again."""
    client = state.client
    kubeconfig(config, url, operator_token(k8s))  # the rotated token, to be read
    del k8s.accounts[old]  # revoked: 401 for it from now on
    # kopf meets the 401 (its watches reconnect every 5 s here) and logs in again.
    assert await eventually(lambda: _replaced(state, client), 30)
    assert UNAUTHENTICATED in k8s.forbidden


def forget_refusals(k8s: Emulator) -> None:
    """The revoked token's refusals were the test's doing; anything else still fails it."""
    k8s.forbidden[:] = [refused for refused in k8s.forbidden if refused != UNAUTHENTICATED]


@pytest.mark.asyncio
async def test_the_leader_still_fans_out_a_rotation_after_logging_in_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = fake_key(), fake_key()
    config = tmp_path / "kubeconfig"
    async with cluster() as (k8s, url):
        old = operator_token(k8s)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(config, url, old)))
        async with operator(url, login=kopf.login_with_kubeconfig, peering=peering()) as state:
            assert await send(k8s, "POST", SOURCES, source_secret(openai=first)) < 300
            # Fanned out: this replica leads and its release namespace watch runs.
            assert await eventually(lambda: _equal(credentials(k8s), {"openai": first}), 30)
            watch = state.release_watch
            assert watch is not None

            await log_in_again(k8s, state, config, url, old)

            rotated = {"data": source_secret(openai=second)["data"]}
            assert await send(k8s, "PATCH", SOURCES + "/llm-keys", rotated) < 300
            assert await eventually(
                lambda: _equal(credentials(k8s), {"openai": second, "openai.previous": first}),
                FAN_OUT_SECONDS,
            )
            # The same watch task, still running, on the new client.
            assert state.release_watch is watch and not watch.done()
            # kopf works on with the new token too: a new policy is published.
            assert (
                await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"]))
                < 300
            )
            assert await eventually(lambda: _equal(policies_of(k8s), ["gpt"]), 30)
        forget_refusals(k8s)


@pytest.mark.asyncio
async def test_the_leader_still_keeps_the_webhook_certificates_after_logging_in_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upkeep takes the newest client on each check, so it met the old one closed only
    when a login fell inside a check (then RuntimeError ended it; now a connection error,
    checked again): a guard that it keeps working on the new client, not a reproduction."""
    config = tmp_path / "kubeconfig"
    async with cluster() as (k8s, url):
        await install_configurations(k8s)
        old = operator_token(k8s)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(config, url, old)))
        async with operator(
            url, login=kopf.login_with_kubeconfig, peering=peering(), webhook_certificates=WANTED
        ) as state:
            encoded = await eventually(lambda: one_ca_bundle(k8s), seconds=30)
            upkeep = state.certificates_task
            assert upkeep is not None

            await log_in_again(k8s, state, config, url, old)

            # A `helm upgrade` removes the caBundles: they are put back, from the same CA.
            await remove_ca_bundles(k8s)
            assert await eventually(lambda: one_ca_bundle(k8s), seconds=20) == encoded
            assert state.certificates_task is upkeep and not upkeep.done()
        forget_refusals(k8s)


@pytest.mark.asyncio
async def test_a_watch_open_when_its_client_closes_ends_at_once() -> None:
    """aiohttp's session close does not wake a reader of a streamed response: the watch would
    wait for its read timeout (minutes). The client's close ends its watches with a
    connection error, which the watching loops take as "list again"."""
    async with cluster() as (k8s, url):
        assert await send(k8s, "POST", SOURCES, source_secret(openai=fake_key())) < 300
        client = ApiClient(kopf.ConnectionInfo(server=url))
        first_event = asyncio.Event()

        async def watch() -> None:
            async for _ in client.watch(RELEASE, SECRETS, ""):
                first_event.set()

        task = asyncio.create_task(watch())
        try:
            async with asyncio.timeout(10):
                await first_event.wait()  # the watch is open and streaming
            await client.close()
            with pytest.raises(aiohttp.ClientConnectionError):
                async with asyncio.timeout(5):
                    await task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()


@pytest.mark.asyncio
async def test_a_request_on_a_closed_client_is_a_connection_error() -> None:
    """Not aiohttp's RuntimeError("Session is closed"), which no loop catches (and should
    not: it is a programming error everywhere else): the caller lists again on the client
    the new login made."""
    async with cluster() as (_, url):
        client = ApiClient(kopf.ConnectionInfo(server=url))
        assert await client.get(RELEASE, "llm-keys") is None
        await client.close()
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.list(SOURCES)
        with pytest.raises(aiohttp.ClientConnectionError):
            async for _ in client.watch(RELEASE, SECRETS, ""):
                pass


async def _replaced(state: OperatorState, client: ApiClient | None) -> bool:
    return state.client is not None and state.client is not client


async def _equal(read: Any, expected: Any) -> bool:
    return bool(await read == expected)
