"""Is this pod one the broker may serve? Security invariant 8 (docs/architecture.md), pure.

A valid token proves only that the kubelet mounted it into some container of the pod. Whoever
can create pods in a namespace can mount a token for any audience into any container, and
can set any label or annotation. So the broker reads the pod's spec and serves it only when
the token can have reached nothing but an injected sidecar:

* the pod is the one the token is bound to (same uid) and has not terminated;
* a container named ``sidegate`` (a native sidecar: an init container with restartPolicy
  Always, or a regular container) is the one the injector builds, field by field (an
  allow-list: anything else the pod's author adds, such as a ``lifecycle`` hook or an exec
  probe copying the token, extra environment, ``envFrom``, another mount, a ``command`` or
  ``workingDir``, is refused): the broker's configured image with the injector's exact
  arguments, exactly the four injected variables (the downward-API ones exactly), exactly
  the token and spool mounts, the injected exec probes, exactly the injected ports (the
  metrics listener's, when the chart's config has one; never a ``hostPort``), a security
  context at least as strict as the injected one, with the injected user and group 65532
  (``userIds: fixed``, the chart's default) or, when the platform assigns them
  (``userIds: platform``), any but root's;
* its config is the operator's: the chart's sidecar config (the file the operator injects,
  ``--sidecar-config``) with the broker's own CA as ``broker.ca_pem`` and a subset of the
  published bundle keys, at least one (a sidecar trusting another key would accept bundles
  the operator never signed; a subset is fine: a pod created before a signing key was added
  carries the shorter list the webhook injected then), and ``logging.level`` may be any level
  the sidecar knows (the pod's ``sidegate.io/sidecar-log-level``: no secret reaches a log
  line at any level, security invariant 1). Nothing else may differ: a provider
  ``base_url`` or ``broker.url`` of the pod's author would receive the real keys, an
  ``identity`` section would change who the sidecar says it serves;
* the token volume projects only the broker's token, the spool is an emptyDir;
* no other container (init, regular or ephemeral) mounts the ``sidegate-token`` volume or any
  other volume projecting a token for the broker's audience, and no ephemeral container
  targets the sidecar's processes;
* the pod shares no process namespace, and neither the host's PID nor network namespace;
  no container is privileged or adds capabilities, and no volume is a hostPath or an inline
  CSI volume (each would let a container read the kubelet's pod directory, the token in it).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from sidegate.policy import delivery

CONTAINER = "sidegate"
TOKEN_VOLUME = "sidegate-token"  # noqa: S105  # a volume name, not a secret
SPOOL_VOLUME = "sidegate-spool"
TOKEN_DIR = "/var/run/sidegate/token"  # noqa: S105  # a directory, not a secret
TOKEN_FILE = f"{TOKEN_DIR}/token"
SPOOL = "/var/lib/sidegate"
ARGS = ("sidecar", "--config-env", "SIDEGATE_CONFIG")
CONFIG_ENV = "SIDEGATE_CONFIG"
# What the injector (sidegate.operator.injection.container) writes, and what the API server
# adds by default; any other field of the sidecar container is the pod author's.
_FIELDS = frozenset(
    {
        "name",
        "image",
        "imagePullPolicy",
        "args",
        "env",
        "resources",
        "ports",
        "securityContext",
        "volumeMounts",
        "startupProbe",
        "livenessProbe",
        "restartPolicy",
        "terminationMessagePath",
        "terminationMessagePolicy",
    }
)
# The injector's declared port of the sidecar's metrics listener (the config's ``metrics``
# section; sidegate.operator.injection.METRICS_PORT): a declaration only, but a ``hostPort``
# would publish a listener of the sidecar on the node, so only this exact list passes.
METRICS_PORT = "sidegate-prom"
METRICS_DEFAULT_PORT = 9464
_DEFAULTED = {"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}
_DOWNWARD = {
    "SIDEGATE_NAMESPACE": "metadata.namespace",
    "SIDEGATE_SERVICE_ACCOUNT": "spec.serviceAccountName",
    "SIDEGATE_POD_NAME": "metadata.name",
}
_MOUNTS = {(TOKEN_VOLUME, TOKEN_DIR, True), (SPOOL_VOLUME, SPOOL, False)}
_PROBE_TIMINGS = frozenset(
    {
        "timeoutSeconds",
        "periodSeconds",
        "failureThreshold",
        "successThreshold",
        "initialDelaySeconds",
    }
)
_PROBE_COMMAND_START = ["python", "-c"]
_PROBE_PORT = re.compile(r"http://127\.0\.0\.1:([0-9]+)/")
_PROBE_SCRIPT = (
    "import sys, urllib.request; "
    "sys.exit(urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"
)
_SECURITY_FIELDS = frozenset(
    {
        "runAsNonRoot",
        "runAsUser",
        "runAsGroup",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "privileged",
        "capabilities",
        "seccompProfile",
    }
)
UID = 65532  # the image's non-root user (Dockerfile), which the injector sets in fixed mode
_TERMINATED = frozenset({"Succeeded", "Failed"})
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR"})  # the sidecar's logging.level


@dataclasses.dataclass(frozen=True)
class Expectations:
    """What an injected sidecar looks like, from the broker's flags and the published keys."""

    image: str
    audience: str
    trusted_keys: tuple[str, ...]
    # The chart's sidecar config, as the operator reads it before completing it (parsed).
    config: Mapping[str, Any]
    ca_pem: str | None = None  # the broker's CA bundle, which the operator injects
    # userIds fixed: the injector set runAsUser/runAsGroup UID, so nothing else is its
    # sidecar; platform: the platform assigned them (OpenShift's SCC), any non-root id.
    fixed_user: bool = True


