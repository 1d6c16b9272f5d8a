"""The injection webhook: AdmissionReview requests over HTTPS to the operator's kopf webhook
server (the operator running on kmock), answered with a JSON patch that makes a valid pod."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import trustme
import yaml

from sidegate.operator import injection, running
from tests.helpers import admission
from tests.helpers.kubernetes import cluster, operator

KUBERNETES = "1.35"
PLAIN = injection.SidecarSpec(image="registry.invalid/sidegate:0.1.0", config="{}")
SIDECAR_CONFIG = """
listen: {port: 4000}
credentials: {directory: /var/run/sidegate/credentials}
policy: {bundle_file: /var/run/sidegate/bundle/bundle.json}
providers: {openai: {kind: openai}}
routes: [{model: "gpt-*", provider: openai}]
"""


@pytest.fixture
def listener(tmp_path: Path, server_cert: trustme.LeafCert) -> running.WebhookListener:
    return admission.listener_for(tmp_path, server_cert)


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.asyncio
async def test_an_annotated_pod_gets_the_sidecar_once(
    listener: running.WebhookListener, ca: trustme.CA, native: bool
) -> None:
    spec = injection.SidecarSpec(
        image="registry.invalid/sidegate:0.1.0",
        config=SIDECAR_CONFIG,
        native=native,
    )
    original = admission.pod({injection.ANNOTATION: "true"})
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=spec):
        _response, ops = await admission.admit(listener, ca, original)
        patched = jsonpatch.apply_patch(copy.deepcopy(original), ops)
        validate(patched)

        sidecars = patched["spec"]["initContainers" if native else "containers"]
        sidecar = next(c for c in sidecars if c["name"] == "sidegate")
        assert sidecar["image"] == spec.image
        assert (sidecar.get("restartPolicy") == "Always") is native
        assert sidecar["args"] == ["sidecar", "--config-env", "SIDEGATE_CONFIG"]
        env = {e["name"]: e for e in sidecar["env"]}
        assert yaml.safe_load(env["SIDEGATE_CONFIG"]["value"])["listen"]["port"] == 4000
        assert env["SIDEGATE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.namespace"
        )
        assert env["SIDEGATE_SERVICE_ACCOUNT"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "spec.serviceAccountName"
        )
        assert env["SIDEGATE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        hardened = sidecar["securityContext"]
        assert hardened["runAsNonRoot"] and hardened["readOnlyRootFilesystem"]
        assert hardened["capabilities"] == {"drop": ["ALL"]}
        assert hardened["allowPrivilegeEscalation"] is False
        assert hardened["seccompProfile"] == {"type": "RuntimeDefault"}

        volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
        projected = {
            source["secret"]["name"]
            for volume in volumes.values()
            for source in volume.get("projected", {}).get("sources", [])
        }
        assert projected == {"sidegate-bundle", "sidegate-credentials", "sidegate-admin"}

        app = next(c for c in patched["spec"]["containers"] if c["name"] == "app")
        app_env = {e["name"]: e.get("value") for e in app["env"]}
        assert app_env == {
            "LOG_LEVEL": "debug",
            "OPENAI_BASE_URL": "http://127.0.0.1:4000/v1",
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000",
            "OPENAI_API_KEY": injection.PLACEHOLDER_KEY,
            "ANTHROPIC_API_KEY": injection.PLACEHOLDER_KEY,
        }
        assert patched["metadata"]["annotations"][injection.INJECTED] == "true"

        # Injecting twice changes nothing: the second answer carries no patch at all.
        _response, again = await admission.admit(listener, ca, patched)
        assert again == []


@pytest.mark.asyncio
async def test_pods_not_asking_are_admitted_untouched(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        for annotations in (None, {injection.ANNOTATION: "false"}, {"other": "true"}):
            _response, ops = await admission.admit(listener, ca, admission.pod(annotations))
            assert ops == []


@pytest.mark.asyncio
async def test_an_app_setting_its_own_base_url_keeps_it(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    original = admission.pod({injection.ANNOTATION: "true"})
    original["spec"]["containers"][0]["env"].append(
        {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:4000/v1/custom"}
    )
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        _response, ops = await admission.admit(listener, ca, original)
    app = jsonpatch.apply_patch(original, ops)["spec"]["containers"][0]
    values = [e["value"] for e in app["env"] if e["name"] == "OPENAI_BASE_URL"]
    assert values == ["http://127.0.0.1:4000/v1/custom"]


@pytest.mark.asyncio
async def test_a_host_network_pod_asking_for_the_sidecar_is_refused(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    """Its sidecar would listen on the node's loopback: refused, not created without it."""
    original = admission.pod({injection.ANNOTATION: "true"})
    original["spec"]["hostNetwork"] = True
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        response, ops = await admission.admit(listener, ca, original, allowed=False)
    assert ops == []
    assert response["status"]["code"] == 400
    assert "hostNetwork" in response["status"]["message"]
