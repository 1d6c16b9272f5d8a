"""Policies of a namespace → the desired bundle Secret (pure, no I/O)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from sidegate.operator import objects
from sidegate.policy import bundle, models

BUNDLE_KEY = "bundle.json"
HASH_ANNOTATION = "sidegate.io/bundle-hash"


def desired_secret(
    namespace: str, name: str, policies: Iterable[models.RBACPolicy]
) -> dict[str, Any]:
    """Deterministic: the same policies always give the same Secret, hash annotation included.
    No policies give the deny-all bundle, never a stale allow."""
    compiled = bundle.to_bundle(policies)
    return objects.managed_secret(
        namespace,
        name,
        {HASH_ANNOTATION: compiled.hash},
        {BUNDLE_KEY: base64.b64encode(bundle.dumps(compiled)).decode()},
    )


def current_hash(secret: dict[str, Any] | None) -> str | None:
    if secret is None:
        return None
    annotations = secret.get("metadata", {}).get("annotations") or {}
    value = annotations.get(HASH_ANNOTATION)
    return value if isinstance(value, str) else None
