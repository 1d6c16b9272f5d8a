"""The sidecar injection: a labelled pod (``sidegate.io/inject: "true"``) → the same pod
with Sidegate in it, and the rules that refuse a pod whose other containers could reach the
sidecar's secrets (pure, no I/O).

``inject(pod, spec)`` returns the fields of the pod it changes. It is a fixed point:
injecting an injected pod returns the same fields, so the webhook's JSON patch is empty the
second time (and after a retried admission call). The webhook handler and any future
``sidegate inject`` command share this one builder.

The sidecar gets its config through an environment variable (no ConfigMap to copy into every
namespace), with the broker's address and CA and the public keys its bundles must be signed
with; it proves who it is to the broker with a projected ServiceAccount token (audience
``sidegate``, short-lived, rotated by the kubelet) mounted in the sidecar container only.
Provider keys, the signed bundle and the admin token reach it from the broker, in memory:
nothing Sidegate-related is stored in the application's namespace. Who it serves comes from
the downward API.

``exposure(pod, audience)`` is what the webhook refuses: the sidecar's token or volumes in
another container, a token for the broker's audience anywhere else in the pod, the pod
settings that let other processes into the sidecar's (``hostPID``, ``hostIPC``,
``shareProcessNamespace``) or onto its loopback port (``hostNetwork``), and what reaches the
kubelet's pod directory, where the token file is (hostPath and inline CSI volumes, privileged
containers, added capabilities). ``hand_made(pod, spec)`` refuses a ``sidegate`` container
that is not the one ``container`` builds (a ``lifecycle`` hook, an exec probe, another
config...), and ``changed_sidecar(old, new)`` any change to it or its volumes on a running
pod. The broker checks the pod spec again before it serves anything (a pod admitted while
the webhook was off proves nothing).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

import sidegate
from sidegate.operator import overrides

# The opt-in is a label, not an annotation: the API server filters on labels
# (the webhook's objectSelector), so pods that do not ask are never sent to the webhook and an
# operator outage cannot hold them up.
LABEL = "sidegate.io/inject"
# What was injected (JSON): for people and tools only. Nothing Sidegate decides reads it back
# (the guard and the broker judge the containers and volumes): a pod's author can write any
# annotation, and the injector overwrites this one.
STATUS = "sidegate.io/status"
CONTAINER = "sidegate"
CONFIG_ENV = "SIDEGATE_CONFIG"
MOUNT_ROOT = "/var/run/sidegate"
TOKEN_VOLUME = "sidegate-token"  # noqa: S105 - a volume's name, not a secret
TOKEN_DIR = f"{MOUNT_ROOT}/token"
TOKEN_PATH = "token"  # noqa: S105 - a file name, not a secret
SPOOL_VOLUME = "sidegate-spool"
VOLUME_PREFIX = "sidegate-"
SPOOL = "/var/lib/sidegate"
UID = 65532  # the image's non-root user (Dockerfile)
# The container port of the sidecar's metrics listener (its config's `metrics` section), by
# which a PodMonitor finds it: a name of its own, so a scrape of the app's ports never picks
# it up by accident (15 characters at most, an IANA service name).
METRICS_PORT = "sidegate-prom"

# The sidecar listens on loopback only, so the kubelet cannot reach it over HTTP: the probes
# run inside the container and ask /healthz on 127.0.0.1. Not /readyz: that one is false
# until the first delivery from the broker, and a broker outage must not restart sidecars
# that still serve on what they hold (the sidecar says so in its log, /readyz and metrics).
_PROBE = (
    "import sys, urllib.request; "
    "sys.exit(urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"
)


@dataclasses.dataclass(frozen=True)
class SidecarSpec:
    """What the injector puts in a pod: the operator's flags, from the Helm values, plus what
    the operator knows at admission time (the trusted keys, the broker's CA)."""

    image: str
    config: str  # the sidecar's YAML config (from the chart), completed by ``sidecar_config``
    port: int = 4000
    native: bool = True  # an init container with restartPolicy Always (Kubernetes >= 1.29)
    image_pull_policy: str = "IfNotPresent"
    audience: str = "sidegate"  # of the projected token the broker accepts
    token_seconds: int = 600  # the token's lifetime; the kubelet renews it at 80%
    trusted_keys: tuple[str, ...] = ()  # "ed25519:..." public keys, active first
    broker_ca_pem: str | None = None  # the broker's CA certificate (PEM)
    # runAsUser/runAsGroup the image's user. False leaves them to the platform: OpenShift's
    # restricted SCC refuses a fixed uid outside the namespace's range and assigns one.
    fixed_user: bool = True
    # What a pod's sidegate.io/sidecar-* annotations may change (``overrides``).
    bounds: overrides.Bounds = dataclasses.field(default_factory=overrides.Bounds)
    resources: Mapping[str, Mapping[str, str]] = dataclasses.field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }
    )


