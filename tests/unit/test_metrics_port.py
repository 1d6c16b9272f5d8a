"""The sidecar's scrapeable metrics port: off unless the config has a `metrics` section, never
on a port the API or the admin API uses, and named on the injected container exactly when the
injected config turns it on (the PodMonitor finds it by that name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sidegate import errors
from sidegate.operator import injection
from sidegate.sidecar import settings

MINIMAL: dict[str, Any] = {
    "credentials": {"directory": "creds"},
    "policy": {"directory": "policies"},
    "providers": {"openai": {"kind": "openai"}},
    "routes": [{"model": "gpt-*", "provider": "openai"}],
}


def parse(**changes: Any) -> settings.SidecarSettings:
    return settings.parse(yaml.safe_dump({**MINIMAL, **changes}), "sidecar.yaml", Path("/"))


def test_the_listener_is_off_unless_configured() -> None:
    assert parse().metrics is None
    on = parse(metrics={}).metrics
    assert on is not None and (on.host, on.port) == ("0.0.0.0", 9464)  # noqa: S104


@pytest.mark.parametrize(
    ("changes", "clash"),
    [
        ({"metrics": {"port": 4000}}, "listen.port"),
        ({"metrics": {"port": 4001}, "admin": {"port": 4001, "token_file": "t"}}, "admin.port"),
    ],
)
def test_the_metrics_port_is_never_the_api_or_admin_port(
    changes: dict[str, Any], clash: str
) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        parse(**changes)
    assert f"is also {clash}" in str(caught.value)


def test_unknown_metrics_keys_are_refused() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        parse(metrics={"path": "/stats"})
    assert "metrics.path: unknown key" in str(caught.value)


def sidecar_of(config: dict[str, Any]) -> dict[str, Any]:
    spec = injection.SidecarSpec(image="sidegate:1", config=yaml.safe_dump(config))
    pod = {"metadata": {"labels": {injection.LABEL: "true"}}, "spec": {"containers": [{}]}}
    injected = injection.apply(pod, injection.inject(pod, spec))
    (sidecar,) = injected["spec"]["initContainers"]
    return sidecar


def test_the_injected_container_names_the_port_the_config_turns_on() -> None:
    assert "ports" not in sidecar_of({"listen": {"port": 4000}})
    assert sidecar_of({"metrics": {}})["ports"] == [
        {"name": injection.METRICS_PORT, "containerPort": 9464, "protocol": "TCP"}
    ]
    assert sidecar_of({"metrics": {"port": 9100}})["ports"][0]["containerPort"] == 9100
    # The API server's own port-name rule (an IANA service name): at most 15 characters.
    assert len(injection.METRICS_PORT) <= 15


def test_the_injectors_default_port_is_the_sidecars() -> None:
    """The operator cannot import the sidecar's settings (layering): the same number twice."""
    default = settings.MetricsSettings().port
    assert sidecar_of({"metrics": {}})["ports"][0]["containerPort"] == default


def test_a_hand_made_sidecar_without_the_port_is_not_the_injectors() -> None:
    """The broker and the guard compare a pod's sidecar with the one the injector builds:
    the port is part of it, so a pod that drops it is refused like any other change."""
    config = yaml.safe_dump({"metrics": {}})
    spec = injection.SidecarSpec(image="sidegate:1", config=config)
    pod = {"metadata": {"labels": {injection.LABEL: "true"}}, "spec": {"containers": [{}]}}
    injected = injection.apply(pod, injection.inject(pod, spec))
    assert injection.hand_made(injected, spec) is None
    del injected["spec"]["initContainers"][0]["ports"]
    assert injection.hand_made(injected, spec) is not None
