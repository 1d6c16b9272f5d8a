"""Per-pod overrides (sidegate.io/sidecar-*): what a pod may change in its sidecar, within
the chart's bounds, refused with the annotation's name otherwise; the guard and the broker
accept exactly what the injector builds from them, and nothing a pod's author could use to
run another sidecar."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
import yaml

from sidegate.broker import pods
from sidegate.operator import injection, overrides
from sidegate.policy import signing
from tests.helpers import brokers

TRUSTED = brokers.public_keys(signing.generate_private_key())
SPEC = brokers.sidecar_spec(TRUSTED)
EXPECTED = pods.Expectations(brokers.IMAGE, "sidegate", tuple(TRUSTED), brokers.CHART_CONFIG)


def asking(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "team-a",
            "uid": "u-1",
            "labels": {injection.LABEL: "true"},
            "annotations": annotations,
        },
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "a"}]},
    }


def injected(annotations: dict[str, str]) -> dict[str, Any]:
    pod = asking(annotations)
    return injection.apply(pod, injection.inject(pod, SPEC))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("250m", Decimal("0.25")),
        ("0.5", Decimal("0.5")),
        ("2", Decimal(2)),
        ("64Mi", Decimal(64 * 1024**2)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        (".5", Decimal("0.5")),
    ],
)
def test_kubernetes_quantities(text: str, value: Decimal) -> None:
    assert overrides.quantity(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5.2", "12Xi", "1e", "lots", "1 Gi"])
def test_what_is_not_a_quantity(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        overrides.quantity(text)


def test_a_pod_sets_its_sidecars_resources_and_log_level() -> None:
    pod = injected(
        {
            overrides.CPU: "200m",
            overrides.CPU_LIMIT: "1",
            overrides.MEMORY: "128Mi",
            overrides.MEMORY_LIMIT: "512Mi",
            overrides.LOG_LEVEL: "debug",
        }
    )
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["resources"] == {
        "requests": {"cpu": "200m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    config = yaml.safe_load(sidecar["env"][0]["value"])
    assert config["logging"]["level"] == "DEBUG"
    assert injection.hand_made(pod, SPEC) is None  # the guard: the injector's own
    pods.check(pod, uid="u-1", expected=EXPECTED)  # the broker serves it
    # Without annotations: the chart's resources, the chart's level.
    plain = injected({})["spec"]["initContainers"][0]
    assert plain["resources"] == dict(SPEC.resources)


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({overrides.CPU: "4"}, "sidegate.io/sidecar-cpu: '4' is above the cluster's maximum of 1"),
        ({overrides.MEMORY_LIMIT: "2Gi"}, "above the cluster's maximum of 1Gi"),
        ({overrides.MEMORY: "0"}, "must be more than zero"),
        ({overrides.CPU: "a lot"}, "sidegate.io/sidecar-cpu: 'a lot' is not a Kubernetes quantity"),
        ({overrides.MEMORY: "512Mi"}, "set sidegate.io/sidecar-memory-limit too"),
        ({overrides.LOG_LEVEL: "TRACE"}, "'TRACE' is not one of DEBUG, INFO, WARNING, ERROR"),
        ({"sidegate.io/sidecar-cpus": "1"}, "sidegate.io/sidecar-cpus: not an override"),
        ({"sidegate.io/sidecar-image": "evil:1"}, "image cannot be chosen per pod"),
    ],
)
def test_a_bad_override_refuses_the_pod_and_says_which(
    annotations: dict[str, str], message: str
) -> None:
    reason = injection.refusal(asking(annotations), SPEC)
    assert reason is not None and reason.startswith("sidegate: ") and message in reason


def test_the_chart_bounds_what_a_pod_may_ask_for() -> None:
    strict = dataclasses.replace(SPEC, bounds=overrides.Bounds(max_cpu=None, log_levels=("INFO",)))
    assert "does not let pods change the sidecar's cpu" in str(
        injection.refusal(asking({overrides.CPU: "100m"}), strict)
    )
    assert injection.refusal(asking({overrides.LOG_LEVEL: "DEBUG"}), strict) is not None
    assert injection.refusal(asking({overrides.MEMORY: "64Mi"}), strict) is None
    with pytest.raises(ValueError, match="unknown log levels"):
        overrides.Bounds(log_levels=("LOUD",))


def test_the_api_servers_canonical_quantities_are_the_injectors() -> None:
    """The API server stores "0.5" as "500m": the guard compares values, not spellings."""
    pod = injected({overrides.CPU: "0.5"})
    pod["spec"]["initContainers"][0]["resources"]["requests"]["cpu"] = "500m"
    assert injection.hand_made(pod, SPEC) is None
    pod["spec"]["initContainers"][0]["resources"]["requests"]["cpu"] = "600m"
    assert injection.hand_made(pod, SPEC) is not None  # not what the annotation asked for


def test_the_guard_refuses_resources_or_a_level_the_annotations_do_not_ask_for() -> None:
    pod = injected({overrides.LOG_LEVEL: "WARNING"})
    del pod["metadata"]["annotations"][overrides.LOG_LEVEL]
    assert injection.hand_made(pod, SPEC) is not None


def test_the_broker_accepts_another_level_but_no_other_config_change() -> None:
    pod = injected({overrides.LOG_LEVEL: "ERROR"})
    pods.check(pod, uid="u-1", expected=EXPECTED)
    sidecar = pod["spec"]["initContainers"][0]
    config = yaml.safe_load(sidecar["env"][0]["value"])
    config["logging"]["format"] = "text" if config["logging"].get("format") != "text" else "json"
    sidecar["env"][0]["value"] = yaml.safe_dump(config)
    with pytest.raises(pods.Refused):
        pods.check(pod, uid="u-1", expected=EXPECTED)
    config["logging"] = {"level": "TRACE"}
    sidecar["env"][0]["value"] = yaml.safe_dump(config)
    with pytest.raises(pods.Refused):
        pods.check(pod, uid="u-1", expected=EXPECTED)


def test_the_broker_is_not_swayed_by_a_status_annotation() -> None:
    """The broker judges the containers, never sidegate.io/status (anyone can write it)."""
    pod = injected({})
    pod["status"] = {"phase": "Running"}
    pods.check(pod, uid="u-1", expected=EXPECTED)
    pod["metadata"]["annotations"][injection.STATUS] = "not even JSON"
    pods.check(pod, uid="u-1", expected=EXPECTED)  # what was injected is what counts
    pod["spec"]["initContainers"][0]["image"] = "evil:1"
    pod["metadata"]["annotations"][injection.STATUS] = injection.status(
        dataclasses.replace(SPEC, image="evil:1"), overrides.NONE
    )
    with pytest.raises(pods.Refused):
        pods.check(pod, uid="u-1", expected=EXPECTED)