class Refused(Exception):
    """The pod may not be served; ``code`` is a reason code of ``delivery``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _not_injected(message: str) -> Refused:
    return Refused(delivery.POD_NOT_INJECTED, message)


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(kind) or []:
            if isinstance(container, Mapping):
                yield kind, container


def _token_volumes(spec: Mapping[str, Any], audience: str) -> set[str]:
    """Volumes that hold a token the broker would accept: ``sidegate-token`` whatever it
    holds, and any projected serviceAccountToken for the broker's audience."""
    names = {TOKEN_VOLUME}
    for volume in spec.get("volumes") or []:
        projected = volume.get("projected") if isinstance(volume, Mapping) else None
        for source in (projected or {}).get("sources") or []:
            token = source.get("serviceAccountToken") if isinstance(source, Mapping) else None
            if isinstance(token, Mapping) and token.get("audience") == audience:
                names.add(str(volume.get("name")))
    return names


def _config(container: Mapping[str, Any]) -> dict[str, Any] | None:
    values = [e for e in container.get("env") or [] if e.get("name") == CONFIG_ENV]
    if len(values) != 1 or set(values[0]) != {"name", "value"}:
        return None
    try:
        config = yaml.safe_load(values[0]["value"])
    except yaml.YAMLError:
        return None
    return config if isinstance(config, dict) else None


def _trusts_only_published(keys: Any, published: Sequence[str]) -> bool:
    return (
        isinstance(keys, list)
        and bool(keys)
        and all(isinstance(k, str) and k in published for k in keys)
    )


def _config_refusal(config: dict[str, Any] | None, expected: Expectations) -> str | None:
    """The injected config is the chart's with the keys and the CA filled in
    (``injection.sidecar_config``): rebuilt here with the pod's keys, it must be equal."""
    if config is None:
        return "the sidecar's config is not the injected value"
    keys = (
        (config.get("policy") or {}).get("trusted_keys")
        if isinstance(config.get("policy"), dict)
        else None
    )
    if not _trusts_only_published(keys, expected.trusted_keys):
        return "the sidecar's config trusts a key the operator did not publish"
    wanted = copy.deepcopy(dict(expected.config))
    wanted["policy"] = {**(wanted.get("policy") or {}), "trusted_keys": keys}
    broker = wanted.get("broker")
    if isinstance(broker, dict):
        broker = {"token_file": TOKEN_FILE, **broker}
        if expected.ca_pem:
            broker["ca_pem"] = expected.ca_pem
        wanted["broker"] = broker
    logging = config.get("logging")
    if isinstance(logging, dict) and logging.get("level") in _LOG_LEVELS:
        wanted["logging"] = {**(wanted.get("logging") or {}), "level": logging["level"]}
    if config != wanted:
        # A key set to null on one side only differs too (get() would read both as None).
        differing = sorted(
            k
            for k in {*config, *wanted}
            if k not in config or k not in wanted or config[k] != wanted[k]
        )
        return f"the sidecar's config is not the operator's ({', '.join(differing)} differ)"
    return None


