"""Two operator processes' worth of kopf against one API server: every read-modify-write
holds only over the version it read (a resourceVersion precondition), so a second writer's
change is never overwritten. The emulator refuses a stale write with 409, as kube-apiserver
does, and records every accepted write in order."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from sidegate.operator.handlers import admin_tokens
from tests.helpers.kubernetes import (
    POLICIES,
    RELEASE,
    Emulator,
    cluster,
    eventually,
    operator,
    policy,
    send,
)
from tests.integration.test_operator_policies import policies_of

CHURN_SECONDS = 60.0


def tokens_written(k8s: Emulator, namespace: str) -> list[dict[str, str | None]]:
    """The admin token Secret's data as each accepted write left it (creates and merge
    patches carry every key; a null deletes one)."""
    bodies = k8s.writes.get(("secrets", RELEASE, f"sidegate-admin-{namespace}"), [])
    return [
        {k: None if v is None else base64.b64decode(v).decode() for k, v in b["data"].items()}
        for b in bodies
    ]


def lost_generations(history: list[dict[str, str | None]]) -> list[int]:
    """Writes that rotated the token without keeping the one in force as .previous: a
    generation some sidecars may hold was dropped (their next 401 retry has nothing)."""
    key, previous = admin_tokens.KEY, admin_tokens.KEY + ".previous"
    lost = []
    for index in range(1, len(history)):
        before, after = history[index - 1][key], history[index][key]
        if after != before and history[index].get(previous) != before:
            lost.append(index)
    return lost


async def churn(k8s: Emulator, seconds: float) -> list[str]:
    """Policies created, changed and deleted in two namespaces; the names left in team-a."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    step = 0
    while loop.time() < deadline:
        namespace = ("team-a", "team-b")[step % 2]
        name = f"p{step % 5}"
        path = POLICIES.format(ns=namespace)
        if step % 7 == 6:
            await send(k8s, "DELETE", f"{path}/{name}")
        elif await send(k8s, "POST", path, policy(name, [f"gpt-{step}"], namespace)) == 409:
            await send(k8s, "PATCH", f"{path}/{name}", policy(name, [f"gpt-{step}"], namespace))
        step += 1
        await asyncio.sleep(0.2)
    names = []
    for index in range(5):
        async with k8s.clients[0].get(f"{POLICIES.format(ns='team-a')}/p{index}") as answer:
            if answer.status == 200:
                names.append(f"p{index}")
    return names


@pytest.mark.asyncio
async def test_two_operators_lose_no_admin_token_generation_under_churn() -> None:
    settings: dict[str, Any] = {"overlap": 30.0, "admin_rotation": 1.0}
    async with (
        cluster() as (k8s, url),
        operator(url, **settings),
        operator(url, **settings),
    ):
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("seed", ["gpt-*"]))
        remaining = await churn(k8s, CHURN_SECONDS)
        # The last policies are what team-a's bundle holds, whichever replica wrote it last.
        await eventually(lambda: _names_are(k8s, ["seed", *remaining]), seconds=20)
    for namespace in ("team-a", "team-b"):
        history = tokens_written(k8s, namespace)
        rotations = sum(
            1 for i in range(1, len(history)) if history[i]["token"] != history[i - 1]["token"]
        )
        assert rotations >= 10, (namespace, rotations)  # it did rotate, under two writers
        assert lost_generations(history) == [], namespace


async def _names_are(k8s: Emulator, expected: list[str]) -> bool:
    return sorted(await policies_of(k8s)) == sorted(expected)
