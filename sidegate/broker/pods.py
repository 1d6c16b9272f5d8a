"""Is this pod one the broker may serve? The pod check of DESIGN.md invariant 8 (pure).

A valid token proves only that the kubelet mounted it into some container of the pod. Whoever
can create pods in a namespace can mount a token for any audience into any container, and
can set any label or annotation. So the broker reads the pod's spec and serves it only when
the token can have reached nothing but an injected sidecar:

* the pod is the one the token is bound to (same uid) and has not terminated;
* a container named ``sidegate`` (a native sidecar: an init container with restartPolicy
  Always, or a regular container) runs the broker's configured image with the injector's
  exact arguments and no command override, and its config trusts only published bundle
  keys, at least one (a sidecar trusting another key would accept bundles the operator never
  signed; a subset is fine: a pod created before a signing key was added carries the
  shorter list the webhook injected then, and rotation adds a key before it activates it);
* no other container (init, regular or ephemeral) mounts the ``sidegate-token`` volume or any
  other volume projecting a token for the broker's audience, and no ephemeral container
  targets the sidecar's processes;
* the pod shares no process namespace, and neither the host's PID nor network namespace.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from sidegate.policy import delivery

CONTAINER = "sidegate"
TOKEN_VOLUME = "sidegate-token"  # noqa: S105  # a volume name, not a secret
ARGS = ("sidecar", "--config-env", "SIDEGATE_CONFIG")
CONFIG_ENV = "SIDEGATE_CONFIG"
_TERMINATED = frozenset({"Succeeded", "Failed"})


@dataclasses.dataclass(frozen=True)
class Expectations:
    """What an injected sidecar looks like, from the broker's flags and the published keys."""

    image: str
    audience: str
    trusted_keys: tuple[str, ...]


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


def _config_trusted_keys(container: Mapping[str, Any]) -> list[Any] | None:
    values = [e for e in container.get("env") or [] if e.get("name") == CONFIG_ENV]
    if len(values) != 1 or "value" not in values[0] or values[0].get("valueFrom"):
        return None
    try:
        config = yaml.safe_load(values[0]["value"])
    except yaml.YAMLError:
        return None
    policy = config.get("policy") if isinstance(config, dict) else None
    keys = policy.get("trusted_keys") if isinstance(policy, dict) else None
    return keys if isinstance(keys, list) else None


def _trusts_only_published(keys: list[Any] | None, published: Sequence[str]) -> bool:
    return bool(keys) and all(isinstance(k, str) and k in published for k in keys or ())


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
    if sidecar.get("image") != expected.image:
        raise _not_injected("the sidecar container runs another image")
    if sidecar.get("command") or tuple(sidecar.get("args") or ()) != ARGS:
        raise _not_injected("the sidecar container runs another command")
    if not _trusts_only_published(_config_trusted_keys(sidecar), expected.trusted_keys):
        raise _not_injected("the sidecar's config trusts a key the operator did not publish")
    tokens = _token_volumes(spec, expected.audience)
    for kind, container in _containers(spec):
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
