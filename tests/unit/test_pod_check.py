"""The broker's pod check, case by case (the integration tests ask it through the API)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sidegate.broker import pods
from sidegate.policy import signing
from tests.helpers import brokers

TRUSTED = brokers.public_keys(signing.generate_private_key(), signing.generate_private_key())
EXPECTED = pods.Expectations(brokers.IMAGE, "sidegate", tuple(TRUSTED))


def injected(**metadata: Any) -> dict[str, Any]:
    pod = brokers.injected_pod("team-a", "p", TRUSTED)
    pod["metadata"].update({"uid": "u-1", **metadata})
    return pod


def refusal(pod: dict[str, Any], uid: str = "u-1") -> str | None:
    try:
        pods.check(pod, uid=uid, expected=EXPECTED)
    except pods.Refused as exc:
        return exc.code
    return None


def test_the_injected_pod_passes_as_a_native_or_a_plain_sidecar() -> None:
    assert refusal(injected()) is None
    plain = injected()
    sidecar = plain["spec"].pop("initContainers")[0]
    del sidecar["restartPolicy"]
    plain["spec"]["containers"].append(sidecar)
    assert refusal(plain) is None


@pytest.mark.parametrize("keys", [TRUSTED[:1], TRUSTED[1:], list(reversed(TRUSTED))])
def test_a_pod_trusting_some_of_the_published_keys_passes(keys: list[str]) -> None:
    """A pod created before a signing key was added carries the shorter list the webhook
    injected then: rotation adds a key, activates it later, retires the old one last."""
    pod = injected()
    pod["spec"]["initContainers"][0]["env"][0]["value"] = brokers.sidecar_config(keys)
    assert refusal(pod) is None


def test_an_init_container_that_is_not_a_native_sidecar_is_refused() -> None:
    pod = injected()
    del pod["spec"]["initContainers"][0]["restartPolicy"]
    assert refusal(pod) == "pod_not_injected"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda p: p["metadata"].update(uid="u-2"), "pod_not_found"),
        (lambda p: p["status"].update(phase="Succeeded"), "pod_terminated"),
        (
            lambda p: p["metadata"].update(deletionTimestamp="2026-11-23T00:00:00Z"),
            "pod_terminated",
        ),
        (lambda p: p["spec"].update(hostIPC=True), "pod_not_injected"),
        (lambda p: p["spec"].update(hostNetwork=True), "pod_not_injected"),
        # The config from a ConfigMap the namespace controls: not what the webhook wrote.
        (
            lambda p: p["spec"]["initContainers"][0]["env"][0].update(
                valueFrom={"configMapKeyRef": {"name": "mine", "key": "c"}}
            ),
            "pod_not_injected",
        ),
        # A key the operator never published, or no key at all: bundles it never signed.
        (
            lambda p: p["spec"]["initContainers"][0]["env"][0].update(
                value=brokers.sidecar_config(
                    [*TRUSTED[:1], *brokers.public_keys(signing.generate_private_key())]
                )
            ),
            "pod_not_injected",
        ),
        (
            lambda p: p["spec"]["initContainers"][0]["env"][0].update(
                value=brokers.sidecar_config([])
            ),
            "pod_not_injected",
        ),
        # Two containers named sidegate: which one holds the token is anyone's guess.
        (
            lambda p: p["spec"]["containers"].append(
                copy.deepcopy(p["spec"]["initContainers"][0]) | {"restartPolicy": None}
            ),
            "pod_not_injected",
        ),
        # An init container mounting the token runs before the sidecar, with the token.
        (
            lambda p: p["spec"]["initContainers"].insert(
                0,
                {
                    "name": "setup",
                    "image": "busybox",
                    "volumeMounts": [{"name": "sidegate-token", "mountPath": "/t"}],
                },
            ),
            "pod_not_injected",
        ),
    ],
)
def test_refusals(change: Any, code: str) -> None:
    pod = injected()
    change(pod)
    assert refusal(pod) == code


def test_a_token_without_its_pod_in_the_extras_is_not_pod_bound() -> None:
    with pytest.raises(pods.Refused) as caught:
        pods.pod_identity({"authentication.kubernetes.io/credential-id": ["JTI=x"]})
    assert caught.value.code == "token_not_pod_bound"
    assert pods.pod_identity(
        {
            "authentication.kubernetes.io/pod-name": ["p"],
            "authentication.kubernetes.io/pod-uid": ["u-1"],
        }
    ) == ("p", "u-1")


def test_published_keys_are_a_json_list_of_strings_or_nothing() -> None:
    assert pods.published_keys('["a", "b"]') == ("a", "b")
    for bad in (None, "", "not json", '{"a": 1}', "[1]"):
        assert pods.published_keys(bad) == ()
