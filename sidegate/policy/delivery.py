"""The broker's wire contract: what a sidecar receives for its namespace, versioned.

``GET /v1/delivery?after=<version>&wait=<seconds>`` answers one ``Delivery`` as JSON::

    {"schemaVersion": 1, "version": "<32 hex>", "namespace": "team-a",
     "credentials": {"openai": "...", "openai.previous": "..."},
     "bundle": "<base64 of the signed bundle envelope>",
     "admin_tokens": ["...", "..."], "redis": {"url": "...", "password": null}}

``version`` is a digest of everything else, so every broker replica gives the same content
the same version, and a sidecar that moves from one replica to another is not sent what it
already holds. A refusal is ``{"error": {"code": ..., "message": ...}}`` with a status of
401 (the token) or 403 (the pod or its namespace).

The secret fields are ``SecretStr``: a Delivery in a log line, an exception or a repr shows
masks, and validation errors never quote their input. ``build`` writes the answer
from plain values. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from sidegate import errors

SCHEMA_VERSION = 1
PATH = "/v1/delivery"
# The sidecar's audit signing key (``ed25519:<base64>``), sent with every long-poll: the
# broker registers it for the pod the token is bound to (one log line in the release
# namespace per pod and key), where the application cannot change it.
AUDIT_KEY_HEADER = "Sidegate-Audit-Key"
# A delivery carries one bundle, from a Secret (at most 1 MiB of data), and a few keys.
MAX_DELIVERY_BYTES = 8 * 1024 * 1024

# Reason codes of refusals, shared so both sides name them the same way.
UNAUTHENTICATED = "unauthenticated"  # 401: bad, expired or unknown token, or wrong audience
NOT_POD_BOUND = "token_not_pod_bound"  # 403: a token not bound to a pod
POD_NOT_FOUND = "pod_not_found"  # 403: the pod is gone, or has another uid
POD_TERMINATED = "pod_terminated"
POD_NOT_INJECTED = "pod_not_injected"  # 403: the pod spec fails the check
NAMESPACE_NOT_SERVED = "namespace_not_served"  # 403: no bundle for the namespace
NOT_READY = "broker_not_ready"  # 503: the broker has not read its objects yet


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )


class RedisDelivery(_Model):
    url: SecretStr = Field(description="redis:// or rediss:// URL (it may hold a password).")
    password: SecretStr | None = Field(None, description="Redis password, when one is set.")


class Delivery(_Model):
    """Everything one sidecar's namespace is entitled to, at one version."""

    schema_version: Literal[1] = Field(1, alias="schemaVersion")
    version: str = Field(pattern=r"^[0-9a-f]{32}$")
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    credentials: dict[str, SecretStr] = Field(
        description="Provider keys by name, with `<name>.previous` during a rotation overlap."
    )
    bundle: str = Field(description="The namespace's signed bundle envelope, base64.")
    admin_tokens: list[SecretStr] = Field(
        default_factory=list, description="The admin API token, then the previous one."
    )
    redis: RedisDelivery | None = None


def _content(
    namespace: str,
    credentials: Mapping[str, str],
    bundle: str,
    admin_tokens: Sequence[str],
    redis: tuple[str, str | None] | None,
) -> dict[str, Any]:
    return {
        "schemaVersion": SCHEMA_VERSION,
        "namespace": namespace,
        "credentials": dict(sorted(credentials.items())),
        "bundle": bundle,
        "admin_tokens": list(admin_tokens),
        "redis": {"url": redis[0], "password": redis[1]} if redis is not None else None,
    }


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def build(
    namespace: str,
    *,
    credentials: Mapping[str, str],
    bundle: str,
    admin_tokens: Sequence[str] = (),
    redis: tuple[str, str | None] | None = None,
) -> tuple[str, bytes]:
    """The version and the JSON answer for this content. The version is the digest of the
    content, so equal content gives equal versions and bytes on every replica."""
    content = _content(namespace, credentials, bundle, admin_tokens, redis)
    version = hashlib.sha256(_canonical(content)).hexdigest()[:32]
    return version, _canonical({**content, "version": version})


def loads(body: bytes) -> Delivery:
    """Parse an answer; DeliveryRejected names the fields at fault, never a value."""
    if len(body) > MAX_DELIVERY_BYTES:
        raise errors.DeliveryRejected(f"delivery larger than {MAX_DELIVERY_BYTES} bytes")
    try:
        return Delivery.model_validate_json(body)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"][:1]) for e in exc.errors()})
        raise errors.DeliveryRejected(f"not a valid delivery ({', '.join(fields)})") from None


def refusal(code: str, message: str) -> bytes:
    return _canonical({"error": {"code": code, "message": message}})
