"""The operator, unmodified kopf, against kmock's Kubernetes emulator over real HTTP."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidegate.policy import bundle
from tests.conftest import Stack, fake_key
from tests.helpers.http import call, chat_body
from tests.helpers.kubelet import ProjectedVolume
from tests.helpers.kubernetes import (
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


async def bundle_of(k8s: Emulator, namespace: str = "team-a") -> bundle.PolicyBundle | None:
    secret = await get(k8s, f"/api/v1/namespaces/{namespace}/secrets/sidegate-bundle")
    if secret is None:
        return None
    return bundle.loads(base64.b64decode(secret["data"]["bundle.json"]))


@pytest.mark.asyncio
async def test_policies_become_a_bundle_secret_with_status() -> None:
    async with cluster() as (k8s, url), operator(url):
        assert await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"])) < 300

        async def ready() -> bool:
            found = await get(k8s, POLICIES.format(ns="team-a") + "/gpt")
            conditions = (found or {}).get("status", {}).get("conditions", [])
            return bool(conditions) and conditions[0]["status"] == "True"

        await eventually(ready)
        compiled = await eventually(lambda: bundle_of(k8s))
        assert [p.name for p in compiled.policies] == ["gpt"]
        found = await get(k8s, POLICIES.format(ns="team-a") + "/gpt")
        assert found is not None and found["status"]["ruleCount"] == 1
        secret = await get(k8s, "/api/v1/namespaces/team-a/secrets/sidegate-bundle")
        assert secret is not None
        assert secret["metadata"]["annotations"]["sidegate.io/bundle-hash"] == compiled.hash

        # A second policy joins the same bundle.
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("claude", ["claude-*"]))

        async def two() -> bool:
            current = await bundle_of(k8s)
            return current is not None and len(current.policies) == 2

        await eventually(two)


@pytest.mark.asyncio
async def test_an_invalid_policy_is_marked_and_changes_no_bundle() -> None:
    async with cluster() as (k8s, url), operator(url):
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("good", ["gpt-*"]))
        first = await eventually(lambda: bundle_of(k8s))
        bad = policy("bad", ["gpt-*"])
        bad["spec"]["subjects"] = [{"kind": "Namespace", "name": "team-b"}]  # another namespace
        await send(k8s, "POST", POLICIES.format(ns="team-a"), bad)

        async def invalid() -> dict[str, Any] | None:
            found = await get(k8s, POLICIES.format(ns="team-a") + "/bad")
            conditions = (found or {}).get("status", {}).get("conditions", [])
            return conditions[0] if conditions and conditions[0]["reason"] == "Invalid" else None

        condition = await eventually(invalid)
        assert (
            condition["status"] == "False" and "not the policy's namespace" in condition["message"]
        )
        events = await get(k8s, "/api/v1/namespaces/team-a/events")
        assert events is not None and any(
            e.get("reason") == "Invalid" for e in events.get("items", [])
        )
        assert (await bundle_of(k8s)) == first


@pytest.mark.asyncio
async def test_deleting_the_last_policy_writes_deny_all() -> None:
    async with cluster() as (k8s, url), operator(url):
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("only", ["*"]))
        await eventually(lambda: bundle_of(k8s))
        assert await send(k8s, "DELETE", POLICIES.format(ns="team-a") + "/only") < 300

        async def empty() -> bool:
            current = await bundle_of(k8s)
            return current is not None and current.policies == []

        await eventually(empty)
        assert (await bundle_of(k8s)) == bundle.empty()


@pytest.mark.asyncio
async def test_operator_to_kubelet_volume_to_sidecar_within_a_second(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """The whole chain: the operator writes the bundle Secret, the kubelet projects it, the
    sidecar enforces it. For a grant and for a revocation."""
    volume = ProjectedVolume(tmp_path / "bundle-volume")
    volume.publish({"bundle.json": bundle.dumps(bundle.empty())})

    def cluster_mode(raw: dict[str, Any]) -> None:
        raw["policy"] = {"bundle_file": str(volume.root / "bundle.json"), "cache_ttl_seconds": 30}
        raw["identity"] = {"namespace": "team-a", "service_account": "app"}

    stack = make_stack(cluster_mode)

    async def status() -> int:
        return (await asyncio.to_thread(call, stack.origin, "/v1/chat/completions", chat_body()))[0]

    async def project(previous_hash: str | None) -> str:
        async def changed() -> dict[str, Any] | None:
            secret = await get(k8s, "/api/v1/namespaces/team-a/secrets/sidegate-bundle")
            found = secret and secret["metadata"]["annotations"]["sidegate.io/bundle-hash"]
            return secret if found and found != previous_hash else None

        secret = await eventually(changed)
        volume.publish({key: base64.b64decode(value) for key, value in secret["data"].items()})
        return str(secret["metadata"]["annotations"]["sidegate.io/bundle-hash"])

    async def within_a_second(expected: int) -> float:
        started = asyncio.get_running_loop().time()
        while await status() != expected:
            assert asyncio.get_running_loop().time() - started < 1.0, f"still not {expected}"
            await asyncio.sleep(0.01)
        return asyncio.get_running_loop().time() - started

    async with cluster() as (k8s, url), operator(url):
        assert await status() == 403  # the deny-all bundle
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"]))
        granted = await project(None)
        await within_a_second(200)
        revoke = {
            "spec": {
                "rules": [
                    {"effect": "Allow", "models": ["gpt-*"]},
                    {"effect": "Deny", "models": ["gpt-4o-mini"]},
                ]
            }
        }
        assert await send(k8s, "PATCH", POLICIES.format(ns="team-a") + "/gpt", revoke) < 300
        await project(granted)
        await within_a_second(403)


@pytest.mark.asyncio
async def test_credentials_fan_out_keep_previous_then_expire_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = fake_key(), fake_key()
    target = "/api/v1/namespaces/team-a/secrets/sidegate-credentials"

    async def credentials() -> dict[str, str]:
        secret = await get(k8s, target)
        data = (secret or {}).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items() if v is not None}

    async with cluster() as (k8s, url), operator(url, overlap=1.5):
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"]))  # served
        await send(k8s, "POST", SOURCES, source_secret(openai=first))
        assert await eventually(lambda: _equal(credentials, {"openai": first}))
        # Rotation at the source: the old key stays as openai.previous for the overlap.
        await send(
            k8s, "PATCH", SOURCES + "/llm-keys", {"data": source_secret(openai=second)["data"]}
        )
        assert await eventually(
            lambda: _equal(credentials, {"openai": second, "openai.previous": first})
        )
        # ...and goes when the overlap is over.
        assert await eventually(lambda: _equal(credentials, {"openai": second}), seconds=6)
        # The sources are not the operator's: no finalizer, no annotation of its own on them.
        source = await get(k8s, SOURCES + "/llm-keys")
        assert source is not None and not source["metadata"].get("finalizers")
        assert not any(
            k.startswith("sidegate.io") for k in source["metadata"].get("annotations", {})
        )
    assert first not in caplog.text and second not in caplog.text


async def _equal(read: Any, expected: dict[str, str]) -> bool:
    return bool(await read() == expected)


@pytest.mark.asyncio
async def test_admin_tokens_are_generated_rotated_and_overlap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each served namespace gets a generated admin token; it rotates on the interval and
    the old one stays as token.previous until the overlap is over."""
    target = "/api/v1/namespaces/team-a/secrets/sidegate-admin"

    async def tokens() -> dict[str, str]:
        secret = await get(k8s, target)
        data = (secret or {}).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items() if v is not None}

    async with (
        cluster() as (k8s, url),
        operator(url, overlap=1.0, admin_rotation=3.0) as state,
    ):
        assert state.upkeep_interval == 1.0
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"]))
        first = await eventually(tokens)
        assert set(first) == {"token"} and len(first["token"]) >= 40

        async def rotated() -> dict[str, str] | None:
            found = await tokens()
            return found if found.get("token") != first["token"] else None

        during = await eventually(rotated, seconds=6)
        assert during == {"token": during["token"], "token.previous": first["token"]}

        async def settled() -> bool:
            found = await tokens()
            return found.get("token") == during["token"] and set(found) == {"token"}

        await eventually(settled, seconds=6)
    assert first["token"] not in caplog.text and during["token"] not in caplog.text
