"""A namespace admin's sidegate.io/sidecar-* annotations as an attacker writes them: values
the quantity parser must refuse with the annotation's name (a 400 from the webhook, exit 1
from ``sidegate inject``), never an exception the webhook answers as a 500 with a type name,
and never a refusal that echoes an annotation of any size back into the API server's answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from sidegate.operator import injection, overrides, running
from tests.helpers import admission
from tests.helpers.kubernetes import cluster, operator

PLAIN = injection.SidecarSpec(image="registry.invalid/sidegate:0.1.0", config="{}")
# Exponents past what Python's decimal context holds (Emax 999999) overflow while scaling;
# their negatives underflow to zero.
HOSTILE = [
    "1e9999999",
    "9e+1000000",
    "1E9999999",
    "0.1e1000001",
    "1e" + "9" * 5000,  # more digits than int() converts
    "1" * 5000,
    "1" * 200_000,
]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("name", [overrides.CPU, overrides.MEMORY_LIMIT])
def test_out_of_range_quantities_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(overrides.Invalid) as refused:
        overrides.parse({name: value}, overrides.Bounds())
    message = str(refused.value)
    assert message.startswith(f"{name}: ")
    assert len(message) < 300, "the refusal echoes the whole annotation"


def test_a_huge_log_level_is_refused_without_echoing_it() -> None:
    with pytest.raises(overrides.Invalid) as refused:
        overrides.parse({overrides.LOG_LEVEL: "DEBUG" * 40_000}, overrides.Bounds())
    assert str(refused.value).startswith(f"{overrides.LOG_LEVEL}: ")
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("value", ["1e9999999", "1" * 200_000])
def test_the_guard_compares_an_out_of_range_sidecar_without_failing(value: str) -> None:
    """A hand-made sidecar with such a quantity (no annotation): the guard's comparison of
    quantities refuses it as not the injector's."""
    pod = admission.pod({injection.LABEL: "true"})
    pod = injection.apply(pod, injection.inject(pod, PLAIN))
    pod["spec"]["initContainers"][0]["resources"]["limits"]["memory"] = value
    assert injection.hand_made(pod, PLAIN) is not None


@pytest.fixture
def listener(tmp_path: Path, server_cert: trustme.LeafCert) -> running.WebhookListener:
    return admission.listener_for(tmp_path, server_cert)


@pytest.mark.asyncio
async def test_the_webhook_answers_400_naming_the_annotation(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        for value in ("1e9999999", "1" * 200_000):
            pod = admission.pod({injection.LABEL: "true"}, {overrides.CPU: value})
            response, ops = await admission.admit(listener, ca, pod, allowed=False)
            assert ops == [] and response["status"]["code"] == 400, response["status"]
            message = response["status"]["message"]
            assert message.startswith(f"sidegate: {overrides.CPU}: ") and len(message) < 300


def test_the_inject_command_refuses_it_with_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "broker: {url: 'https://sidegate-broker.sidegate-system.svc:8443'}\n"
        "providers: {openai: {kind: openai}}\nroutes: [{model: 'gpt-*', provider: openai}]\n"
    )
    pod: dict[str, Any] = admission.pod({injection.LABEL: "true"}, {overrides.CPU: "1e9999999"})
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod))
    flags = ["--sidecar-image", PLAIN.image, "--sidecar-config", str(config)]
    result = subprocess.run(
        [sys.executable, "-m", "sidegate", "inject", "-f", str(manifest), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert overrides.CPU in result.stderr and "Traceback" not in result.stderr
