"""Two operator replicas against one API server, as the chart runs them (kopf peering):
exactly one of them writes, the other stands by and takes over when the leader dies. Every
read-modify-write also holds only over the version it read (a resourceVersion
precondition), so even two writers (a hand-over's overlap, or two replicas without a
leader) never overwrite each other. The emulator refuses a stale write with 409, as
kube-apiserver does, and records every accepted write, and who made it, in order."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sidegate.operator.handlers import admin_tokens
from tests.helpers.kubernetes import (
    OPERATOR_TOKEN,
    POLICIES,
    RELEASE,
    REPLICA_TOKENS,
    SOURCES,
    Emulator,
    cluster,
    eventually,
    get,
    operator_process,
    policy,
    send,
    stop_process,
    writers,
)
from tests.integration.test_operator_policies import policies_of

CHURN_SECONDS = 60.0
TEST = ""  # the test's own requests carry no token


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
async def test_two_operators_lose_no_admin_token_generation_under_churn(tmp_path: Path) -> None:
    flags = ("--overlap=30", "--admin-token-rotation=1", "--peering-lifetime=10")
    async with cluster() as (k8s, url), contextlib.AsyncExitStack() as replicas:
        first = await operator_process(url, tmp_path, OPERATOR_TOKEN, "first", *flags)
        replicas.push_async_callback(stop_process, first)
        await eventually(lambda: get(k8s, f"{SOURCES}/sidegate-signing"), seconds=30)
        second = await operator_process(url, tmp_path, REPLICA_TOKENS[0], "second", *flags)
        replicas.push_async_callback(stop_process, second)
        await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("seed", ["gpt-*"]))
        remaining = await churn(k8s, CHURN_SECONDS)
        # The last policies are what team-a's bundle holds.
        await eventually(lambda: _names_are(k8s, ["seed", *remaining]), seconds=20)
        # Exactly one writer: the replica started first leads; the other only kept itself
        # alive in the peering object.
        assert set(writers(k8s)) - {TEST} == {OPERATOR_TOKEN}, writers(k8s)
        assert _logged(tmp_path / "second.log", "leading") == []  # it never led
    for namespace in ("team-a", "team-b"):
        history = tokens_written(k8s, namespace)
        rotations = sum(
            1 for i in range(1, len(history)) if history[i]["token"] != history[i - 1]["token"]
        )
        assert rotations >= 10, (namespace, rotations)  # it did rotate
        assert lost_generations(history) == [], namespace


@pytest.mark.asyncio
async def test_the_standby_takes_over_when_the_leader_is_killed(tmp_path: Path) -> None:
    """The leader is killed with SIGKILL (no clean hand-over): the standby resumes once the
    leader's keep-alive expires, and from then on it alone writes."""
    lifetime = 10
    flag = f"--peering-lifetime={lifetime}"
    path = POLICIES.format(ns="team-a")
    async with cluster() as (k8s, url), contextlib.AsyncExitStack() as replicas:
        leader = await operator_process(url, tmp_path, OPERATOR_TOKEN, "leader", flag)
        replicas.push_async_callback(stop_process, leader)
        assert await send(k8s, "POST", path, policy("before", ["gpt-*"])) < 300
        await eventually(lambda: _names_are(k8s, ["before"]), seconds=30)
        standby = await operator_process(url, tmp_path, REPLICA_TOKENS[0], "standby", flag)
        replicas.push_async_callback(stop_process, standby)

        assert await send(k8s, "POST", path, policy("led", ["gpt-*"])) < 300
        await eventually(lambda: _names_are(k8s, ["before", "led"]), seconds=30)
        await asyncio.sleep(3)  # the standby is up and polling the peering by now
        assert set(writers(k8s)) - {TEST} == {OPERATOR_TOKEN}  # the standby waits

        leader.kill()
        await leader.wait()
        killed_at = len(k8s.writers)
        assert await send(k8s, "POST", path, policy("after", ["gpt-*"])) < 300
        # Within the leader's keep-alive lifetime and the standby's resume.
        await eventually(lambda: _names_are(k8s, ["before", "led", "after"]), seconds=lifetime + 30)
        after = {
            token
            for token, (plural, _, _) in k8s.writers[killed_at:]
            if plural != "clusterkopfpeerings"
        }
        assert after - {TEST} == {REPLICA_TOKENS[0]}  # the standby, alone
        # Its release namespace watch follows kopf's resume within a poll of the peering.
        await eventually(_found(tmp_path / "standby.log", "leading"), seconds=10)


def _found(log: Path, message: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(_logged(log, message))

    return check


def _logged(log: Path, message: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [r for r in records if str(r.get("msg", "")).startswith(message)]


async def _names_are(k8s: Emulator, expected: list[str]) -> bool:
    return sorted(await policies_of(k8s)) == sorted(expected)