def _env_refusal(env: Any) -> str | None:
    if not isinstance(env, list):
        return "the sidecar has no injected environment"
    names = [e.get("name") if isinstance(e, Mapping) else None for e in env]
    if sorted(map(str, names)) != sorted([CONFIG_ENV, *_DOWNWARD]):
        return "the sidecar's environment is not the injected one"
    for item in env:
        path = _DOWNWARD.get(item["name"])
        if path is None:
            continue
        source = item.get("valueFrom")
        ref = source.get("fieldRef") if isinstance(source, Mapping) else None
        if (
            set(item) != {"name", "valueFrom"}
            or set(source) != {"fieldRef"}
            or not isinstance(ref, Mapping)
            or ref.get("fieldPath") != path
            or ref.get("apiVersion", "v1") != "v1"
            or not set(ref) <= {"fieldPath", "apiVersion"}
        ):
            return f"the sidecar's {item['name']} is not the downward API's {path}"
    return None


def _is_injected_probe(probe: Any) -> bool:
    if not isinstance(probe, Mapping) or not set(probe) <= {"exec", *_PROBE_TIMINGS}:
        return False
    action = probe.get("exec")
    command = action.get("command") if isinstance(action, Mapping) else None
    if not (
        isinstance(action, Mapping)
        and set(action) == {"command"}
        and isinstance(command, list)
        and len(command) == 3
        and command[:2] == _PROBE_COMMAND_START
    ):
        return False
    port = _probe_port(command[2])  # the injector always names one
    return port is not None and command[2] == _PROBE_SCRIPT.format(port=port)


def _probe_port(script: Any) -> str | None:
    """The port the probe script names (the sidecar's listen port, from the chart)."""
    found = _PROBE_PORT.search(script) if isinstance(script, str) else None
    return found.group(1) if found else None


def _security_refusal(context: Any, fixed_user: bool) -> str | None:
    if not isinstance(context, Mapping) or not set(context) <= _SECURITY_FIELDS:
        return "the sidecar's securityContext is not the injected one"
    ids = (context.get("runAsUser"), context.get("runAsGroup"))
    if (fixed_user and ids != (UID, UID)) or 0 in ids:
        return "the sidecar does not run as the injected user and group"
    capabilities = context.get("capabilities")
    if (
        context.get("runAsNonRoot") is not True
        or context.get("allowPrivilegeEscalation") is not False
        or context.get("readOnlyRootFilesystem") is not True
        or context.get("privileged") not in (None, False)
        or not isinstance(capabilities, Mapping)
        or set(capabilities) != {"drop"}
        or capabilities.get("drop") != ["ALL"]
        or context.get("seccompProfile") != {"type": "RuntimeDefault"}
    ):
        return "the sidecar's securityContext is weaker than the injected one"
    return None


def _mounts_refusal(mounts: Any) -> str | None:
    if not isinstance(mounts, list) or len(mounts) != len(_MOUNTS):
        return "the sidecar's volume mounts are not the injected ones"
    found = set()
    for mount in mounts:
        if not isinstance(mount, Mapping) or not set(mount) <= {"name", "mountPath", "readOnly"}:
            return "the sidecar's volume mounts are not the injected ones"
        found.add((mount.get("name"), mount.get("mountPath"), bool(mount.get("readOnly"))))
    return None if found == _MOUNTS else "the sidecar's volume mounts are not the injected ones"


def _sidecar_refusal(sidecar: Mapping[str, Any], expected: Expectations) -> str | None:
    """The sidecar container against the injector's, field by field (module docstring)."""
    extra = sorted(set(sidecar) - _FIELDS)
    if extra:
        return f"the sidecar container sets {', '.join(extra)}, which the injector does not"
    for field, value in _DEFAULTED.items():
        if sidecar.get(field, value) != value:
            return f"the sidecar container sets {field}"
    if sidecar.get("image") != expected.image:
        return "the sidecar container runs another image"
    if tuple(sidecar.get("args") or ()) != ARGS:
        return "the sidecar container runs another command"
    if (sidecar.get("ports") or []) != _ports(expected.config):
        return "the sidecar's ports are not the injected ones"
    for probe in ("startupProbe", "livenessProbe"):
        if not _is_injected_probe(sidecar.get(probe)):
            return f"the sidecar's {probe} is not the injected one"
    return (
        _env_refusal(sidecar.get("env"))
        or _security_refusal(sidecar.get("securityContext"), expected.fixed_user)
        or _mounts_refusal(sidecar.get("volumeMounts"))
        or _config_refusal(_config(sidecar), expected)
    )


