"""The sidecar injection: an annotated pod → the same pod with Sidegate in it (pure, no I/O).

``inject(pod, spec)`` returns the fields of the pod it changes. It is a fixed point:
injecting an injected pod returns the same fields, so the webhook's JSON patch is empty the
second time (and after a retried admission call). The webhook handler and any future
``sidegate inject`` command share this one builder.

The sidecar gets its config through an environment variable (no ConfigMap to copy into every
namespace), its bundle, credentials and admin token through projected Secret volumes
(``optional``: a namespace without policies yet still starts its pods, and the sidecar
denies everything until a bundle arrives), and who it serves through the downward API.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

ANNOTATION = "sidegate.io/inject"
INJECTED = "sidegate.io/injected"
CONTAINER = "sidegate"
CONFIG_ENV = "SIDEGATE_CONFIG"
MOUNT_ROOT = "/var/run/sidegate"
SPOOL = "/var/lib/sidegate"
UID = 65532  # the image's non-root user (Dockerfile)

# The sidecar listens on loopback only, so the kubelet cannot reach it over HTTP: the probes
# run inside the container and ask /healthz on 127.0.0.1. Not /readyz: that one is false
# while any configured provider lacks a key or no bundle has arrived yet, and neither should
# keep the pod from starting (the sidecar denies, or answers 503 for that provider, and
# says so in its log, /readyz and metrics).
_PROBE = (
    "import sys, urllib.request; "
    "sys.exit(urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"
)


@dataclasses.dataclass(frozen=True)
class SidecarSpec:
    """What the injector puts in a pod: the operator's flags, from the Helm values."""

    image: str
    config: str  # the sidecar's YAML config, paths under MOUNT_ROOT and SPOOL
    port: int = 4000
    native: bool = True  # an init container with restartPolicy Always (Kubernetes >= 1.29)
    image_pull_policy: str = "IfNotPresent"
    bundle_secret: str = "sidegate-bundle"  # noqa: S105 - a Secret object's name, not a secret
    credentials_secret: str = "sidegate-credentials"  # noqa: S105 - likewise
    admin_secret: str = "sidegate-admin"  # noqa: S105 - likewise
    resources: Mapping[str, Mapping[str, str]] = dataclasses.field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }
    )


def wants_injection(annotations: Mapping[str, str] | None) -> bool:
    return (annotations or {}).get(ANNOTATION, "").lower() == "true"


def refusal(pod: Mapping[str, Any]) -> str | None:
    """Why a pod that asks for the sidecar must not get it, if it must not."""
    if (pod.get("spec") or {}).get("hostNetwork"):
        # The sidecar's 127.0.0.1 would be the node's: every host-network process on the node
        # could spend the provider keys through it.
        return (
            "sidegate: a hostNetwork pod cannot have the sidecar (its loopback port would be "
            "the node's); remove hostNetwork or the sidegate.io/inject annotation"
        )
    return None


def volumes(spec: SidecarSpec) -> list[dict[str, Any]]:
    def projected(name: str, secret: str) -> dict[str, Any]:
        return {
            "name": name,
            "projected": {
                "defaultMode": 0o440,
                "sources": [{"secret": {"name": secret, "optional": True}}],
            },
        }

    return [
        projected("sidegate-bundle", spec.bundle_secret),
        projected("sidegate-credentials", spec.credentials_secret),
        projected("sidegate-admin", spec.admin_secret),
        {"name": "sidegate-spool", "emptyDir": {"sizeLimit": "256Mi"}},
    ]


def container(spec: SidecarSpec) -> dict[str, Any]:
    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}

    probe = {
        "exec": {"command": ["python", "-c", _PROBE.format(port=spec.port)]},
        "timeoutSeconds": 3,
    }
    built: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": ["sidecar", "--config-env", CONFIG_ENV],
        "env": [
            {"name": CONFIG_ENV, "value": spec.config},
            {"name": "SIDEGATE_NAMESPACE", **field("metadata.namespace")},
            {"name": "SIDEGATE_SERVICE_ACCOUNT", **field("spec.serviceAccountName")},
            {"name": "SIDEGATE_POD_NAME", **field("metadata.name")},
        ],
        "resources": copy.deepcopy(dict(spec.resources)),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "sidegate-bundle", "mountPath": f"{MOUNT_ROOT}/bundle", "readOnly": True},
            {
                "name": "sidegate-credentials",
                "mountPath": f"{MOUNT_ROOT}/credentials",
                "readOnly": True,
            },
            {"name": "sidegate-admin", "mountPath": f"{MOUNT_ROOT}/admin", "readOnly": True},
            {"name": "sidegate-spool", "mountPath": SPOOL},
        ],
        # Native sidecars gate the app containers on the startup probe: the app never
        # starts before its proxy answers.
        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": {**probe, "periodSeconds": 30},
    }
    if spec.native:
        built["restartPolicy"] = "Always"
    return built


# Not a key: the official SDKs refuse to start without one, and the sidecar replaces
# whatever the app sends with the real key.
PLACEHOLDER_KEY = "sidegate-adds-the-key"


def app_environment(spec: SidecarSpec) -> list[dict[str, str]]:
    """What the official SDKs read: base URL and key. An app that sets its own keeps it."""
    return [
        {"name": "OPENAI_BASE_URL", "value": f"http://127.0.0.1:{spec.port}/v1"},
        {"name": "ANTHROPIC_BASE_URL", "value": f"http://127.0.0.1:{spec.port}"},
        {"name": "OPENAI_API_KEY", "value": PLACEHOLDER_KEY},
        {"name": "ANTHROPIC_API_KEY", "value": PLACEHOLDER_KEY},
    ]


def _with_env(app: Mapping[str, Any], extra: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    updated = dict(app)
    env = list(app.get("env") or [])
    present = {item.get("name") for item in env}
    env.extend(dict(item) for item in extra if item["name"] not in present)
    updated["env"] = env
    return updated


def inject(pod: Mapping[str, Any], spec: SidecarSpec) -> dict[str, Any]:
    """The pod's changed fields: ``metadata.annotations`` and ``spec`` containers, init
    containers and volumes. A sidecar already there is replaced by the current one."""
    pod_spec = pod.get("spec") or {}
    ours = container(spec)
    init = [c for c in pod_spec.get("initContainers") or [] if c.get("name") != CONTAINER]
    apps = [c for c in pod_spec.get("containers") or [] if c.get("name") != CONTAINER]
    apps = [_with_env(app, app_environment(spec)) for app in apps]
    if spec.native:
        init = [ours, *init]  # first, so later init containers can call the API too
    else:
        apps = [*apps, ours]
    ours_volumes = volumes(spec)
    names = {v["name"] for v in ours_volumes}
    kept = [v for v in pod_spec.get("volumes") or [] if v.get("name") not in names]
    annotations = dict((pod.get("metadata") or {}).get("annotations") or {})
    annotations[INJECTED] = "true"
    changed: dict[str, Any] = {
        "metadata": {"annotations": annotations},
        "spec": {"containers": apps, "volumes": [*kept, *ours_volumes]},
    }
    if init:
        changed["spec"]["initContainers"] = init
    return changed


def apply(pod: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The injected pod (for ``sidegate inject`` and tests)."""
    result = copy.deepcopy(dict(pod))
    for section, fields in changes.items():
        result[section] = {**(result.get(section) or {}), **copy.deepcopy(dict(fields))}
    return result
