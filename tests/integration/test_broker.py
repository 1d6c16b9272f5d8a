"""The broker on kmock: who gets what. A pod's sidecar gets its namespace's keys, bundle and
admin token; every other caller is refused (TokenReview answered by the emulated API server
from the tokens it issued, the pod spec read from it)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from sidegate.policy import bundle, delivery, signing
from tests.conftest import fake_key
from tests.helpers import brokers
from tests.helpers.kubernetes import eventually, send


@pytest.fixture
async def world(
    tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> AsyncIterator[brokers.World]:
    async with brokers.world(tmp_path, ca, server_cert) as running_world:
        yield running_world


async def test_a_pods_sidecar_gets_its_namespaces_keys_bundle_and_admin_token(
    world: brokers.World,
) -> None:
    token = await world.pod_token()
    status, answer = await world.deliver(token)
    assert status == 200
    assert answer["namespace"] == "team-a" and answer["schemaVersion"] == 1
    assert answer["credentials"] == world.keys
    assert answer["admin_tokens"] == [world.admin_token] and answer["redis"] is None
    verified = signing.verify(
        base64.b64decode(answer["bundle"]), signing.trusted_keys(world.trusted), namespace="team-a"
    )
    assert [p.name for p in bundle.loads(verified.bundle).policies] == ["p"]
    # Nothing changed: the long-poll ends in 304 after the wait.
    status, _ = await world.deliver(token, after=answer["version"], wait=0.2)
    assert status == 304


async def test_reviews_are_cached_per_token_and_pods_reread(world: brokers.World) -> None:
    token = await world.pod_token()
    for _ in range(3):
        assert (await world.deliver(token))[0] == 200
    assert world.k8s.token_reviews == 1


async def test_a_refused_token_is_not_reviewed_again_at_once(world: brokers.World) -> None:
    pod = await brokers.create_pod(world.k8s, brokers.injected_pod("team-a", "p", world.trusted))
    token = world.k8s.issue_token("team-a", "app", pod=pod, audiences=("vault",))
    for _ in range(5):
        assert (await world.deliver(token))[0] == 401
    assert world.k8s.token_reviews == 1


async def test_a_change_wakes_the_waiting_long_poll(world: brokers.World) -> None:
    token = await world.pod_token()
    _, first = await world.deliver(token)
    waiting = asyncio.create_task(world.deliver(token, after=first["version"], wait=20))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    new = fake_key()
    await brokers.put(world.k8s, brokers.credentials_secret({**world.keys, "openai": new}))
    status, answer = await asyncio.wait_for(waiting, 5)
    assert status == 200 and answer["credentials"]["openai"] == new
    assert answer["version"] != first["version"]


@pytest.mark.parametrize(
    "case", ["unknown", "other-audience", "expired", "none", "deleted-pod", "garbage"]
)
async def test_tokens_that_are_not_valid_for_the_broker_get_401(
    world: brokers.World, case: str
) -> None:
    pod = await brokers.create_pod(world.k8s, brokers.injected_pod("team-a", "p", world.trusted))
    if case == "unknown":
        # Shaped exactly like an issued token, but the API server never issued it.
        issued = world.k8s.issue_token("team-a", "app", pod=pod)
        token = issued[:-8] + ("AAAAAAAA" if not issued.endswith("AAAAAAAA") else "BBBBBBBB")
    elif case == "other-audience":
        token = world.k8s.issue_token("team-a", "app", pod=pod, audiences=("vault",))
    elif case == "expired":
        token = world.k8s.issue_token("team-a", "app", pod=pod, seconds=-1)
    elif case == "deleted-pod":
        token = world.k8s.issue_token("team-a", "app", pod=pod)
        assert await send(world.k8s, "DELETE", "/api/v1/namespaces/team-a/pods/p") < 400
    elif case == "garbage":
        token = "x" * 40
    else:
        token = ""
    status, answer = await world.deliver(token)
    assert status == 401 and answer["error"]["code"] == "unauthenticated"
    assert "credentials" not in answer


async def test_a_token_of_a_namespace_without_a_policy_gets_403(world: brokers.World) -> None:
    token = await world.pod_token(namespace="team-b")
    status, answer = await world.deliver(token)
    assert status == 403 and answer["error"]["code"] == "namespace_not_served"


async def test_a_token_bound_to_no_pod_gets_403(world: brokers.World) -> None:
    token = world.k8s.issue_token("team-a", "app")  # e.g. kubectl create token
    status, answer = await world.deliver(token)
    assert status == 403 and answer["error"]["code"] == "token_not_pod_bound"


@pytest.mark.parametrize(
    "change",
    [
        "app-mounts-token",
        "app-has-own-sidegate-token",
        "other-image",
        "other-command",
        "shares-processes",
        "host-pid",
        "other-trusted-key",
        "no-sidecar",
        "ephemeral-targets-sidecar",
    ],
)
async def test_a_pod_that_was_not_injected_gets_403(world: brokers.World, change: str) -> None:
    pod = brokers.altered(brokers.injected_pod("team-a", "odd", world.trusted), change)
    created = await brokers.create_pod(world.k8s, pod)
    token = world.k8s.issue_token("team-a", "app", pod=created)
    status, answer = await world.deliver(token)
    assert status == 403 and answer["error"]["code"] == "pod_not_injected", answer
    # The control: the same namespace's injected pod is served.
    assert (await world.deliver(await world.pod_token(name="good")))[0] == 200


async def test_the_broker_serves_a_namespace_once_its_bundle_exists(world: brokers.World) -> None:
    token = await world.pod_token(namespace="team-b")
    assert (await world.deliver(token))[0] == 403
    envelope = brokers.signed_bundle("team-b", [], world.key)
    await brokers.put(world.k8s, brokers.bundle_secret("team-b", envelope))
    await eventually(lambda: _served(world, "team-b"))
    status, answer = await world.deliver(token)
    assert status == 200 and answer["namespace"] == "team-b" and answer["admin_tokens"] == []


async def _served(world: brokers.World, namespace: str) -> bool:
    return world.replica.broker.contents.snapshot(namespace) is not None


async def test_probes_and_metrics(world: brokers.World) -> None:
    token = await world.pod_token()
    await world.deliver(token)
    async with aiohttp.ClientSession() as plain:
        origin = f"http://127.0.0.1:{world.replica.probe_port}"
        async with plain.get(origin + "/readyz") as answer:
            assert answer.status == 200
        async with plain.get(origin + "/metrics") as answer:
            text = await answer.text()
    assert 'sidegate_broker_answers_total{code="ok",status="200"} 1.0' in text
    assert 'sidegate_broker_token_reviews_total{result="accepted"} 1.0' in text
    for secret in [*world.keys.values(), world.admin_token]:
        assert secret not in text


async def test_two_replicas_give_the_same_version_so_a_sidecar_can_move_between_them(
    world: brokers.World, server_cert: trustme.LeafCert, tmp_path: Path
) -> None:
    token = await world.pod_token()
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    async with brokers.broker(world.url, server_cert, second_dir) as second:
        await eventually(lambda: brokers.ready(second))
        status, first = await world.deliver(token)
        assert status == 200
        # The same content from the other replica: the same version, so no answer but 304.
        status, _ = await brokers.deliver(
            world.session, second.api_port, token, after=first["version"], wait=0.2
        )
        assert status == 304
        status, again = await brokers.deliver(world.session, second.api_port, token)
        assert status == 200 and again == first


async def test_a_sidecars_audit_key_is_registered_once_for_its_pod(
    world: brokers.World, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker logs the key a checked pod's sidecar signs its audit digests with, in its
    own log (out of the application's reach); never for a caller it refused."""
    audit_key = signing.generate_private_key().public_key()
    header = {delivery.AUDIT_KEY_HEADER: signing.encode_public_key(audit_key)}
    refused = world.k8s.issue_token("team-b", "app", audiences=("sidegate",))
    token = await world.pod_token()
    with caplog.at_level(logging.INFO, logger="sidegate.broker.server"):
        assert (
            await brokers.deliver(world.session, world.replica.api_port, refused, headers=header)
        )[0] in (401, 403)
        for _ in range(2):
            status, _ = await brokers.deliver(
                world.session, world.replica.api_port, token, headers=header
            )
            assert status == 200
        garbage = {delivery.AUDIT_KEY_HEADER: "ed25519:not-a-key"}
        status, _ = await brokers.deliver(
            world.session, world.replica.api_port, token, headers=garbage
        )
        assert status == 200  # a malformed key is ignored, not a reason to starve the sidecar
    registered = [r for r in caplog.records if r.getMessage() == "audit key registered"]
    assert len(registered) == 1
    record = registered[0]
    assert (record.namespace, record.pod) == ("team-a", "app-1")  # type: ignore[attr-defined]
    assert record.audit_key_id == signing.key_id(audit_key)  # type: ignore[attr-defined]
    assert record.audit_public_key == header[delivery.AUDIT_KEY_HEADER]  # type: ignore[attr-defined]
