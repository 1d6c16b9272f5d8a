"""Object shapes: every Secret the operator owns, and kopf bodies as plain data (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MANAGED_BY = {"app.kubernetes.io/managed-by": "sidegate-operator"}


def managed_secret(
    namespace: str,
    name: str,
    annotations: Mapping[str, str],
    data: Mapping[str, str | None],
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Secret labelled as the operator's; ``data`` values are base64 (None deletes a key
    when sent as a merge patch)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**(labels or {}), **MANAGED_BY},
            "annotations": dict(annotations),
        },
        "data": dict(data),
    }


def plain(value: Any) -> Any:
    """kopf's bodies are mapping views; pydantic's strict mode and the injector want plain
    dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