def wants_injection(labels: Mapping[str, str] | None) -> bool:
    return (labels or {}).get(LABEL, "").lower() == "true"


def sidecar_config(spec: SidecarSpec, chosen: overrides.Overrides = overrides.NONE) -> str:
    """The chart's config with what only the operator knows filled in: the keys bundles must
    be signed with, and, with a broker section, its CA and the token's path; and the log
    level the pod chose."""
    config = yaml.safe_load(spec.config) or {}
    if not isinstance(config, dict):
        raise ValueError("the sidecar config must be a YAML mapping")
    if chosen.log_level is not None:
        config["logging"] = {**(config.get("logging") or {}), "level": chosen.log_level}
    if spec.trusted_keys:
        config["policy"] = {**(config.get("policy") or {}), "trusted_keys": [*spec.trusted_keys]}
    broker = config.get("broker")
    if isinstance(broker, dict):
        broker = {"token_file": f"{TOKEN_DIR}/{TOKEN_PATH}", **broker}
        if spec.broker_ca_pem:
            broker["ca_pem"] = spec.broker_ca_pem
        config["broker"] = broker
    return yaml.safe_dump(config, sort_keys=True)


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    spec = pod.get("spec") or {}
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for item in spec.get(kind) or []:
            yield kind, item


def _token_audiences(volume: Mapping[str, Any]) -> Iterator[str]:
    for source in (volume.get("projected") or {}).get("sources") or []:
        token = (source or {}).get("serviceAccountToken")
        if token is not None:
            yield str(token.get("audience") or "")


def carries_sidegate(pod: Mapping[str, Any], audience: str) -> bool:
    """Anything of Sidegate's in the pod: the sidecar, one of its volumes, or a token for the
    broker's audience. Pods without any are none of the webhook's business."""
    spec = pod.get("spec") or {}
    if any(c.get("name") == CONTAINER for _kind, c in _containers(pod)):
        return True
    return any(
        str(v.get("name", "")).startswith(VOLUME_PREFIX) or audience in _token_audiences(v)
        for v in spec.get("volumes") or []
    )


def _is_sidecar(kind: str, item: Mapping[str, Any]) -> bool:
    return kind in ("initContainers", "containers") and item.get("name") == CONTAINER


