"""A served namespace's signed bundle, as the ``sidegate-bundle-<ns>`` Secret of the release
namespace (pure, no I/O).

The Secret holds the signed envelope (``policy.signing``) in ``bundle.json`` and the inner
bundle's hash in an annotation. The annotation is a hint for people; what the operator trusts
on reading the Secret back is the signature: an envelope that does not verify against its own
keys, or whose bundle is not the one the policies compile to, is rewritten. Serials increase
per namespace: ``max(serial in force + 1, unix time in ms)``, so a restarted operator (no
memory) still signs above anything it signed before, and a sidecar refuses anything older.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from sidegate import errors
from sidegate.operator import objects
from sidegate.policy import signing

BUNDLE_KEY = "bundle.json"
HASH_ANNOTATION = "sidegate.io/bundle-hash"
FOR_LABEL = "sidegate.io/bundle-for"
PREFIX = "sidegate-bundle-"


def secret_name(namespace: str) -> str:
    return PREFIX + namespace


def next_serial(in_force: int | None, now: float) -> int:
    return max((in_force or 0) + 1, int(now * 1000))


def issued_at(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def desired_secret(
    release_namespace: str, namespace: str, bundle_hash: str, envelope: bytes
) -> dict[str, Any]:
    return objects.managed_secret(
        release_namespace,
        secret_name(namespace),
        {HASH_ANNOTATION: bundle_hash},
        {BUNDLE_KEY: base64.b64encode(envelope).decode()},
        labels={FOR_LABEL: namespace},
    )


def envelope_of(secret: Mapping[str, Any] | None) -> bytes | None:
    value = ((secret or {}).get("data") or {}).get(BUNDLE_KEY)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        return None


def verified(
    secret: Mapping[str, Any] | None,
    keys: Mapping[str, ed25519.Ed25519PublicKey],
    namespace: str,
) -> signing.VerifiedBundle | None:
    """The stored bundle if its signature checks out for ``namespace``; None when it is
    missing, unsigned, forged, edited or another namespace's."""
    envelope = envelope_of(secret)
    if envelope is None:
        return None
    try:
        return signing.verify(envelope, keys, namespace=namespace)
    except errors.BundleRejected:
        return None
