"""The admission webhooks: AdmissionReview requests over HTTPS to the operator's kopf webhook
server (the operator running on kmock). /inject answers with a JSON patch that makes a valid
pod whose sidecar talks to the broker; /guard refuses what would expose the sidecar."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import trustme
import yaml

import sidegate
from sidegate.operator import injection, overrides, running, signing_keys
from sidegate.operator.handlers import webhook
from tests.helpers import admission
from tests.helpers.kubernetes import RELEASE, cluster, eventually, get, operator

KUBERNETES = "1.35"
PLAIN = injection.SidecarSpec(image="registry.invalid/sidegate:0.1.0", config="{}")
SIDECAR_CONFIG = """
listen: {port: 4000}
broker: {url: "https://sidegate-broker.sidegate-system.svc:8443", max_staleness_seconds: 300}
policy: {cache_ttl_seconds: 30}
providers: {openai: {kind: openai}}
routes: [{model: "gpt-*", provider: openai}]
"""
BROKER_CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def listener(tmp_path: Path, server_cert: trustme.LeafCert) -> running.WebhookListener:
    return admission.listener_for(tmp_path, server_cert)


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.asyncio
async def test_a_labelled_pod_gets_the_sidecar_once(
    listener: running.WebhookListener, ca: trustme.CA, native: bool
) -> None:
    spec = injection.SidecarSpec(
        image="registry.invalid/sidegate:0.1.0",
        config=SIDECAR_CONFIG,
        native=native,
    )
    original = admission.pod({injection.LABEL: "true"})
    ca_file = listener.certfile.parent / "broker-ca.crt"
    ca_file.write_text(BROKER_CA)
    async with (
        cluster() as (k8s, url),
        operator(url, listener, sidecar=spec, broker_ca_file=ca_file),
    ):
        _response, ops = await admission.admit(listener, ca, original)
        patched = jsonpatch.apply_patch(copy.deepcopy(original), ops)
        validate(patched)
        public = await eventually(
            lambda: get(k8s, f"/api/v1/namespaces/{RELEASE}/configmaps/{signing_keys.PUBLIC}")
        )

        sidecars = patched["spec"]["initContainers" if native else "containers"]
        sidecar = next(c for c in sidecars if c["name"] == "sidegate")
        assert sidecar["image"] == spec.image
        assert (sidecar.get("restartPolicy") == "Always") is native
        assert sidecar["args"] == ["sidecar", "--config-env", "SIDEGATE_CONFIG"]
        env = {e["name"]: e for e in sidecar["env"]}
        config = yaml.safe_load(env["SIDEGATE_CONFIG"]["value"])
        assert config["listen"]["port"] == 4000
        # What only the operator knows, filled in: the keys bundles are signed with (as
        # published), the broker's CA, where the token is.
        trusted = json.loads(public["data"][signing_keys.TRUSTED_KEYS])
        assert config["policy"] == {"cache_ttl_seconds": 30, "trusted_keys": trusted}
        assert config["broker"] == {
            "url": "https://sidegate-broker.sidegate-system.svc:8443",
            "max_staleness_seconds": 300,
            "ca_pem": BROKER_CA,
            "token_file": "/var/run/sidegate/token/token",
        }
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

        # No Secret volume at all: one projected token for the broker, and the spool.
        volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
        assert set(volumes) == {"sidegate-token", "sidegate-spool"}
        (source,) = volumes["sidegate-token"]["projected"]["sources"]
        assert source == {
            "serviceAccountToken": {
                "audience": "sidegate",
                "expirationSeconds": 600,
                "path": "token",
            }
        }
        mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
        assert mounts["sidegate-token"] == {
            "name": "sidegate-token",
            "mountPath": "/var/run/sidegate/token",
            "readOnly": True,
        }
        every = [*patched["spec"].get("initContainers", []), *patched["spec"]["containers"]]
        assert all(not c.get("volumeMounts") for c in every if c["name"] != "sidegate")

        app = next(c for c in patched["spec"]["containers"] if c["name"] == "app")
        app_env = {e["name"]: e.get("value") for e in app["env"]}
        assert app_env == {
            "LOG_LEVEL": "debug",
            "OPENAI_BASE_URL": "http://127.0.0.1:4000/v1",
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000",
            "OPENAI_API_KEY": injection.PLACEHOLDER_KEY,
            "ANTHROPIC_API_KEY": injection.PLACEHOLDER_KEY,
        }
        status = json.loads(patched["metadata"]["annotations"][injection.STATUS])
        assert status == {
            "version": sidegate.__version__,
            "image": spec.image,
            "mode": "native" if native else "container",
            "configHash": injection.config_hash(spec),
            "containers": ["sidegate"],
            "volumes": ["sidegate-token", "sidegate-spool"],
        }

        # Injecting twice changes nothing: the second answer carries no patch at all.
        _response, again = await admission.admit(listener, ca, patched)
        assert again == []


@pytest.mark.asyncio
async def test_pods_not_asking_are_admitted_untouched(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        for labels in (None, {injection.LABEL: "false"}, {"other": "true"}):
            _response, ops = await admission.admit(listener, ca, admission.pod(labels))
            assert ops == []
        # The annotation of earlier versions no longer asks (the API server filters on the
        # label, so such a pod is not even sent; if it were, it stays untouched).
        old_style = admission.pod(annotations={injection.LABEL: "true"})
        _response, ops = await admission.admit(listener, ca, old_style)
        assert ops == []


@pytest.mark.asyncio
async def test_an_app_setting_its_own_base_url_keeps_it(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    original = admission.pod({injection.LABEL: "true"})
    original["spec"]["containers"][0]["env"].append(
        {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:4000/v1/custom"}
    )
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        _response, ops = await admission.admit(listener, ca, original)
    app = jsonpatch.apply_patch(original, ops)["spec"]["containers"][0]
    values = [e["value"] for e in app["env"] if e["name"] == "OPENAI_BASE_URL"]
    assert values == ["http://127.0.0.1:4000/v1/custom"]


def app_mounting(volume: str) -> dict[str, Any]:
    pod = admission.pod({injection.LABEL: "true"})
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": volume, "mountPath": "/x"}]
    return pod


def token_volume(audience: str) -> dict[str, Any]:
    pod = admission.pod({injection.LABEL: "true"})
    source = {"serviceAccountToken": {"audience": audience, "path": "t"}}
    pod["spec"]["volumes"] = [{"name": "mine", "projected": {"sources": [source]}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "mine", "mountPath": "/t"}]
    return pod


def with_spec(**fields: Any) -> dict[str, Any]:
    pod = admission.pod({injection.LABEL: "true"})
    pod["spec"].update(fields)
    return pod


def app_with(**fields: Any) -> dict[str, Any]:
    pod = admission.pod({injection.LABEL: "true"})
    pod["spec"]["containers"][0].update(fields)
    return pod


def with_volume(volume: dict[str, Any]) -> dict[str, Any]:
    pod = admission.pod({injection.LABEL: "true"})
    pod["spec"]["volumes"] = [volume]
    return pod


REFUSED = {
    "hostNetwork": (with_spec(hostNetwork=True), "hostNetwork"),
    "hostPID": (with_spec(hostPID=True), "hostPID"),
    "hostIPC": (with_spec(hostIPC=True), "hostIPC"),
    "shareProcessNamespace": (with_spec(shareProcessNamespace=True), "shareProcessNamespace"),
    "app mounts the token volume": (app_mounting("sidegate-token"), "'sidegate-token'"),
    "app mounts the spool": (app_mounting("sidegate-spool"), "'sidegate-spool'"),
    "a second token for the broker": (token_volume("sidegate"), "audience 'sidegate'"),
    # The kubelet's pod directory, with the token file, is on the node's disk.
    "a hostPath volume": (with_volume({"name": "n", "hostPath": {"path": "/"}}), "hostPath"),
    "an inline CSI volume": (with_volume({"name": "c", "csi": {"driver": "x.io"}}), "csi"),
    "a privileged app": (app_with(securityContext={"privileged": True}), "privileged"),
    "an app adding capabilities": (
        app_with(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}}),
        "adds capabilities",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.asyncio
async def test_a_pod_that_would_expose_the_sidecar_is_refused(
    listener: running.WebhookListener, ca: trustme.CA, case: str
) -> None:
    """Refused, not created without the sidecar: by /inject with a reason, and by /guard
    (after every mutation) for the same pod with the sidecar put in some other way."""
    original, reason = REFUSED[case]
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        response, ops = await admission.admit(listener, ca, original, allowed=False)
        assert ops == []
        assert response["status"]["code"] == 400
        assert reason in response["status"]["message"]
        injected = injection.apply(original, injection.inject(original, PLAIN))
        response, _ops = await admission.admit(
            listener, ca, injected, allowed=False, path=webhook.GUARD_ID
        )
        assert response["status"]["code"] == 403 and reason in response["status"]["message"]


@pytest.mark.asyncio
async def test_the_guard_admits_what_does_not_reach_the_sidecar(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    """Control cases: an injected pod, a pod without Sidegate (hostNetwork is none of its
    business), a token for another audience, an ephemeral container beside the app, an exec
    into the app."""
    injected = injection.apply(
        admission.pod({injection.LABEL: "true"}),
        injection.inject(admission.pod({injection.LABEL: "true"}), PLAIN),
    )
    plain = admission.pod()
    plain["spec"]["hostNetwork"] = True
    other_audience = token_volume("vault")
    debug = copy.deepcopy(injected)
    debug["spec"]["ephemeralContainers"] = [
        {"name": "debug", "image": "busybox", "targetContainerName": "app"}
    ]
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        for pod in (injected, plain, injection.apply(other_audience, {})):
            await admission.admit(listener, ca, pod, path=webhook.GUARD_ID)
        await admission.admit(
            listener,
            ca,
            debug,
            path=webhook.GUARD_ID,
            operation="UPDATE",
            subresource="ephemeralcontainers",
            old=injected,
        )
        await admission.admit(
            listener,
            ca,
            exec_options("app"),
            path=webhook.GUARD_ID,
            operation="CONNECT",
            subresource="exec",
        )


def exec_options(container: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PodExecOptions",
        "container": container,
        "command": ["sh"],
        "stdin": True,
        "tty": True,
    }


@pytest.mark.asyncio
async def test_no_debugging_container_or_exec_reaches_the_sidecar(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    injected = injection.apply(
        admission.pod({injection.LABEL: "true"}),
        injection.inject(admission.pod({injection.LABEL: "true"}), PLAIN),
    )
    targeting = copy.deepcopy(injected)
    targeting["spec"]["ephemeralContainers"] = [
        {"name": "debug", "image": "busybox", "targetContainerName": "sidegate"}
    ]
    mounting = copy.deepcopy(injected)
    mounting["spec"]["ephemeralContainers"] = [
        {
            "name": "debug",
            "image": "busybox",
            "volumeMounts": [{"name": "sidegate-token", "mountPath": "/t"}],
        }
    ]
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        for pod, reason in ((targeting, "targets the sidecar"), (mounting, "'sidegate-token'")):
            response, _ops = await admission.admit(
                listener,
                ca,
                pod,
                allowed=False,
                path=webhook.GUARD_ID,
                operation="UPDATE",
                subresource="ephemeralcontainers",
                old=injected,
            )
            assert reason in response["status"]["message"]
        response, _ops = await admission.admit(
            listener,
            ca,
            exec_options("sidegate"),
            allowed=False,
            path=webhook.GUARD_ID,
            operation="CONNECT",
            subresource="exec",
        )
        assert response["status"]["code"] == 403
        assert "exec into the sidecar" in response["status"]["message"]


def injected_plain() -> dict[str, Any]:
    original = admission.pod({injection.LABEL: "true"})
    return injection.apply(original, injection.inject(original, PLAIN))


def _sidecar(change: Any) -> Any:
    return lambda pod: change(pod["spec"]["initContainers"][0])


def _config(change: Any) -> Any:
    def apply(pod: dict[str, Any]) -> None:
        env = pod["spec"]["initContainers"][0]["env"][0]
        config = yaml.safe_load(env["value"]) or {}
        change(config)
        env["value"] = yaml.safe_dump(config)

    return apply


_STEAL = ["sh", "-c", "cp /var/run/sidegate/token/token /shared/"]
HAND_MADE = {
    "a postStart hook": _sidecar(
        lambda s: s.update(lifecycle={"postStart": {"exec": {"command": _STEAL}}})
    ),
    "a probe copying the token": _sidecar(
        lambda s: s["startupProbe"].update(exec={"command": _STEAL})
    ),
    "PYTHONPATH": _sidecar(lambda s: s["env"].append({"name": "PYTHONPATH", "value": "/x"})),
    "envFrom": _sidecar(lambda s: s.update(envFrom=[{"configMapRef": {"name": "mine"}}])),
    "a command": _sidecar(lambda s: s.update(command=["python"])),
    "a workingDir": _sidecar(lambda s: s.update(workingDir="/x")),
    "a mount over the package": _sidecar(
        lambda s: s["volumeMounts"].append({"name": "x", "mountPath": "/usr/local/lib"})
    ),
    "a weaker securityContext": _sidecar(
        lambda s: s["securityContext"].update(allowPrivilegeEscalation=True)
    ),
    "another image": _sidecar(lambda s: s.update(image="attacker/sidegate:evil")),
    "a broker on loopback": _config(lambda c: c.update(broker={"url": "https://127.0.0.1:1"})),
    "an identity": _config(lambda c: c.update(identity={"service_account": "other"})),
    "an unpublished key": _config(lambda c: c.update(policy={"trusted_keys": ["ed25519:x"]})),
    "the token volume as an emptyDir": lambda p: p["spec"]["volumes"].__setitem__(
        0, {"name": "sidegate-token", "emptyDir": {}}
    ),
}


@pytest.mark.parametrize("case", sorted(HAND_MADE))
@pytest.mark.asyncio
async def test_a_hand_made_sidecar_is_refused(
    listener: running.WebhookListener, ca: trustme.CA, case: str
) -> None:
    """A namespace admin writes the sidecar themselves (no annotation, or after the
    injection): only the injector's container passes; the API server's defaults are no
    difference."""
    defaulted = injected_plain()
    sidecar = defaulted["spec"]["initContainers"][0]
    sidecar.update(terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File")
    sidecar["livenessProbe"].update(successThreshold=1, failureThreshold=3)
    hand_made = injected_plain()
    HAND_MADE[case](hand_made)
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        await admission.admit(listener, ca, defaulted, path=webhook.GUARD_ID)
        response, _ops = await admission.admit(
            listener, ca, hand_made, allowed=False, path=webhook.GUARD_ID
        )
        assert response["status"]["code"] == 403
        assert "sidegate" in response["status"]["message"]


@pytest.mark.asyncio
async def test_a_running_pods_sidecar_cannot_be_changed(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    """Kubernetes lets a container's image be updated in place: not the sidecar's. The app's
    own image may change (the control case)."""
    running_pod = injected_plain()
    new_sidecar = copy.deepcopy(running_pod)
    new_sidecar["spec"]["initContainers"][0]["image"] = "attacker/sidegate:evil"
    new_app = copy.deepcopy(running_pod)
    new_app["spec"]["containers"][0]["image"] = "registry.invalid/app:2"
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=PLAIN):
        response, _ops = await admission.admit(
            listener,
            ca,
            new_sidecar,
            allowed=False,
            path=webhook.GUARD_ID,
            operation="UPDATE",
            old=running_pod,
        )
        assert response["status"]["code"] == 403
        assert "cannot change on a running pod" in response["status"]["message"]
        await admission.admit(
            listener, ca, new_app, path=webhook.GUARD_ID, operation="UPDATE", old=running_pod
        )


@pytest.mark.asyncio
async def test_a_pod_overrides_its_sidecar_within_the_charts_bounds(
    listener: running.WebhookListener, ca: trustme.CA
) -> None:
    """sidegate.io/sidecar-* annotations through the webhook: applied within the bounds and
    admitted by the guard as the API server then sends the pod (quantities canonical); a bad
    one refused with its name, before anything is created."""
    spec = dataclasses.replace(PLAIN, bounds=overrides.Bounds(max_cpu="2", max_memory="2Gi"))
    asked = admission.pod(
        {injection.LABEL: "true"},
        {
            overrides.CPU: "0.5",
            overrides.MEMORY: "300Mi",
            overrides.MEMORY_LIMIT: "1Gi",
            overrides.LOG_LEVEL: "debug",
        },
    )
    async with cluster() as (_k8s, url), operator(url, listener, sidecar=spec):
        _response, ops = await admission.admit(listener, ca, asked)
        patched = jsonpatch.apply_patch(copy.deepcopy(asked), ops)
        validate(patched)
        sidecar = patched["spec"]["initContainers"][0]
        assert sidecar["resources"] == {
            "requests": {"cpu": "0.5", "memory": "300Mi"},
            "limits": {"memory": "1Gi"},
        }
        config = yaml.safe_load(sidecar["env"][0]["value"])
        assert config["logging"] == {"level": "DEBUG"}
        stored = copy.deepcopy(patched)
        stored["spec"]["initContainers"][0]["resources"]["requests"]["cpu"] = "500m"
        await admission.admit(listener, ca, stored, path=webhook.GUARD_ID)

        too_much = admission.pod({injection.LABEL: "true"}, {overrides.CPU_LIMIT: "3"})
        response, ops = await admission.admit(listener, ca, too_much, allowed=False)
        assert ops == [] and response["status"]["code"] == 400
        assert response["status"]["message"] == (
            "sidegate: sidegate.io/sidecar-cpu-limit: '3' is above the cluster's maximum of 2"
        )
