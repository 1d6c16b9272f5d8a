"""The sidecar fed by the broker (both on kmock, one event loop): it is not ready before its
first delivery, takes keys and bundle in memory, refuses a bundle edited anywhere between
the operator and itself while the previous one stays enforced, and a rotation of the
credentials Secret reaches 200 connected sidecars' stores (the sidecar's own client code)
within a second."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidegate import redact
from sidegate.policy import bundle, signing
from sidegate.sidecar import app as sidecar_app
from sidegate.sidecar import brokering, credentials, policies, settings
from sidegate.sidecar.metrics import Metrics
from tests.conftest import fake_key
from tests.helpers import brokers
from tests.helpers.http import chat_body
from tests.helpers.kubernetes import eventually
from tests.helpers.processes import start_redis
from tests.policies import allow, policy


@pytest.fixture
async def world(
    tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> AsyncIterator[brokers.World]:
    async with brokers.world(tmp_path, ca, server_cert, max_wait=10) as running_world:
        yield running_world


def config(
    world: brokers.World,
    ca: trustme.CA,
    token_file: Path,
    namespace: str = "team-a",
    **broker: Any,
) -> settings.SidecarSettings:
    return settings.SidecarSettings.model_validate(
        {
            "broker": {
                "url": f"https://127.0.0.1:{world.replica.api_port}",
                "ca_pem": ca.cert_pem.bytes().decode(),
                "token_file": str(token_file),
                "wait_seconds": 5,
                **broker,
            },
            "policy": {"trusted_keys": world.trusted},
            "identity": {"namespace": namespace, "service_account": "app"},
            # Nothing listens there: these tests stop at the policy decision.
            "providers": {"openai": {"kind": "openai", "base_url": "https://127.0.0.1:9/v1"}},
            "routes": [{"model": "*", "provider": "openai"}],
        }
    )


@contextlib.asynccontextmanager
async def sidecar(config: settings.SidecarSettings) -> AsyncIterator[tuple[str, web.Application]]:
    application = sidecar_app.create_app(config, metrics=Metrics())
    server = TestServer(application, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", application
    finally:
        await server.close()


async def status_of(origin: str, model: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            origin + "/v1/chat/completions",
            data=chat_body(model=model),
            headers={"Content-Type": "application/json"},
        ) as answer,
    ):
        return answer.status, await answer.json()


async def ready(origin: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(origin + "/readyz") as answer:
        return answer.status == 200


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def tampered(envelope: bytes) -> bytes:
    """The envelope with its bundle swapped for an allow-everything one, signature kept."""
    raw = json.loads(envelope)
    everything = bundle.to_bundle([policy("x", rules=[allow("*")])])
    raw["bundle"] = base64.b64encode(bundle.dumps(everything)).decode()
    return json.dumps(raw).encode()


async def test_a_broker_fed_sidecar_holds_keys_in_memory_and_refuses_edited_bundles(
    world: brokers.World, ca: trustme.CA, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(await world.pod_token())
    async with sidecar(config(world, ca, token_file)) as (origin, application):
        await eventually(lambda: ready(origin))
        pipeline, client = application[sidecar_app.PIPELINE], application[sidecar_app.BROKER]
        credential = pipeline.credentials.get("openai")
        assert credential is not None and credential.current.reveal() == world.keys["openai"]
        assert names(tmp_path) == ["tls.crt", "tls.key", "token"]  # the sidecar wrote nothing
        holder = pipeline.policies
        assert holder.loaded is not None
        in_force = holder.loaded.serial
        assert (await status_of(origin, "claude-x"))[0] == 403

        async def refused(envelope: bytes) -> None:
            failed = (
                pipeline.metrics.registry.get_sample_value(
                    "sidegate_policy_reloads_total", {"result": "failed"}
                )
                or 0
            )
            version = client.version
            await brokers.put(world.k8s, brokers.bundle_secret("team-a", envelope))
            await eventually(lambda: _changed(client, version))
            assert (
                pipeline.metrics.registry.get_sample_value(
                    "sidegate_policy_reloads_total", {"result": "failed"}
                )
                == failed + 1
            )
            assert holder.loaded is not None and holder.loaded.serial == in_force
            status, answer = await status_of(origin, "claude-x")
            assert status == 403 and answer["error"]["code"] == "no_matching_allow", answer

        snapshot = world.replica.broker.contents.snapshot("team-a")
        assert snapshot is not None
        current = base64.b64decode(json.loads(snapshot.body)["bundle"])
        everything = [policy("x", rules=[allow("*")])]
        await refused(tampered(current))  # edited in the Secret
        await refused(brokers.signed_bundle("team-a", everything, signing.generate_private_key()))
        await refused(brokers.signed_bundle("team-b", everything, world.key))  # replayed
        await refused(brokers.signed_bundle("team-a", everything, world.key, serial=1))  # older
        await refused(bundle.dumps(bundle.to_bundle(everything)))  # unsigned
        # The operator's next bundle is taken.
        await world.publish_bundle([policy("p", rules=[allow("gpt-*", "claude-*")])])
        await eventually(lambda: _serial_above(holder, in_force))
        assert (await status_of(origin, "claude-x"))[0] != 403


async def _changed(client: brokering.BrokerClient, version: str) -> bool:
    return client.version != version


async def _serial_above(holder: policies.PolicyHolder, serial: int | None) -> bool:
    return holder.loaded is not None and (holder.loaded.serial or 0) > (serial or 0)


async def test_a_sidecar_is_not_ready_before_its_first_delivery(
    world: brokers.World, ca: trustme.CA, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(await world.pod_token(namespace="team-b"))  # not served
    async with sidecar(config(world, ca, token_file, "team-b")) as (origin, application):
        client = application[sidecar_app.BROKER]
        await asyncio.sleep(1.0)
        assert not await ready(origin) and client.deliveries == 0
        # Its namespace gets a policy: the next retry delivers.
        await world.publish_bundle(
            [policy("p", namespace="team-b", rules=[allow("gpt-*")])], namespace="team-b"
        )
        await eventually(lambda: ready(origin), seconds=10)


CLIENTS = 200


async def test_a_rotation_reaches_200_connected_sidecars_within_a_second(
    world: brokers.World, ca: trustme.CA, tmp_path: Path
) -> None:
    stores, clients = [], []
    base = config(world, ca, tmp_path / "unused")
    assert base.broker is not None
    signers = policies.Signers.of(world.trusted, "team-a")
    for index in range(CLIENTS):
        token_file = tmp_path / f"token-{index}"
        token_file.write_text(await world.pod_token(name=f"app-{index}"))
        metrics, redactor = Metrics(), redact.Redactor()
        store = credentials.CredentialStore(None, {"openai": "openai"}, metrics, redactor)
        holder = policies.holder_for(None, None, cache_ttl=0, metrics=metrics, signers=signers)
        broker_settings = base.broker.model_copy(update={"token_file": token_file})
        clients.append(
            brokering.BrokerClient(broker_settings, "team-a", store, holder, metrics, redactor)
        )
        stores.append(store)
    connector = aiohttp.TCPConnector(ssl=brokering.tls_context(base.broker), limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(c.run(session)) for c in clients]
        try:
            await eventually(lambda: _all_delivered(clients), seconds=60)
            await asyncio.sleep(0.5)  # every client back on its long-poll
            new = fake_key()
            started = time.monotonic()
            await brokers.put(world.k8s, brokers.credentials_secret({**world.keys, "openai": new}))
            while not all(_key(s) == new for s in stores):
                await asyncio.sleep(0.005)
                assert time.monotonic() - started < 10, "the rotation did not reach everyone"
            elapsed = time.monotonic() - started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert elapsed <= 1.0, f"the last of {CLIENTS} sidecars had the new key after {elapsed:.2f} s"


async def _all_delivered(clients: list[brokering.BrokerClient]) -> bool:
    return all(c.deliveries >= 1 for c in clients)


def _key(store: credentials.CredentialStore) -> str | None:
    found = store.get("openai")
    return found.current.reveal() if found else None


async def test_a_large_bundle_arrives_whole(
    world: brokers.World, ca: trustme.CA, tmp_path: Path
) -> None:
    """A namespace with a bundle near the size limit of a Secret (1 MiB of data): the
    delivery spans many TCP reads."""
    token_file = tmp_path / "token"
    token_file.write_text(await world.pod_token())
    many = [policy(f"p-{index:05d}", rules=[allow(f"gpt-{index}-*")]) for index in range(1800)]
    envelope = await world.publish_bundle(many)
    assert len(envelope) > 480 * 1024  # more than aiohttp reads as one line
    async with sidecar(config(world, ca, token_file)) as (origin, application):
        holder = application[sidecar_app.PIPELINE].policies
        await eventually(lambda: _holds(holder, 1800), seconds=30)
        assert (await status_of(origin, "gpt-1799-x"))[0] != 403


async def _holds(holder: policies.PolicyHolder, count: int) -> bool:
    return holder.loaded is not None and holder.loaded.index.size == count


async def test_the_redis_url_and_password_come_from_the_broker(
    world: brokers.World, ca: trustme.CA, tmp_path: Path
) -> None:
    password = secrets.token_urlsafe(16)
    server = start_redis(password)
    try:
        await brokers.put(world.k8s, brokers.redis_secret(server.url, password))
        await world.publish_bundle(
            [policy("p", rules=[allow("gpt-*")], limits={"requestsPerMinute": 2})]
        )
        token_file = tmp_path / "token"
        token_file.write_text(await world.pod_token())
        brokered = config(world, ca, token_file)
        brokered = brokered.model_copy(
            update={
                "rate_limits": settings.RateLimitSettings.model_validate(
                    {"backend": "redis", "fail_mode": "closed", "redis": {}}
                )
            }
        )
        async with sidecar(brokered) as (origin, _):
            await eventually(lambda: ready(origin))
            # Admitted (then the provider is unreachable), admitted, then over the limit:
            # the buckets are in Redis, reached with the delivered URL and password.
            statuses = [(await status_of(origin, "gpt-4o-mini"))[0] for _ in range(3)]
            assert statuses[:2] != [429, 429] and 503 not in statuses[:2], statuses
            assert statuses[2] == 429
            with server.client() as client:
                assert client.keys("sidegate:*")
    finally:
        server.kill()
