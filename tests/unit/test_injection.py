"""The injector as a pure function: a fixed point, and a re-injection replaces, never adds."""

from __future__ import annotations

from typing import Any

import pytest

from sidegate.operator import injection


def pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "annotations": {injection.ANNOTATION: "true"}},
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
    assert injection.wants_injection({injection.ANNOTATION: "True"})
    for asked in (None, {}, {injection.ANNOTATION: "yes"}, {injection.ANNOTATION: "false"}):
        assert not injection.wants_injection(asked)
