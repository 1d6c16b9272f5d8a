"""kmock's Kubernetes emulator, with the gaps TESTING.md lists filled in, and the operator
running against it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.web
import kmock
import kopf

from sidegate.operator import running
from sidegate.operator.state import OperatorState

_versions = itertools.count(1)
POLICIES = "/apis/sidegate.io/v1alpha1/namespaces/{ns}/rbacpolicies"
RELEASE = "sidegate-system"
SOURCES = f"/api/v1/namespaces/{RELEASE}/secrets"
# The operator's bearer token in these tests: it tells its requests from the test's own.
OPERATOR_TOKEN = "operator-test"


class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """Stamps uid, resourceVersion and creationTimestamp as a real API server does (kopf's
    patches rely on resourceVersion)."""

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        data = request.data if isinstance(getattr(request, "data", None), dict) else None
        if data is not None and request.resource is not None:
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", "2026-11-22T00:00:00Z")
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = str(next(_versions))
            elif request.action == kmock.action.UPDATE:
                meta["resourceVersion"] = str(next(_versions))
                key = (request.resource, request.namespace, request.name)
                if "spec" in data and key in self._objects:  # a spec change: a new generation
                    generation = self._objects[key].get("metadata", {}).get("generation", 1)
                    meta["generation"] = generation + 1
        return await super()._handle(request)  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def cluster() -> AsyncIterator[tuple[Emulator, str]]:
    async with Emulator() as k8s, kmock.Server(k8s) as server:
        k8s.resources.load_bundled()
        k8s.resources["sidegate.io/v1alpha1/rbacpolicies"] = kmock.ResourceInfo(
            kind="RBACPolicy",
            namespaced=True,
            verbs={"list", "watch", "get", "create", "update", "patch", "delete"},
            subresources={"status"},
        )
        yield k8s, str(server.url).rstrip("/")


@contextlib.asynccontextmanager
async def operator(
    url: str,
    listener: running.WebhookListener | None = None,
    namespaces: list[str] | None = None,
    **settings: Any,
) -> AsyncIterator[OperatorState]:
    """The registry `sidegate operator` runs, logged in to the emulator instead; ``settings``
    are OperatorState fields (overlap, admin_rotation, sidecar, ...); ``namespaces`` as
    `--namespace` gives them (RBACPolicies served only there)."""
    state = OperatorState(
        login=lambda **_: kopf.ConnectionInfo(server=url, token=OPERATOR_TOKEN),
        namespace=RELEASE,
        **settings,
    )
    registry = running.build_registry(state, listener)

    @kopf.on.startup(registry=registry)
    def emulator_settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = 0
        settings.watching.server_timeout = 5
        settings.scanning.disabled = True  # kmock answers /api/v1/namespaces with 500

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces or [],
            standalone=True,
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield state
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def eventually(check: Any, seconds: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            result = await check()
            if result:
                return result
        except (KeyError, AssertionError, aiohttp.ClientError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def operator_requests(k8s: Emulator) -> list[tuple[str | None, str | None, str]]:
    """What the operator asked the API server: (resource plural, namespace, action)."""
    return [
        (
            request.resource.plural if request.resource is not None else None,
            request.namespace,
            str(request.action),
        )
        for request in k8s
        if request.headers.get("Authorization") == f"Bearer {OPERATOR_TOKEN}"
    ]


async def get(k8s: Emulator, path: str) -> dict[str, Any] | None:
    async with k8s.clients[0].get(path) as answer:
        return await answer.json() if answer.status == 200 else None


async def send(k8s: Emulator, method: str, path: str, body: Any = None) -> int:
    headers = {
        "Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"
    }
    async with k8s.clients[0].request(
        method, path, data=json.dumps(body) if body is not None else None, headers=headers
    ) as answer:
        return answer.status


def policy(name: str, models: list[str], namespace: str = "team-a") -> dict[str, Any]:
    """An RBACPolicy granting ServiceAccount app these models."""
    return {
        "apiVersion": "sidegate.io/v1alpha1",
        "kind": "RBACPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "subjects": [{"kind": "ServiceAccount", "name": "app"}],
            "rules": [{"effect": "Allow", "models": models}],
        },
    }


def source_secret(**keys: str) -> dict[str, Any]:
    """A provider key Secret as the operator finds it: labelled, in its namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "llm-keys",
            "namespace": "sidegate-system",
            "labels": {"sidegate.io/credentials": "source"},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
    }
