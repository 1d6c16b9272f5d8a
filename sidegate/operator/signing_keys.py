"""The operator's bundle signing keys, as they live in the release namespace (pure, no I/O).

The ``sidegate-signing`` Secret holds one PKCS#8 PEM Ed25519 private key per entry named
``<anything>.pem``, and ``active``, the name of the entry that signs. Every key in it is
trusted: their public halves are published, active first, in the ``sidegate-signing-public``
ConfigMap, which is what the webhook injects into each sidecar's ``policy.trusted_keys``.

That layout is the rotation path (docs/install.md, "Rotating the signing key"): add a key
(trusted, not signing yet), restart the app pods so every sidecar trusts it, make it
``active`` (the operator re-signs every bundle with it), then remove the old entry. A sidecar
only ever sees bundles signed by a key it was told to trust.

The operator generates the Secret on its first start. Nothing here logs or returns key
material in a message.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from sidegate.operator import objects
from sidegate.policy import signing

SECRET = "sidegate-signing"  # noqa: S105  # pragma: allowlist secret - a name
PUBLIC = "sidegate-signing-public"
ACTIVE = "active"
PEM_SUFFIX = ".pem"
TRUSTED_KEYS = "trusted_keys"
FIRST_KEY = "key-1.pem"


@dataclasses.dataclass(frozen=True)
class SigningKeys:
    """The key that signs, and every public key a sidecar should trust (active first)."""

    active: ed25519.Ed25519PrivateKey = dataclasses.field(repr=False)
    active_name: str
    public: tuple[str, ...]

    @property
    def active_id(self) -> str:
        return signing.key_id(self.active.public_key())

    @property
    def trusted(self) -> dict[str, ed25519.Ed25519PublicKey]:
        return signing.trusted_keys(self.public)


def parse(data: Mapping[str, str]) -> SigningKeys:
    """The keys of a decoded ``sidegate-signing`` Secret; ValueError naming the entry (never
    its content) when it is not usable."""
    pems = {name: text for name, text in data.items() if name.endswith(PEM_SUFFIX)}
    if not pems:
        raise ValueError(f"{SECRET} holds no *{PEM_SUFFIX} key")
    active_name = data.get(ACTIVE, "").strip()
    if active_name not in pems:
        raise ValueError(f"{SECRET}: {ACTIVE!r} must name one of its *{PEM_SUFFIX} entries")
    keys: dict[str, ed25519.Ed25519PrivateKey] = {}
    for name, text in sorted(pems.items()):
        try:
            keys[name] = signing.private_key_from_pem(text.encode())
        except ValueError as exc:
            raise ValueError(f"{SECRET}: entry {name!r}: {exc}") from None
    active = keys[active_name]
    public = [signing.encode_public_key(active.public_key())]
    public += [signing.encode_public_key(k.public_key()) for k in keys.values()]
    return SigningKeys(active, active_name, tuple(dict.fromkeys(public)))  # active first, once


def generated() -> dict[str, str]:
    """The decoded data of a first ``sidegate-signing`` Secret: one new key, active."""
    pem = signing.private_key_to_pem(signing.generate_private_key()).decode()
    return {FIRST_KEY: pem, ACTIVE: FIRST_KEY}


def secret(namespace: str, data: Mapping[str, str]) -> dict[str, Any]:
    """The ``sidegate-signing`` Secret holding ``data`` (decoded: PEMs and ``active``)."""
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return objects.managed_secret(namespace, SECRET, {}, encoded)


def public_config_map(namespace: str, keys: SigningKeys) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": PUBLIC, "namespace": namespace, "labels": dict(objects.MANAGED_BY)},
        "data": {TRUSTED_KEYS: json.dumps(list(keys.public))},
    }


def published(config_map: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The trusted public keys in the ``sidegate-signing-public`` ConfigMap (active first);
    ValueError when it is missing or holds none. What the webhook injects: it needs no read
    access to the private keys."""
    raw = ((config_map or {}).get("data") or {}).get(TRUSTED_KEYS)
    if not isinstance(raw, str):
        raise ValueError(f"{PUBLIC} is missing or has no {TRUSTED_KEYS!r}")
    try:
        found = json.loads(raw)
    except ValueError:
        raise ValueError(f"{PUBLIC}: {TRUSTED_KEYS!r} is not JSON") from None
    if not isinstance(found, list) or not found or not all(isinstance(k, str) for k in found):
        raise ValueError(f"{PUBLIC}: {TRUSTED_KEYS!r} is not a list of keys")
    return tuple(found)