def exposure(pod: Mapping[str, Any], audience: str) -> str | None:
    """Why a pod with Sidegate in it would let something other than the sidecar reach the
    sidecar's token, memory or port, if it would."""
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        # The sidecar's 127.0.0.1 would be the node's: every host-network process on the node
        # could spend the provider keys through it.
        return "a hostNetwork pod cannot have the sidecar (its loopback port would be the node's)"
    if spec.get("hostPID"):
        return "a hostPID pod cannot have the sidecar (node processes could read its memory)"
    if spec.get("hostIPC"):
        return "a hostIPC pod cannot have the sidecar (it would share the node's IPC namespace)"
    if spec.get("shareProcessNamespace"):
        return (
            "a pod with shareProcessNamespace cannot have the sidecar (the other containers "
            "could read its memory and environment through /proc)"
        )
    for kind, item in _containers(pod):
        if _is_sidecar(kind, item):
            continue
        name = item.get("name")
        for mount in item.get("volumeMounts") or []:
            if str(mount.get("name", "")).startswith(VOLUME_PREFIX):
                return f"container {name!r} mounts {mount.get('name')!r}: only the sidecar may"
        if kind == "ephemeralContainers" and item.get("targetContainerName") == CONTAINER:
            return f"ephemeral container {name!r} targets the sidecar (it would see its memory)"
    for _kind, item in _containers(pod):
        # The kubelet's pod directory (the token file in it) is on the node: a privileged
        # container or one with added capabilities can reach it.
        context = item.get("securityContext") or {}
        if context.get("privileged"):
            return f"container {item.get('name')!r} is privileged (it could reach the token)"
        if (context.get("capabilities") or {}).get("add"):
            return f"container {item.get('name')!r} adds capabilities (it could reach the token)"
    for volume in spec.get("volumes") or []:
        for source in ("hostPath", "csi"):
            if source in volume:
                return (
                    f"volume {volume.get('name')!r} is a {source} volume (the node's files "
                    "hold the sidecar's token)"
                )
        if volume.get("name") != TOKEN_VOLUME and audience in _token_audiences(volume):
            return (
                f"volume {volume.get('name')!r} projects a token for audience {audience!r}: "
                "only the sidecar's own token volume may"
            )
    return None


