"""kmock's Kubernetes emulator, with the gaps TESTING.md lists filled in."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import aiohttp.web
import kmock

_versions = itertools.count(1)


class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """Stamps uid, resourceVersion and creationTimestamp as a real API server does (kopf's
    patches rely on resourceVersion)."""

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        data = request.data if isinstance(getattr(request, "data", None), dict) else None
        if data is not None and request.resource is not None:
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", "2026-11-22T00:00:00Z")
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = str(next(_versions))
            elif request.action == kmock.action.UPDATE:
                meta["resourceVersion"] = str(next(_versions))
                key = (request.resource, request.namespace, request.name)
                if "spec" in data and key in self._objects:  # a spec change: a new generation
                    generation = self._objects[key].get("metadata", {}).get("generation", 1)
                    meta["generation"] = generation + 1
        return await super()._handle(request)  # type: ignore[no-any-return]
