"""The injector as a pure function: a fixed point, and a re-injection replaces, never adds."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
import yaml

from sidegate.operator import injection


def pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "labels": {injection.LABEL: "true"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "m"}],
            "containers": [{"name": "app", "image": "a"}, {"name": "worker", "image": "w"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


@pytest.mark.parametrize("native", [True, False])
def test_injecting_is_a_fixed_point(native: bool) -> None:
    spec = injection.SidecarSpec(image="sidegate:1", config="{}", native=native)
    once = injection.apply(pod(), injection.inject(pod(), spec))
    assert injection.apply(once, injection.inject(once, spec)) == once
    every = [*once["spec"].get("initContainers", []), *once["spec"]["containers"]]
    assert [c["name"] for c in every].count("sidegate") == 1
    assert once["spec"]["volumes"][0]["name"] == "data"
    for app in (c for c in once["spec"]["containers"] if c["name"] != "sidegate"):
        assert {"OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"} <= {e["name"] for e in app["env"]}
    if native:
        assert [c["name"] for c in once["spec"]["initContainers"]] == ["sidegate", "migrate"]


def test_a_new_image_or_mode_replaces_the_old_sidecar() -> None:
    old = injection.SidecarSpec(image="sidegate:1", config="{}", native=False)
    new = injection.SidecarSpec(image="sidegate:2", config="{}", native=True)
    first = injection.apply(pod(), injection.inject(pod(), old))
    second = injection.apply(first, injection.inject(first, new))
    assert [c["name"] for c in second["spec"]["containers"]] == ["app", "worker"]
    assert second["spec"]["initContainers"][0]["image"] == "sidegate:2"


def test_only_true_asks_for_injection() -> None:
    assert injection.wants_injection({injection.LABEL: "True"})
    for asked in (None, {}, {injection.LABEL: "yes"}, {injection.LABEL: "false"}):
        assert not injection.wants_injection(asked)


def test_the_config_gets_the_keys_the_ca_and_the_token_path() -> None:
    spec = injection.SidecarSpec(
        image="sidegate:1",
        config="broker: {url: 'https://b:8443'}\npolicy: {cache_ttl_seconds: 5}\n",
        trusted_keys=("ed25519:AAA", "ed25519:BBB"),
        broker_ca_pem="PEM",
    )
    config = yaml.safe_load(injection.sidecar_config(spec))
    assert config["policy"] == {
        "cache_ttl_seconds": 5,
        "trusted_keys": ["ed25519:AAA", "ed25519:BBB"],
    }
    assert config["broker"] == {
        "url": "https://b:8443",
        "ca_pem": "PEM",
        "token_file": "/var/run/sidegate/token/token",
    }
    with pytest.raises(ValueError, match="mapping"):
        injection.sidecar_config(injection.SidecarSpec(image="x", config="[1, 2]"))


@pytest.mark.parametrize("native", [True, False])
def test_only_the_sidecar_may_mount_its_volumes(native: bool) -> None:
    """In either mode: the injected pod passes; the same pod with the app mounting the
    token, or sharing its process namespace, does not."""
    spec = injection.SidecarSpec(image="sidegate:1", config="{}", native=native)
    injected = injection.apply(pod(), injection.inject(pod(), spec))
    assert injection.carries_sidegate(injected, "sidegate")
    assert injection.exposure(injected, "sidegate") is None
    assert not injection.carries_sidegate(pod(), "sidegate")
    mounting = copy.deepcopy(injected)
    app = next(c for c in mounting["spec"]["containers"] if c["name"] == "app")
    app["volumeMounts"] = [{"name": "sidegate-token", "mountPath": "/t"}]
    assert "'app' mounts 'sidegate-token'" in (injection.exposure(mounting, "sidegate") or "")
    sharing = copy.deepcopy(injected)
    sharing["spec"]["shareProcessNamespace"] = True
    assert "shareProcessNamespace" in (injection.exposure(sharing, "sidegate") or "")


def test_a_platform_assigned_user_is_left_to_the_platform_and_accepted_from_it() -> None:
    """sidecar.user=platform (OpenShift's restricted SCC): no runAsUser/runAsGroup injected;
    the uid the SCC's admission then sets is the injector's sidecar still, root is not."""
    spec = injection.SidecarSpec(
        image="sidegate:1", config="{}", fixed_user=False, trusted_keys=("ed25519:k",)
    )
    injected = injection.apply(pod(), injection.inject(pod(), spec))
    sidecar = injected["spec"]["initContainers"][0]
    assert not {"runAsUser", "runAsGroup"} & set(sidecar["securityContext"])
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    sidecar["securityContext"]["runAsUser"] = 1000650000
    assert injection.hand_made(injected, spec) is None
    sidecar["securityContext"]["runAsUser"] = 0
    assert injection.hand_made(injected, spec) is not None
    fixed = injection.SidecarSpec(image="sidegate:1", config="{}", trusted_keys=("ed25519:k",))
    sidecar["securityContext"]["runAsUser"] = 1000650000
    assert injection.hand_made(injected, fixed) is not None  # a fixed user is the image's


def test_the_status_annotation_records_what_was_injected_and_decides_nothing() -> None:
    """sidegate.io/status: version, image, mode, the chart config's hash, the overrides; the
    injector overwrites a forged one, and a forged one gets nothing past the guard."""
    spec = injection.SidecarSpec(image="sidegate:1", config="{a: 1, b: 2}", trusted_keys=("k",))
    asked = pod()
    asked["metadata"]["annotations"] = {
        injection.STATUS: '{"image": "evil:1"}',
        "sidegate.io/sidecar-log-level": "error",
    }
    once = injection.apply(asked, injection.inject(asked, spec))
    status = json.loads(once["metadata"]["annotations"][injection.STATUS])
    assert status["image"] == "sidegate:1" and status["mode"] == "native"
    assert status["logLevel"] == "ERROR" and "resources" not in status
    # The hash is of the parsed config: another layout is the same config, another value not.
    relaid = dataclasses.replace(spec, config="b: 2\na: 1\n")
    assert injection.config_hash(relaid) == status["configHash"]
    assert injection.config_hash(dataclasses.replace(spec, config="{a: 1}")) != status["configHash"]
    assert injection.apply(once, injection.inject(once, spec)) == once  # still a fixed point

    # A pod that claims, in the annotation, to be injected with a sidecar it wrote itself.
    forged = copy.deepcopy(once)
    forged["spec"]["initContainers"][0]["image"] = "evil:1"
    forged["metadata"]["annotations"][injection.STATUS] = injection.status(
        dataclasses.replace(spec, image="evil:1"), injection.overrides.NONE
    )
    assert injection.hand_made(forged, spec) is not None