# What the API server fills in when the injector leaves a field out: not a difference.
_DEFAULTED = {"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}
_PROBE_DEFAULTS = {
    "initialDelaySeconds": 0,
    "timeoutSeconds": 1,
    "periodSeconds": 10,
    "successThreshold": 1,
    "failureThreshold": 3,
}


def _amount(value: Any) -> Any:
    try:
        return overrides.quantity(str(value))
    except ValueError:
        return value


def _canonical(item: Mapping[str, Any]) -> dict[str, Any]:
    """A container without the API server's defaults, its config parsed (so the YAML's
    layout is no difference)."""
    found = copy.deepcopy(dict(item))
    for field, value in _DEFAULTED.items():
        if found.get(field) == value:
            del found[field]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if isinstance(found.get(probe), dict):
            found[probe] = {k: v for k, v in found[probe].items() if _PROBE_DEFAULTS.get(k) != v}
    if isinstance(found.get("resources"), dict):
        # The API server stores quantities in canonical form ("0.5" becomes "500m").
        found["resources"] = {
            kind: {name: _amount(value) for name, value in (amounts or {}).items()}
            for kind, amounts in found["resources"].items()
        }
    for variable in found.get("env") or []:
        if variable.get("name") == CONFIG_ENV and isinstance(variable.get("value"), str):
            # Not YAML: compared as text, it differs from the injector's.
            with contextlib.suppress(yaml.YAMLError):
                variable["value"] = yaml.safe_load(variable["value"])
    return found


def _trusted_keys(item: Mapping[str, Any]) -> list[str] | None:
    values = [v for v in item.get("env") or [] if v.get("name") == CONFIG_ENV]
    config = _canonical({"env": values[:1]})["env"][0].get("value") if len(values) == 1 else None
    if not isinstance(config, dict):
        return None
    keys = (config.get("policy") or {}).get("trusted_keys") or []
    return keys if isinstance(keys, list) and all(isinstance(k, str) for k in keys) else None


def _without_assigned_user(item: Mapping[str, Any]) -> dict[str, Any]:
    """The container without the non-root user the platform gave it (OpenShift's SCC
    admission sets runAsUser, and may set runAsGroup, before the webhooks see the pod)."""
    found = copy.deepcopy(dict(item))
    context = found.get("securityContext") or {}
    if context.get("runAsUser") != 0 and context.get("runAsGroup") != 0:
        context.pop("runAsUser", None)
        context.pop("runAsGroup", None)
    return found


def hand_made(pod: Mapping[str, Any], spec: SidecarSpec) -> str | None:
    """Why a container named ``sidegate`` is not the one the injector builds from ``spec``,
    if it is not (a pod with its signing keys from before a key was added is fine: rotation
    adds a key before it signs with it)."""
    found = [(kind, item) for kind, item in _containers(pod) if item.get("name") == CONTAINER]
    if not found:
        return None
    if len(found) != 1 or found[0][0] == "ephemeralContainers":
        return f"only the injector's one {CONTAINER!r} container may be in the pod"
    kind, item = found[0]
    if (kind == "initContainers") != spec.native:
        return f"the {CONTAINER!r} container is not where the injector puts it"
    keys = _trusted_keys(item)
    if keys is None or not set(keys) <= set(spec.trusted_keys):
        return f"the {CONTAINER!r} container trusts a key the operator did not publish"
    try:
        chosen = overrides.parse(_annotations(pod), spec.bounds)
        wanted = container(dataclasses.replace(spec, trusted_keys=tuple(keys)), chosen)
    except overrides.Invalid as exc:
        return str(exc)
    if not spec.fixed_user:
        item = _without_assigned_user(item)
    if _canonical(item) != _canonical(wanted):
        return f"the {CONTAINER!r} container is not the one the injector builds"
    ours = {v["name"]: v for v in volumes(spec)}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if volume.get("name") in ours and volume != ours[volume.get("name")]:
            return f"volume {volume.get('name')!r} is not the one the injector builds"
    return None


def _sidecar_parts(pod: Mapping[str, Any]) -> list[Any]:
    spec = pod.get("spec") or {}
    return [
        [item for kind, item in _containers(pod) if _is_sidecar(kind, item)],
        [v for v in spec.get("volumes") or [] if str(v.get("name", "")).startswith(VOLUME_PREFIX)],
    ]


def changed_sidecar(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """Why an update of a running pod changes its sidecar or the volumes behind it, if it
    does (Kubernetes lets a pod's container images be updated in place)."""
    if _sidecar_parts(old) != _sidecar_parts(new):
        return f"the {CONTAINER!r} container and its volumes cannot change on a running pod"
    return None


def _annotations(pod: Mapping[str, Any]) -> dict[str, str]:
    return dict((pod.get("metadata") or {}).get("annotations") or {})


def refusal(pod: Mapping[str, Any], spec: SidecarSpec) -> str | None:
    """Why a pod that asks for the sidecar must not get it, if it must not: a bad override
    annotation, or the pod as it would be once injected exposing the sidecar."""
    try:
        reason = exposure(apply(pod, inject(pod, spec)), spec.audience)
    except overrides.Invalid as exc:
        return f"sidegate: {exc}"
    if reason is None:
        return None
    return f"sidegate: {reason}; change the pod or remove the {LABEL} label"


def volumes(spec: SidecarSpec) -> list[dict[str, Any]]:
    return [
        {
            "name": TOKEN_VOLUME,
            "projected": {
                # The token file's owner and mode are the kubelet's (since Kubernetes 1.19):
                # 0600 owned by the runAsUser all containers share, 0640 group fsGroup when
                # the pod has one (every container has that group), else this mode. 0444 lets
                # the sidecar's user read it in that last case, so the injector need not set
                # a pod fsGroup (which would chown the app's own volumes); the volume is
                # mounted in the sidecar container only, which is what keeps it from the app.
                "defaultMode": 0o444,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": spec.audience,
                            "expirationSeconds": spec.token_seconds,
                            "path": TOKEN_PATH,
                        }
                    }
                ],
            },
        },
        {"name": SPOOL_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}},
    ]


