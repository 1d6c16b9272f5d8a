"""kopf's index of valid policies can hold a policy twice: it keys entries by uid and drops
one on the object's DELETED event, which it skips while it throttles the object after an
API error. A policy deleted and created again under its name is then held twice; the bundle
is compiled from the policy as the API server has it, not refused on every try."""

from __future__ import annotations

import kopf
import pytest

from sidegate.operator.handlers import compiling
from sidegate.operator.kube import ApiClient
from sidegate.operator.state import OperatorState
from tests.helpers.kubernetes import OPERATOR_TOKEN, POLICIES, RELEASE, cluster, policy, send


def _state(url: str) -> OperatorState:
    info = kopf.ConnectionInfo(server=url, token=OPERATOR_TOKEN)
    return OperatorState(login=lambda **_: info, namespace=RELEASE, client=ApiClient(info))


@pytest.mark.asyncio
async def test_a_policy_indexed_twice_is_compiled_as_the_api_server_has_it() -> None:
    async with cluster() as (k8s, url):
        state = _state(url)
        try:
            stale = compiling.validate(policy("p1", ["gpt-old"]))
            other = compiling.validate(policy("p2", ["claude-*"]))
            assert (
                await send(k8s, "POST", POLICIES.format(ns="team-a"), policy("p1", ["gpt-new"]))
                < 300
            )
            live = compiling.validate(policy("p1", ["gpt-new"]))

            settled = await compiling.in_force(state, "team-a", [stale, other, live])
            assert sorted((p.metadata.name, p.spec.rules[0].models) for p in settled) == [
                ("p1", ["gpt-new"]),
                ("p2", ["claude-*"]),
            ]

            # Gone from the API server: neither copy is compiled (never a stale allow).
            assert await send(k8s, "DELETE", POLICIES.format(ns="team-a") + "/p1") < 300
            settled = await compiling.in_force(state, "team-a", [stale, other, live])
            assert [p.metadata.name for p in settled] == ["p2"]
        finally:
            await state.api().close()
