"""Secrets whose values rotate with an overlap: the credentials Secret (from the sources)
and the admin token Secrets (generated), all in the release namespace.

When a value changes, the target keeps the old one as ``<key>.previous`` for an overlap
window: the sidecar retries a 401 (or accepts an admin call) with it while the new value is
still on its way to every sidecar. After the window,
``.previous`` goes. Pure functions, and ``converge``, the one write they lead to. Nothing
here logs or returns a value in a message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from sidegate.operator import objects
from sidegate.operator.kube import ApiClient

PREVIOUS = ".previous"
EXPIRY_ANNOTATION = "sidegate.io/previous-expires"


def decode(secret: Mapping[str, Any] | None) -> dict[str, str]:
    """The Secret's values as text. A value that is not base64 of UTF-8 text (a Secret holds
    any bytes) is left out: ``undecodable`` names it."""
    data = (secret or {}).get("data") or {}
    decoded = {key: _text(value) for key, value in data.items()}
    return {key: text for key, text in decoded.items() if text is not None}


def undecodable(secret: Mapping[str, Any] | None) -> list[str]:
    """The keys whose values ``decode`` leaves out."""
    data = (secret or {}).get("data") or {}
    return sorted(str(key) for key, value in data.items() if _text(value) is None)


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError
        return None


def expiries(secret: Mapping[str, Any] | None) -> dict[str, float]:
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    try:
        found = json.loads(annotations.get(EXPIRY_ANNOTATION, "{}"))
    except ValueError:
        return {}
    return {str(k): float(v) for k, v in found.items()} if isinstance(found, dict) else {}


def desired_data(
    current: Mapping[str, str],
    current_expiries: Mapping[str, float],
    sources: Mapping[str, str],
    *,
    now: float,
    overlap: float,
) -> tuple[dict[str, str], dict[str, float]]:
    """The target's keys, and when each ``.previous`` expires."""
    data: dict[str, str] = {}
    expires: dict[str, float] = {}
    for key, value in sorted(sources.items()):
        data[key] = value
        old = current.get(key)
        if old is not None and old != value:
            data[key + PREVIOUS] = old  # rotated just now: the overlap starts
            expires[key] = now + overlap
        elif key + PREVIOUS in current and current_expiries.get(key, 0.0) > now:
            data[key + PREVIOUS] = current[key + PREVIOUS]  # still within its overlap
            expires[key] = current_expiries[key]
    return data, expires


def target_secret(
    namespace: str,
    name: str,
    data: Mapping[str, str],
    expires: Mapping[str, float],
    removed: set[str],
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A merge patch (or a new Secret): removed keys are null, which deletes them."""
    encoded: dict[str, str | None] = {
        k: base64.b64encode(v.encode()).decode() for k, v in data.items()
    }
    encoded.update({key: None for key in removed})
    merged = {**(annotations or {}), EXPIRY_ANNOTATION: json.dumps(expires, sort_keys=True)}
    return objects.managed_secret(namespace, name, merged, encoded, labels)


async def converge(
    client: ApiClient,
    secret: Mapping[str, Any] | None,
    namespace: str,
    name: str,
    wanted: Mapping[str, str],
    *,
    now: float,
    overlap: float,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, float] | None:
    """Write ``secret`` (as read) with the ``wanted`` values, rotated-out ones kept for the
    overlap. Writes only on change; returns the expiries written, or None if nothing was."""
    current, current_expiries = decode(secret), expiries(secret)
    data, expires = desired_data(current, current_expiries, wanted, now=now, overlap=overlap)
    if data == current and expires == current_expiries:
        return None
    removed = set(current) - set(data)
    target = target_secret(namespace, name, data, expires, removed, annotations, labels)
    await client.write(target, secret)  # only over the version read: Conflict otherwise
    return expires