def container(spec: SidecarSpec, chosen: overrides.Overrides = overrides.NONE) -> dict[str, Any]:
    """The sidecar container for ``spec``, with a pod's ``chosen`` overrides (``Invalid``
    when they leave a request above its limit)."""

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
            {"name": CONFIG_ENV, "value": sidecar_config(spec, chosen)},
            {"name": "SIDEGATE_NAMESPACE", **field("metadata.namespace")},
            {"name": "SIDEGATE_SERVICE_ACCOUNT", **field("spec.serviceAccountName")},
            {"name": "SIDEGATE_POD_NAME", **field("metadata.name")},
        ],
        "resources": overrides.resources(spec.resources, chosen),
        "securityContext": {
            "runAsNonRoot": True,
            **({"runAsUser": UID, "runAsGroup": UID} if spec.fixed_user else {}),
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": SPOOL_VOLUME, "mountPath": SPOOL},
        ],
        # Native sidecars gate the app containers on the startup probe: the app never
        # starts before its proxy answers.
        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": {**probe, "periodSeconds": 30},
    }
    metrics = (yaml.safe_load(spec.config) or {}).get("metrics")
    if isinstance(metrics, dict):  # validated as the sidecar would at operator start
        port = {"name": METRICS_PORT, "containerPort": metrics.get("port", 9464), "protocol": "TCP"}
        built["ports"] = [port]
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


def config_hash(spec: SidecarSpec) -> str:
    """The chart's sidecar config, hashed as parsed (its YAML layout is no difference):
    pods with another hash were injected from another ``sidecar.config``."""
    config = yaml.safe_load(spec.config) or {}
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def status(spec: SidecarSpec, chosen: overrides.Overrides) -> str:
    """The ``sidegate.io/status`` value: Sidegate's version, the image and mode, the chart
    config's hash, the pod's overrides, and the containers and volumes that are Sidegate's
    (what an uninjection would remove)."""
    found: dict[str, Any] = {
        "version": sidegate.__version__,
        "image": spec.image,
        "mode": "native" if spec.native else "container",
        "configHash": config_hash(spec),
        "containers": [CONTAINER],
        "volumes": [TOKEN_VOLUME, SPOOL_VOLUME],
    }
    if chosen.resources:
        found["resources"] = chosen.resources
    if chosen.log_level is not None:
        found["logLevel"] = chosen.log_level
    return json.dumps(found, sort_keys=True, separators=(",", ":"))


def inject(pod: Mapping[str, Any], spec: SidecarSpec) -> dict[str, Any]:
    """The pod's changed fields: ``metadata.annotations`` and ``spec`` containers, init
    containers and volumes. A sidecar already there is replaced by the current one, with
    the overrides the pod's annotations ask for (``overrides.Invalid`` if one is refused)."""
    pod_spec = pod.get("spec") or {}
    chosen = overrides.parse(_annotations(pod), spec.bounds)
    ours = container(spec, chosen)
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
    annotations[STATUS] = status(spec, chosen)
    changed: dict[str, Any] = {
        "metadata": {"annotations": annotations},
        "spec": {"containers": apps, "volumes": [*kept, *ours_volumes]},
    }
    if init:
        changed["spec"]["initContainers"] = init
    return changed


class Refused(Exception):
    """A pod that asks for the sidecar and must not get it; the message says why."""


def admit(pod: Mapping[str, Any], spec: SidecarSpec) -> dict[str, Any] | None:
    """The injection webhook's decision, and ``sidegate inject``'s: None for a pod that does
    not ask (``"false"`` or another value opts out), the changed fields (``inject``) for one
    that does, ``Refused`` for one that asks and must not get the sidecar."""
    if not wants_injection((pod.get("metadata") or {}).get("labels")):
        return None
    reason = refusal(pod, spec)
    if reason is not None:
        raise Refused(reason)
    return inject(pod, spec)


def apply(pod: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The injected pod (for ``sidegate inject`` and tests)."""
    result = copy.deepcopy(dict(pod))
    for section, fields in changes.items():
        result[section] = {**(result.get(section) or {}), **copy.deepcopy(dict(fields))}
    return result