def _ports(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ports the injector declares for the chart's config: its metrics listener's, if any."""
    metrics = config.get("metrics")
    if not isinstance(metrics, Mapping):
        return []
    port = metrics.get("port", METRICS_DEFAULT_PORT)
    return [{"name": METRICS_PORT, "containerPort": port, "protocol": "TCP"}]


def _volumes_refusal(spec: Mapping[str, Any], audience: str) -> str | None:
    """The token volume projects the broker's token only, the spool is an emptyDir, and no
    volume reaches the node's filesystem (the kubelet's pod directory holds the token)."""
    for volume in spec.get("volumes") or []:
        if not isinstance(volume, Mapping):
            continue
        name = volume.get("name")
        for kind in ("hostPath", "csi"):
            if kind in volume:
                return f"volume {name!r} is a {kind} volume (it could reach the sidecar's token)"
        if name == TOKEN_VOLUME:
            sources = (volume.get("projected") or {}).get("sources") or []
            token = sources[0].get("serviceAccountToken") if len(sources) == 1 else None
            if not isinstance(token, Mapping) or token.get("audience") != audience:
                return f"volume {TOKEN_VOLUME!r} is not the injected token volume"
        if name == SPOOL_VOLUME and "emptyDir" not in volume:
            return f"volume {SPOOL_VOLUME!r} is not the injected emptyDir"
    return None


def _privilege_refusal(container: Mapping[str, Any]) -> str | None:
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        return f"container {container.get('name')!r} is privileged"
    if (context.get("capabilities") or {}).get("add"):
        return f"container {container.get('name')!r} adds capabilities"
    return None


def check(pod: Mapping[str, Any], *, uid: str, expected: Expectations) -> None:
    """Raise Refused unless the pod passes every rule in the module docstring."""
    metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if metadata.get("uid") != uid:
        raise Refused(delivery.POD_NOT_FOUND, "the token's pod no longer exists")
    if (pod.get("status") or {}).get("phase") in _TERMINATED or metadata.get("deletionTimestamp"):
        raise Refused(delivery.POD_TERMINATED, "the token's pod has terminated")
    for field in ("shareProcessNamespace", "hostPID", "hostNetwork", "hostIPC"):
        if spec.get(field):
            raise _not_injected(f"the pod sets {field}")
    sidecars = [
        (kind, c)
        for kind, c in _containers(spec)
        if c.get("name") == CONTAINER and kind != "ephemeralContainers"
    ]
    if len(sidecars) != 1:
        raise _not_injected(f"the pod has no single container named {CONTAINER!r}")
    kind, sidecar = sidecars[0]
    if kind == "initContainers" and sidecar.get("restartPolicy") != "Always":
        raise _not_injected("the sidecar init container is not a native sidecar")
    if kind == "containers" and sidecar.get("restartPolicy") is not None:
        raise _not_injected("the sidecar container sets a restartPolicy")
    reason = _sidecar_refusal(sidecar, expected) or _volumes_refusal(spec, expected.audience)
    if reason is not None:
        raise _not_injected(reason)
    tokens = _token_volumes(spec, expected.audience)
    for kind, container in _containers(spec):
        reason = _privilege_refusal(container)
        if reason is not None:
            raise _not_injected(reason)
        if container is sidecar:
            continue
        mounted = {m.get("name") for m in container.get("volumeMounts") or []}
        if mounted & tokens:
            raise _not_injected(f"container {container.get('name')!r} mounts the sidecar token")
        if kind == "ephemeralContainers" and container.get("targetContainerName") == CONTAINER:
            raise _not_injected("an ephemeral container targets the sidecar")


def published_keys(text: str | None) -> tuple[str, ...]:
    """The ``trusted_keys`` entry of the signing-public ConfigMap (a JSON list)."""
    if not text:
        return ()
    try:
        found = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(found, list) or not all(isinstance(k, str) for k in found):
        return ()
    return tuple(found)


def pod_identity(extra: Mapping[str, Sequence[str]]) -> tuple[str, str]:
    """The pod name and uid a bound token carries (TokenReview ``status.user.extra``)."""
    names = extra.get("authentication.kubernetes.io/pod-name") or []
    uids = extra.get("authentication.kubernetes.io/pod-uid") or []
    if len(names) != 1 or len(uids) != 1:
        raise Refused(delivery.NOT_POD_BOUND, "the token is not bound to a pod")
    return str(names[0]), str(uids[0])
