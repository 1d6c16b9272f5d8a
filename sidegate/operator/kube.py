"""The few Kubernetes API calls the operator makes itself (kopf covers RBACPolicy watching and
status): read, write, list, watch and delete Secrets and ConfigMaps of its own namespace, and
the RBACPolicy finalizer patch of ``sidegate operator cleanup``. Plain aiohttp against the API
server kopf logged in to.

A client lives until kopf logs in again (a 401: the token expired or was rotated); the login
handler then makes a new one and closes this one. Closed, it ends its open watches and refuses
new requests with ``aiohttp.ClientConnectionError``, which every watching loop already takes
as "list again", on the client ``OperatorState.api()`` now hands out."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import kopf

SECRETS = "secrets"  # pragma: allowlist secret - a resource name
CONFIG_MAPS = "configmaps"
# A watch the server ends after this many seconds (the API server's default is 30-60 min);
# a reconnect resumes it from the last resourceVersion.
WATCH_SECONDS = 300
# One watch event is one JSON line, up to ~1.4 MB for a full 1 MiB Secret. aiohttp's line
# reader gives up far below that, so the stream is split here.
_MAX_EVENT_BYTES = 16 * 1024 * 1024


class WatchExpired(Exception):
    """The API server no longer has the resourceVersion a watch resumed from (410 Gone): list
    again."""


class Conflict(kopf.TemporaryError):
    """The object changed (or appeared) since it was read: another writer, e.g. a second
    operator replica, was faster. The caller's handler runs again on a fresh read."""


