"""The sidecar's audit signing key: Ed25519, made in memory at start, never written anywhere.

Only the public half leaves the process: printed in the start-up log, written to the export
destination before the first digest it signs, and (with the broker) registered through it
(``public_key_pem`` and ``key_id`` are what a registration needs). A verifier checks the
digests with the public key alone; whoever can rewrite the trail but not this process's
memory cannot sign a digest that verifies.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of SHA-256 over its raw
    32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """One process's signing key. There is no way to export the private half."""

    def __init__(self) -> None:
        self._private = ed25519.Ed25519PrivateKey.generate()
        self.public_key = self._private.public_key()
        self.key_id = key_id(self.public_key)

    @property
    def public_key_pem(self) -> bytes:
        return public_pem(self.public_key)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._private.sign(data)).decode()

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


def public_pem(public_key: ed25519.Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes) -> ed25519.Ed25519PublicKey:
    """A PEM public key, or ValueError if it is not an Ed25519 one."""
    loaded = serialization.load_pem_public_key(pem)
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return loaded


def verify(public_key: ed25519.Ed25519PublicKey, data: bytes, signature: str) -> bool:
    try:
        public_key.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True
