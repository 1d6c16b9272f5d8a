"""The operator, unmodified kopf, against kmock's Kubernetes emulator over real HTTP: what it
writes (signed bundles, credentials, admin tokens, signing keys) lives in the release
namespace only, and an application namespace holds nothing of it."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from sidegate import errors
from sidegate.operator import bundles, signing_keys
from sidegate.policy import bundle, signing
from tests.conftest import fake_key
from tests.helpers.kubernetes import (
    POLICIES,
    RELEASE,
    SOURCES,
    Emulator,
    cluster,
    eventually,
    get,
    operator,
    operator_requests,
    policy,
    send,
    source_secret,
)

BUNDLE = f"{SOURCES}/sidegate-bundle-team-a"
CREDENTIALS = f"{SOURCES}/sidegate-credentials"
PUBLIC = f"/api/v1/namespaces/{RELEASE}/configmaps/{signing_keys.PUBLIC}"


async def trusted(k8s: Emulator) -> list[str]:
    found = await get(k8s, PUBLIC)
    assert found is not None
    keys: list[str] = json.loads(found["data"][signing_keys.TRUSTED_KEYS])
    return keys


async def verified_bundle(k8s: Emulator, namespace: str = "team-a") -> signing.VerifiedBundle:
    """The stored bundle, verified as a sidecar would: against the published keys."""
    secret = await get(k8s, f"{SOURCES}/{bundles.secret_name(namespace)}")
    assert secret is not None
    envelope = base64.b64decode(secret["data"]["bundle.json"])
    return signing.verify(envelope, signing.trusted_keys(await trusted(k8s)), namespace=namespace)


async def policies_of(k8s: Emulator) -> list[str]:
    return [p.name for p in bundle.loads((await verified_bundle(k8s)).bundle).policies]


async def decoded(k8s: Emulator, path: str) -> dict[str, str]:
    secret = await get(k8s, path)
    data = (secret or {}).get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items() if v is not None}


async def _equal(read: Any, expected: Any) -> bool:
    return bool(await read() == expected)


@pytest.mark.asyncio
async def test_policies_become_a_signed_bundle_in_the_release_namespace() -> None:
    async with cluster() as (k8s, url), operator(url):
        assert await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"])) < 300

        async def ready() -> bool:
            found = await get(k8s, POLICIES.format(ns="team-a") + "/gpt")
            conditions = (found or {}).get("status", {}).get("conditions", [])
            return bool(conditions) and conditions[0]["status"] == "True"

        await eventually(ready)
        assert await eventually(lambda: _equal(lambda: policies_of(k8s), ["gpt"]))
        first = await verified_bundle(k8s)
        secret = await get(k8s, BUNDLE)
        assert secret is not None
        labels = secret["metadata"]["labels"]
        assert labels["sidegate.io/bundle-for"] == "team-a"
        assert labels["app.kubernetes.io/managed-by"] == "sidegate-operator"
        compiled = bundle.loads(first.bundle)
        assert secret["metadata"]["annotations"]["sidegate.io/bundle-hash"] == compiled.hash
        found = await get(k8s, POLICIES.format(ns="team-a") + "/gpt")
        assert found is not None and found["status"]["ruleCount"] == 1

        # A second policy joins the same bundle, under a higher serial.
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("claude", ["claude-*"]))
        await eventually(lambda: _equal(lambda: policies_of(k8s), ["claude", "gpt"]))
        assert (await verified_bundle(k8s)).serial > first.serial

        # Signed for team-a only: a sidecar of team-b refuses it.
        envelope = base64.b64decode((await get(k8s, BUNDLE) or {})["data"]["bundle.json"])
        with pytest.raises(errors.BundleRejected, match="namespace"):
            signing.verify(envelope, signing.trusted_keys(await trusted(k8s)), namespace="team-b")

        # Nothing was written in, or even read from, the application namespace but policies.
        listed = await get(k8s, "/api/v1/namespaces/team-a/secrets")
        assert not (listed or {}).get("items")
    touched = {ns for plural, ns, _action in operator_requests(k8s) if plural == "secrets"}
    assert touched == {RELEASE}


@pytest.mark.asyncio
async def test_an_invalid_policy_is_marked_and_changes_no_bundle() -> None:
    async with cluster() as (k8s, url), operator(url):
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("good", ["gpt-*"]))
        await eventually(lambda: _equal(lambda: policies_of(k8s), ["good"]))
        first = await verified_bundle(k8s)
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
        assert (await verified_bundle(k8s)) == first  # not even re-signed


@pytest.mark.asyncio
async def test_deleting_the_last_policy_writes_deny_all() -> None:
    async with cluster() as (k8s, url), operator(url):
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("only", ["*"]))
        await eventually(lambda: _equal(lambda: policies_of(k8s), ["only"]))
        assert await send(k8s, "DELETE", POLICIES.format(ns="team-a") + "/only") < 300
        await eventually(lambda: _equal(lambda: policies_of(k8s), []))
        assert bundle.loads((await verified_bundle(k8s)).bundle) == bundle.empty()


@pytest.mark.parametrize("edit", ["forged", "unsigned", "replayed", "deleted"])
@pytest.mark.asyncio
async def test_an_edited_bundle_secret_is_restored(edit: str) -> None:
    """Whatever is done to the bundle Secret, the operator puts back a bundle its keys sign,
    at a serial no lower than before: a sidecar never has to take a step back."""
    async with cluster() as (k8s, url), operator(url):
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"]))
        await eventually(lambda: _equal(lambda: policies_of(k8s), ["gpt"]))
        older = (await get(k8s, BUNDLE) or {})["data"]["bundle.json"]
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("claude", ["claude-*"]))
        await eventually(lambda: _equal(lambda: policies_of(k8s), ["claude", "gpt"]))
        good = await verified_bundle(k8s)
        allow_all = bundle.dumps(bundle.to_bundle([bundle_policy("team-a", "everything", ["*"])]))
        if edit == "deleted":
            assert await send(k8s, "DELETE", BUNDLE) < 300
        else:
            raw = json.loads(
                base64.b64decode((await get(k8s, BUNDLE) or {})["data"]["bundle.json"])
            )
            if edit == "forged":  # the allow-all bundle under the old signature
                raw["bundle"] = base64.b64encode(allow_all).decode()
            elif edit == "unsigned":
                raw = json.loads(allow_all)
            encoded = base64.b64encode(json.dumps(raw).encode()).decode()
            if edit == "replayed":  # validly signed, but older: one policy fewer
                encoded = older
            body = {"data": {"bundle.json": encoded}}
            assert await send(k8s, "PATCH", BUNDLE, body) < 300

        async def restored() -> bool:
            try:
                current = await verified_bundle(k8s)
            except (errors.BundleRejected, AssertionError, KeyError):
                return False
            return current.bundle == good.bundle and current.serial >= good.serial

        await eventually(restored)


def bundle_policy(namespace: str, name: str, models: list[str]) -> Any:
    from sidegate.policy import models as policy_models

    return policy_models.RBACPolicy.model_validate(policy(name, models, namespace))


@pytest.mark.asyncio
async def test_the_signing_key_is_generated_once_and_rotates_by_adding_then_activating() -> None:
    async with cluster() as (k8s, url), operator(url):
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"]))
        await eventually(lambda: _equal(lambda: policies_of(k8s), ["gpt"]))
        first_keys = await trusted(k8s)
        assert len(first_keys) == 1
        before = await verified_bundle(k8s)
        signing_path = f"{SOURCES}/{signing_keys.SECRET}"
        stored = await decoded(k8s, signing_path)
        assert set(stored) == {signing_keys.FIRST_KEY, signing_keys.ACTIVE}

        # Step 1: add a key. It is trusted (published after the active one), not yet used.
        new_pem = signing.private_key_to_pem(signing.generate_private_key()).decode()
        add = {"data": {"key-2.pem": base64.b64encode(new_pem.encode()).decode()}}
        assert await send(k8s, "PATCH", signing_path, add) < 300
        both = await eventually(lambda: _two(trusted(k8s)))
        assert both[0] == first_keys[0]
        assert (await verified_bundle(k8s)).key_id == before.key_id

        # Step 2: make it active. Every bundle is re-signed with it, at a higher serial.
        activate = {"data": {"active": base64.b64encode(b"key-2.pem").decode()}}
        assert await send(k8s, "PATCH", signing_path, activate) < 300

        async def resigned() -> signing.VerifiedBundle | None:
            current = await verified_bundle(k8s)
            return current if current.key_id != before.key_id else None

        after = await eventually(resigned)
        assert after.serial > before.serial and after.bundle == before.bundle
        assert (await trusted(k8s))[0] == both[1]

        # Step 3: retire the old key: no longer published.
        retire = {"data": {signing_keys.FIRST_KEY: None}}
        assert await send(k8s, "PATCH", signing_path, retire) < 300
        await eventually(lambda: _equal(lambda: trusted(k8s), [both[1]]))


async def _two(read: Any) -> list[str] | None:
    found: list[str] = await read
    return found if len(found) == 2 else None


@pytest.mark.parametrize("namespaces", [None, ["team-a"]])
@pytest.mark.asyncio
async def test_credentials_become_one_secret_keep_previous_then_expire_it(
    caplog: pytest.LogCaptureFixture, namespaces: list[str] | None
) -> None:
    """Sources in the release namespace → one sidegate-credentials there; also when the
    operator serves only some namespaces (it used to never see the sources then)."""
    first, second = fake_key(), fake_key()

    async def credentials() -> dict[str, str]:
        return await decoded(k8s, CREDENTIALS)

    async with cluster() as (k8s, url), operator(url, namespaces=namespaces, overlap=1.5):
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"]))
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
        assert await get(k8s, "/api/v1/namespaces/team-a/secrets/sidegate-credentials") is None
    assert first not in caplog.text and second not in caplog.text
    touched = {ns for plural, ns, _action in operator_requests(k8s) if plural == "secrets"}
    assert touched == {RELEASE}


@pytest.mark.asyncio
async def test_admin_tokens_are_generated_rotated_and_overlap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each served namespace gets a generated admin token in the release namespace; it
    rotates on the interval and the old one stays as token.previous until the overlap ends."""
    target = f"{SOURCES}/sidegate-admin-team-a"

    async def tokens() -> dict[str, str]:
        return await decoded(k8s, target)

    async with (
        cluster() as (k8s, url),
        operator(url, overlap=1.0, admin_rotation=3.0) as state,
    ):
        assert state.upkeep_interval == 1.0
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"]))
        first = await eventually(tokens)
        assert set(first) == {"token"} and len(first["token"]) >= 40
        secret = await get(k8s, target)
        assert secret is not None
        assert secret["metadata"]["labels"]["sidegate.io/admin-for"] == "team-a"

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


@pytest.mark.asyncio
async def test_a_large_secret_in_the_release_namespace_does_not_stall_the_watch() -> None:
    """Helm's release Secrets run to hundreds of KiB, one watch event each: the operator's
    own watch must read past them, or a rotation waits for its next relist."""
    first, second = fake_key(), fake_key()
    async with cluster() as (k8s, url), operator(url):
        big = source_secret(payload="x" * 500_000)  # ~670 KB as JSON
        big["metadata"] = {"name": "sh.helm.release.v1.sidegate.v1", "namespace": RELEASE}
        assert await send(k8s, "POST", SOURCES, big) < 300
        await send(k8s, "POST", SOURCES, source_secret(openai=first))
        await eventually(lambda: _equal(lambda: decoded(k8s, CREDENTIALS), {"openai": first}))
        await asyncio.sleep(3)  # a watch that died on the big event would be backing off now
        rotated = {"data": source_secret(openai=second)["data"]}
        assert await send(k8s, "PATCH", SOURCES + "/llm-keys", rotated) < 300

        async def followed() -> bool:
            return (await decoded(k8s, CREDENTIALS)).get("openai") == second

        await eventually(followed, seconds=2)