class ApiClient:
    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self._server = info.server.rstrip("/")
        headers = {"Content-Type": "application/json"}
        if info.token:
            headers["Authorization"] = f"Bearer {info.token}"
        ca_data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        context: ssl.SSLContext | bool = (
            False
            if info.insecure
            else ssl.create_default_context(cafile=info.ca_path, cadata=ca_data)
        )
        if self._server.startswith("http://"):
            context = False  # only the test emulator is plain HTTP; kopf's own client agrees
        self._session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=context)
        )
        # Closing the session does not wake a reader of a streamed answer (it would wait for
        # its read timeout, minutes): close() closes these itself.
        self._watches: set[aiohttp.ClientResponse] = set()

    @property
    def _http(self) -> aiohttp.ClientSession:
        """The session, open. aiohttp raises RuntimeError("Session is closed") for a request
        on a closed one, which reads as a bug: here it is the connection error it is."""
        if self._session.closed:
            raise aiohttp.ClientConnectionError("API client closed: logged in again")
        return self._session

    def _url(self, namespace: str, plural: str, name: str | None = None) -> str:
        base = f"{self._server}/api/v1/namespaces/{namespace}/{plural}"
        return f"{base}/{name}" if name else base

    async def get(self, namespace: str, name: str, plural: str = SECRETS) -> dict[str, Any] | None:
        async with self._http.get(self._url(namespace, plural, name)) as answer:
            if answer.status == 404:
                return None
            if answer.status >= 400:
                raise kopf.TemporaryError(
                    f"reading {plural} {namespace}/{name}: HTTP {answer.status}", delay=5
                )
            found: dict[str, Any] = await answer.json()
            return found

    async def create(self, obj: dict[str, Any], plural: str = SECRETS) -> bool:
        """Create only; False when it exists already (someone else made it first)."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        async with self._http.post(self._url(namespace, plural), json=obj) as answer:
            if answer.status == 409:
                return False
            if answer.status >= 400:
                raise kopf.TemporaryError(
                    f"creating {plural} {namespace}/{name}: HTTP {answer.status}", delay=5
                )
            return True

    async def apply(self, obj: dict[str, Any], plural: str = SECRETS) -> None:
        """Create, or merge-patch when it exists (a 409 on create means someone was faster).
        Only for objects derived from elsewhere, never read here first (every writer writes
        the same content): a read-modify-write uses ``write``."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        async with self._http.post(self._url(namespace, plural), json=obj) as answer:
            if answer.status < 400:
                return
            if answer.status != 409:
                raise kopf.TemporaryError(
                    f"creating {plural} {namespace}/{name}: HTTP {answer.status}", delay=5
                )
        async with self._http.patch(
            self._url(namespace, plural, name),
            json=obj,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as answer:
            if answer.status >= 400:
                raise kopf.TemporaryError(
                    f"patching {plural} {namespace}/{name}: HTTP {answer.status}", delay=5
                )

    async def write(
        self,
        obj: dict[str, Any],
        based_on: Mapping[str, Any] | None,
        plural: str = SECRETS,
    ) -> None:
        """The write of a read-modify-write: create when ``based_on`` (the object as read)
        is None, else a merge patch that holds only if the object still has ``based_on``'s
        resourceVersion. Conflict (409) otherwise: nothing a concurrent writer wrote is
        lost, the caller reads again."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if based_on is None:
            if not await self.create(obj, plural):
                raise Conflict(f"{plural} {namespace}/{name} was created meanwhile", delay=1)
            return
        version = (based_on.get("metadata") or {}).get("resourceVersion")
        if not version:
            raise kopf.TemporaryError(f"{plural} {namespace}/{name} has no resourceVersion")
        body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": version}}
        async with self._http.patch(
            self._url(namespace, plural, name),
            json=body,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as answer:
            if answer.status in (404, 409):
                raise Conflict(f"{plural} {namespace}/{name} changed meanwhile", delay=1)
            if answer.status >= 400:
                raise kopf.TemporaryError(
                    f"patching {plural} {namespace}/{name}: HTTP {answer.status}", delay=5
                )

    async def delete(self, namespace: str, name: str, plural: str = SECRETS) -> bool:
        """Delete one object; False when it was not there."""
        async with self._http.delete(self._url(namespace, plural, name)) as answer:
            if answer.status == 404:
                return False
            if answer.status >= 400:
                raise kopf.TemporaryError(
                    f"deleting {plural} {namespace}/{name}: HTTP {answer.status}", delay=5
                )
            return True

    async def read(self, path: str) -> dict[str, Any] | None:
        """Any object by its API path; None when it is not there."""
        async with self._http.get(f"{self._server}{path}") as answer:
            if answer.status == 404:
                return None
            if answer.status >= 400:
                raise kopf.TemporaryError(f"reading {path}: HTTP {answer.status}", delay=5)
            found: dict[str, Any] = await answer.json()
            return found

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """A merge patch of any object by its API path; None when it is not there."""
        async with self._http.patch(
            f"{self._server}{path}",
            json=body,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as answer:
            if answer.status == 404:
                return None
            if answer.status >= 400:
                raise kopf.TemporaryError(f"patching {path}: HTTP {answer.status}", delay=5)
            found: dict[str, Any] = await answer.json()
            return found

    async def list(
        self, path: str, labels: Mapping[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object under an API path (e.g. ``/api/v1/namespaces/x/secrets``) matching the
        labels (filtered here too: a selector the server ignores must not widen the answer),
        and the list's resourceVersion."""
        params = {"labelSelector": selector(labels)} if labels else {}
        async with self._http.get(f"{self._server}{path}", params=params) as answer:
            if answer.status >= 400:
                raise kopf.TemporaryError(f"listing {path}: HTTP {answer.status}", delay=5)
            found = await answer.json()
        items = [item for item in found.get("items") or [] if matches(item, labels)]
        return items, str((found.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(
        self, namespace: str, plural: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The events of one namespace's objects after ``resource_version``, until the server
        ends the watch. WatchExpired when that version is gone (410)."""
        params = {
            "watch": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
            "allowWatchBookmarks": "true",
        }
        if resource_version:
            params["resourceVersion"] = resource_version
        timeout = aiohttp.ClientTimeout(total=None, sock_read=WATCH_SECONDS + 30)
        async with self._http.get(
            self._url(namespace, plural), params=params, timeout=timeout
        ) as answer:
            if answer.status == 410:
                raise WatchExpired()
            if answer.status >= 400:
                raise kopf.TemporaryError(
                    f"watching {plural} in {namespace}: HTTP {answer.status}", delay=5
                )
            self._watches.add(answer)
            try:
                buffer = b""
                # Closed under it: aiohttp.ClientConnectionError("Connection closed").
                async for chunk in answer.content.iter_any():
                    buffer += chunk
                    if len(buffer) > _MAX_EVENT_BYTES:
                        raise kopf.TemporaryError("watch event larger than 16 MiB", delay=5)
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield _event(line)
            finally:
                self._watches.discard(answer)

    async def remove_finalizer(self, path: str, obj: Mapping[str, Any], finalizer: str) -> bool:
        """Drop ``finalizer`` from an object at ``path``, guarded by its resourceVersion (a
        409 means it changed: the caller reads it again). False when it was not there."""
        meta = obj.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if finalizer not in finalizers:
            return False
        patch = {
            "metadata": {
                "finalizers": [f for f in finalizers if f != finalizer],
                "resourceVersion": meta.get("resourceVersion"),
            }
        }
        return await self.patch(path, patch) is not None

    async def close(self) -> None:
        for answer in list(self._watches):
            answer.close()
        await self._session.close()


def _event(line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        event = json.loads(line)
    except ValueError:
        raise kopf.TemporaryError("watch event is not JSON", delay=5) from None
    kind, obj = str(event.get("type")), event.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == 410:
            raise WatchExpired()
        raise kopf.TemporaryError(f"watch error: {obj.get('reason')}", delay=5)
    return kind, obj


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def matches(obj: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    found = (obj.get("metadata") or {}).get("labels") or {}
    return all(found.get(key) == value for key, value in (labels or {}).items())
