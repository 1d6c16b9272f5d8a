"""`sidegate inject -f`: its output is the webhook's. The operator runs on kmock with the
sidecar flags the command is given; the same pods go through the webhook (an AdmissionReview
over HTTPS, its JSON patch applied) and through the command (a process, the published keys
and the broker's CA as files): the results are equal, refusals included."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import trustme
import yaml

from sidegate import cli, sidecar_options
from sidegate.operator import injection, overrides, signing_keys
from tests.helpers import admission
from tests.helpers.kubernetes import RELEASE, cluster, eventually, get, operator

CONFIG = """
listen: {port: 4100}
broker: {url: "https://sidegate-broker.sidegate-system.svc:8443"}
providers: {openai: {kind: openai}}
routes: [{model: "gpt-*", provider: openai}]
"""
BROKER_CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def flags(directory: Path, *extra: str) -> list[str]:
    (directory / "sidecar.yaml").write_text(CONFIG)
    (directory / "broker-ca.crt").write_text(BROKER_CA)
    return [
        "--sidecar-image=registry.invalid/sidegate:0.1.0",
        f"--sidecar-config={directory / 'sidecar.yaml'}",
        f"--broker-ca-file={directory / 'broker-ca.crt'}",
        "--sidecar-port=4100",
        "--sidecar-max-cpu=2",
        *extra,
    ]


def inject_command(
    directory: Path, documents: list[dict[str, Any]], options: list[str]
) -> subprocess.CompletedProcess[str]:
    source = directory / "in.yaml"
    source.write_text(yaml.safe_dump_all(documents))
    return subprocess.run(
        [sys.executable, "-m", "sidegate", "inject", "-f", str(source), *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pods() -> dict[str, dict[str, Any]]:
    overridden = admission.pod(
        {injection.LABEL: "true"},
        {overrides.CPU: "0.5", overrides.MEMORY_LIMIT: "512Mi", overrides.LOG_LEVEL: "debug"},
    )
    overridden["metadata"]["name"] = "overridden"
    with_init = admission.pod({injection.LABEL: "true"})
    with_init["metadata"]["name"] = "with-init"
    with_init["spec"]["initContainers"] = [{"name": "migrate", "image": "registry.invalid/m:1"}]
    return {
        "plain": admission.pod({injection.LABEL: "true"}),
        "overridden": overridden,
        "with-init": with_init,
    }


@pytest.mark.parametrize("mode", ["native", "container"])
@pytest.mark.asyncio
async def test_the_command_prints_what_the_webhook_patches(
    tmp_path: Path, server_cert: trustme.LeafCert, ca: trustme.CA, mode: str
) -> None:
    options = flags(tmp_path, f"--sidecar-mode={mode}")
    spec = sidecar_options.spec_from(cli.build_parser().parse_args(["operator", *options]))
    listener = admission.listener_for(tmp_path, server_cert)
    async with (
        cluster() as (k8s, url),
        operator(url, listener, sidecar=spec, broker_ca_file=tmp_path / "broker-ca.crt"),
    ):
        by_webhook = {}
        for name, pod in pods().items():
            _response, ops = await admission.admit(listener, ca, pod)
            assert ops
            by_webhook[name] = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
        public = await eventually(
            lambda: get(k8s, f"/api/v1/namespaces/{RELEASE}/configmaps/{signing_keys.PUBLIC}")
        )
    keys = tmp_path / "trusted-keys.json"
    keys.write_text(public["data"][signing_keys.TRUSTED_KEYS])
    assert json.loads(keys.read_text())  # the operator published its key

    # Pods, and the same pod as a Deployment's template, with a Service between them.
    documents: list[dict[str, Any]] = list(pods().values())
    template = copy.deepcopy(pods()["overridden"])
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app", "namespace": "team-a"},
        "spec": {
            "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"}, "spec": {}}
    done = inject_command(
        tmp_path, [*documents, service, deployment], [*options, f"--trusted-keys-file={keys}"]
    )
    assert done.returncode == 0, done.stderr
    printed = list(yaml.safe_load_all(done.stdout))
    assert printed[: len(documents)] == list(by_webhook.values())
    assert printed[len(documents)] == service
    injected_template = printed[-1]["spec"]["template"]
    assert injected_template["spec"] == by_webhook["overridden"]["spec"]
    assert (
        injected_template["metadata"]["annotations"]
        == (by_webhook["overridden"]["metadata"]["annotations"])
    )


@pytest.mark.asyncio
async def test_the_command_refuses_what_the_webhook_refuses(
    tmp_path: Path, server_cert: trustme.LeafCert, ca: trustme.CA
) -> None:
    options = flags(tmp_path)
    spec = sidecar_options.spec_from(cli.build_parser().parse_args(["operator", *options]))
    listener = admission.listener_for(tmp_path, server_cert)
    exposing = admission.pod({injection.LABEL: "true"}, {overrides.CPU: "3"})
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=spec):
        response, _ops = await admission.admit(listener, ca, exposing, allowed=False)
    done = inject_command(tmp_path, [exposing], options)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"Pod/app-7d9f: {response['status']['message']}"

    unlabelled = admission.pod()
    done = inject_command(tmp_path, [unlabelled], options)
    assert done.returncode == 0
    assert list(yaml.safe_load_all(done.stdout)) == [unlabelled]
    assert "no sidegate.io/inject=true label, unchanged" in done.stderr


def test_bad_flags_and_input_exit_2(tmp_path: Path) -> None:
    options = flags(tmp_path)
    (tmp_path / "not-a-list.json").write_text('{"a": 1}')
    for extra, message in (
        (["--trusted-keys-file", str(tmp_path / "not-a-list.json")], "expected a JSON list"),
        (["--sidecar-max-memory=lots"], "not a Kubernetes quantity"),
        (["--trusted-keys-file", str(tmp_path / "missing.json")], "cannot read"),
    ):
        done = inject_command(
            tmp_path, [admission.pod({injection.LABEL: "true"})], [*options, *extra]
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
    done = inject_command(tmp_path, [], options[1:])  # no --sidecar-image
    assert done.returncode == 2 and "--sidecar-image" in done.stderr
