"""A namespace admin's pods against the broker's pod check (``pods.check``, the function the
broker runs on the pod it reads from the API): injected by the real injector, then changed
where the guard webhook would stop them, as a pod created while the guard is unreachable with
``failurePolicy: Ignore`` would be. The sidecar's user and group are the injector's: 65532
with ``userIds: fixed`` (the chart's default), any non-root ids the platform assigned with
``userIds: platform``; the chart gives the broker the operator's mode."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from sidegate import cli
from sidegate.broker import pods
from sidegate.policy import signing
from tests.helpers import brokers
from tests.security.test_chart import Render, pod_of

TRUSTED = brokers.public_keys(signing.generate_private_key())
FIXED = pods.Expectations(brokers.IMAGE, "sidegate", tuple(TRUSTED), brokers.CHART_CONFIG)
PLATFORM = dataclasses.replace(FIXED, fixed_user=False)
OPENSHIFT_UID = 1000650000  # from the namespace's openshift.io/sa.scc.uid-range


def injected(fixed_user: bool = True) -> dict[str, Any]:
    pod = brokers.injected_pod("team-a", "p", TRUSTED, fixed_user=fixed_user)
    pod["metadata"]["uid"] = "u-1"
    return pod


def context_of(pod: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = pod["spec"]["initContainers"][0]["securityContext"]
    return context


def served(pod: dict[str, Any], expected: pods.Expectations) -> bool:
    try:
        pods.check(pod, uid="u-1", expected=expected)
    except pods.Refused as exc:
        assert exc.code == "pod_not_injected", exc.code
        return False
    return True


def test_the_injected_pods_are_served_in_their_mode() -> None:
    assert served(injected(), FIXED)
    assert served(injected(), PLATFORM)  # a fixed-mode pod met during a switch to platform
    platform = injected(fixed_user=False)
    assert "runAsUser" not in context_of(platform)
    assert served(platform, PLATFORM)
    context_of(platform).update(runAsUser=OPENSHIFT_UID, runAsGroup=OPENSHIFT_UID)
    assert served(platform, PLATFORM)  # the SCC's assignment


Change = Callable[[dict[str, Any]], None]
CHANGES: dict[str, Change] = {
    "another-uid": lambda c: c.update(runAsUser=1000),
    "another-gid": lambda c: c.update(runAsGroup=1000),
    "no-uid": lambda c: c.pop("runAsUser"),
    "root-group": lambda c: c.update(runAsGroup=0),
}


@pytest.mark.parametrize("change", CHANGES)
def test_in_fixed_mode_the_sidecar_runs_as_the_injected_ids_only(change: str) -> None:
    pod = injected()
    CHANGES[change](context_of(pod))
    assert not served(pod, FIXED)


def test_in_platform_mode_root_ids_are_refused() -> None:
    for ids in ({"runAsGroup": 0}, {"runAsUser": 0}, {"runAsUser": OPENSHIFT_UID, "runAsGroup": 0}):
        pod = injected(fixed_user=False)
        context_of(pod).update(ids)
        assert not served(pod, PLATFORM), ids


def test_the_chart_gives_the_broker_the_injectors_mode(render: Render) -> None:
    """The webhook Deployment injects; the broker must expect the ids it injects."""
    for sets, mode in (((), "fixed"), (("userIds=platform",), "platform")):
        docs = render(*sets)
        (webhook,) = pod_of(docs, "Deployment", "sidegate-webhook")["containers"]
        (broker,) = pod_of(docs, "Deployment", "sidegate-broker")["containers"]
        parser = cli.build_parser()
        assert parser.parse_args(broker["args"]).sidecar_user == mode
        assert parser.parse_args(webhook["args"]).sidecar_user == mode
