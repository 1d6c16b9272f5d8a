"""What the broker serves, built from the release namespace's objects, and who waits for it.

The watches feed every Secret and ConfigMap event in here; only the objects of the contract
are kept (their names below), everything else (the operator's signing key, the source
Secrets) is dropped on arrival. After each change every served namespace's answer is built
once, as the bytes sent to every sidecar of that namespace, and the sidecars waiting on a
long-poll for that namespace are woken if their answer changed.

A namespace is served when its bundle Secret exists. Provider keys and the Redis settings
are the same for every served namespace; the admin token is the namespace's own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sidegate.broker import pods
from sidegate.policy import delivery

logger = logging.getLogger(__name__)

BUNDLE_PREFIX = "sidegate-bundle-"
BUNDLE_LABEL = "sidegate.io/bundle-for"
BUNDLE_KEY = "bundle.json"
ADMIN_PREFIX = "sidegate-admin-"
ADMIN_LABEL = "sidegate.io/admin-for"
CREDENTIALS = "sidegate-credentials"
REDIS = "sidegate-redis"
SIGNING_PUBLIC = "sidegate-signing-public"
TRUSTED_KEYS = "trusted_keys"

SECRETS, CONFIGMAPS = "secrets", "configmaps"


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    version: str
    body: bytes


def _decoded(data: Mapping[str, Any] | None) -> dict[str, str]:
    """A Secret's data as text; a value that is not base64 UTF-8 is left out (and logged by
    its key, never its content)."""
    found = {}
    for key, value in (data or {}).items():
        try:
            found[str(key)] = base64.b64decode(str(value), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            logger.error("a Secret value is not base64 UTF-8 text", extra={"key": key})
    return found


def _owner(obj: Mapping[str, Any], prefix: str, label: str) -> str | None:
    """The namespace a per-namespace object is for: its label, when its name agrees."""
    metadata = obj.get("metadata") or {}
    namespace = (metadata.get("labels") or {}).get(label)
    if isinstance(namespace, str) and metadata.get("name") == prefix + namespace:
        return namespace
    return None


class Contents:
    def __init__(self) -> None:
        self._objects: dict[str, dict[str, Mapping[str, Any]]] = {SECRETS: {}, CONFIGMAPS: {}}
        self._snapshots: dict[str, Snapshot] = {}
        self._inputs: dict[str, tuple[Any, ...]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self.synced: set[str] = set()
        self.trusted_keys: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.synced == {SECRETS, CONFIGMAPS}

    @property
    def namespaces(self) -> int:
        return len(self._snapshots)

    @staticmethod
    def _wanted(kind: str, name: str) -> bool:
        if kind == CONFIGMAPS:
            return name == SIGNING_PUBLIC
        return name in (CREDENTIALS, REDIS) or name.startswith((BUNDLE_PREFIX, ADMIN_PREFIX))

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """A fresh list of ``kind``: what it does not hold any more is gone."""
        kept = {}
        for obj in objects:
            name = str((obj.get("metadata") or {}).get("name"))
            if self._wanted(kind, name):
                kept[name] = obj
        self._objects[kind] = kept
        self.synced.add(kind)
        self._rebuild()

    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED; BOOKMARK carries no object)."""
        name = str((obj.get("metadata") or {}).get("name"))
        if not self._wanted(kind, name):
            return
        if event == "DELETED":
            if self._objects[kind].pop(name, None) is None:
                return
        elif event in ("ADDED", "MODIFIED"):
            if self._objects[kind].get(name) == obj:
                return  # a watch replays what the list already gave
            self._objects[kind][name] = obj
        else:
            return
        self._rebuild()

    def _rebuild(self) -> None:
        secrets, configmaps = self._objects[SECRETS], self._objects[CONFIGMAPS]
        public = configmaps.get(SIGNING_PUBLIC, {}).get("data") or {}
        self.trusted_keys = pods.published_keys(public.get(TRUSTED_KEYS))
        credentials = _decoded(secrets.get(CREDENTIALS, {}).get("data"))
        redis_data = _decoded(secrets.get(REDIS, {}).get("data")) if REDIS in secrets else None
        redis = (
            (redis_data["url"], redis_data.get("password"))
            if redis_data and "url" in redis_data
            else None
        )
        admin: dict[str, list[str]] = {}
        bundles: dict[str, str] = {}
        for obj in secrets.values():
            if (namespace := _owner(obj, ADMIN_PREFIX, ADMIN_LABEL)) is not None:
                tokens = _decoded(obj.get("data"))
                admin[namespace] = [
                    t for t in (tokens.get("token"), tokens.get("token.previous")) if t
                ]
            elif (namespace := _owner(obj, BUNDLE_PREFIX, BUNDLE_LABEL)) is not None:
                envelope = (obj.get("data") or {}).get(BUNDLE_KEY)
                if isinstance(envelope, str):
                    bundles[namespace] = envelope
        shared = (tuple(sorted(credentials.items())), redis)
        snapshots = {}
        for namespace, envelope in bundles.items():
            inputs = (shared, envelope, tuple(admin.get(namespace, [])))
            if self._inputs.get(namespace) == inputs:  # unchanged: no need to encode again
                snapshots[namespace] = self._snapshots[namespace]
                continue
            self._inputs[namespace] = inputs
            version, body = delivery.build(
                namespace,
                credentials=credentials,
                bundle=envelope,
                admin_tokens=admin.get(namespace, []),
                redis=redis,
            )
            snapshots[namespace] = Snapshot(version, body)
        old, self._snapshots = self._snapshots, snapshots
        for namespace in set(self._inputs) - set(snapshots):
            del self._inputs[namespace]
        for namespace in set(old) | set(snapshots):
            if old.get(namespace) != snapshots.get(namespace):
                event = self._changed.pop(namespace, None)
                if event is not None:
                    event.set()  # wakes every long-poll of the namespace at once

    def snapshot(self, namespace: str) -> Snapshot | None:
        return self._snapshots.get(namespace)

    async def next_snapshot(self, namespace: str, after: str, wait: float) -> Snapshot | None:
        """The namespace's answer once its version is not ``after``, or None after ``wait``
        seconds of no change (the caller answers 304). Raises LookupError when the namespace
        is not (or no longer) served."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            found = self._snapshots.get(namespace)
            if found is None:
                raise LookupError(namespace)
            if found.version != after:
                return found
            event = self._changed.setdefault(namespace, asyncio.Event())
            try:
                async with asyncio.timeout_at(deadline):
                    await event.wait()
            except TimeoutError:
                return None
