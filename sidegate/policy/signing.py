"""Signed policy bundles: what lets a sidecar trust a bundle whoever carried it.

The operator signs each namespace's bundle with an Ed25519 key that never leaves the release
namespace; the sidecar verifies the signature against public keys given in its injected
config, whether the bundle came from the broker or from a file. What is signed binds the
bundle to one namespace and to a serial number, so a bundle cannot be replayed into another
namespace, nor an older bundle put back in place of a newer one (the sidecar refuses a
serial lower than the one in force).

The envelope is canonical JSON (sorted keys, no spaces)::

    {"bundle":"<base64 of the canonical bundle bytes>","issuedAt":"2026-11-23T18:00:00Z",
     "keyId":"<16 hex>","namespace":"team-a","schemaVersion":1,"serial":17,
     "signature":"<base64 Ed25519 signature>"}

The signature covers ``DOMAIN`` followed by the same canonical JSON without ``signature``:
the domain string keeps a signature made for anything else (an audit digest, say) from ever
verifying as a bundle. Public keys travel as ``ed25519:<base64 of the 32 raw bytes>``.

Pure: no I/O. The caller reads the files and holds the keys.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sidegate import errors

ENVELOPE_VERSION = 1
DOMAIN = b"sidegate.io/policy-bundle/v1\n"
KEY_PREFIX = "ed25519:"
_MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
_FIELDS = frozenset(
    {"bundle", "issuedAt", "keyId", "namespace", "schemaVersion", "serial", "signature"}
)


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signature checked out: its bytes, for ``bundle.read``, and what was
    signed with it."""

    bundle: bytes
    namespace: str
    serial: int
    key_id: str
    issued_at: str


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of SHA-256 of its raw
    bytes. It picks the key to try; the signature, not the id, is what is trusted."""
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def _raw(public_key: ed25519.Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def encode_public_key(public_key: ed25519.Ed25519PublicKey) -> str:
    return KEY_PREFIX + base64.b64encode(_raw(public_key)).decode()


def decode_public_key(text: str) -> ed25519.Ed25519PublicKey:
    """Parse ``ed25519:<base64>``; raise ValueError with a reason fit for a config error."""
    if not text.startswith(KEY_PREFIX):
        raise ValueError(f"a public key must start with {KEY_PREFIX!r}")
    try:
        raw = base64.b64decode(text.removeprefix(KEY_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a public key must be base64 after its prefix") from None
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def trusted_keys(texts: Iterable[str]) -> dict[str, ed25519.Ed25519PublicKey]:
    """Public keys by key id, from their ``ed25519:`` strings (ValueError on a bad one)."""
    keys = [decode_public_key(text) for text in texts]
    return {key_id(key): key for key in keys}


def generate_private_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def private_key_to_pem(private_key: ed25519.Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes) -> ed25519.Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 key; ValueError (never the key material) when it is not one."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError("not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def sign(
    bundle_bytes: bytes,
    *,
    namespace: str,
    serial: int,
    issued_at: str,
    private_key: ed25519.Ed25519PrivateKey,
) -> bytes:
    """The signed envelope of ``bundle_bytes`` (canonical bundle bytes, ``bundle.dumps``)."""
    if serial < 0:
        raise ValueError("serial must not be negative")
    unsigned: dict[str, Any] = {
        "bundle": base64.b64encode(bundle_bytes).decode(),
        "issuedAt": issued_at,
        "keyId": key_id(private_key.public_key()),
        "namespace": namespace,
        "schemaVersion": ENVELOPE_VERSION,
        "serial": serial,
    }
    signature = private_key.sign(DOMAIN + _canonical(unsigned))
    return _canonical({**unsigned, "signature": base64.b64encode(signature).decode()})


def verify(
    envelope: bytes,
    keys: Mapping[str, ed25519.Ed25519PublicKey],
    *,
    namespace: str,
) -> VerifiedBundle:
    """Check an envelope against the trusted ``keys`` (by key id) for ``namespace``.

    Raises BundleRejected with a reason fit for a log line (never the content): not an
    envelope (an unsigned bundle included), an unknown key, a bad signature, another
    namespace's bundle. The serial is the caller's to compare with the bundle in force."""
    if len(envelope) > _MAX_ENVELOPE_BYTES:
        raise errors.BundleRejected(f"signed bundle larger than {_MAX_ENVELOPE_BYTES} bytes")
    try:
        raw = json.loads(envelope)
    except ValueError:
        raise errors.BundleRejected("not a signed bundle: not JSON") from None
    if not isinstance(raw, dict) or "signature" not in raw:
        raise errors.BundleRejected("not a signed bundle: unsigned")
    if set(raw) != _FIELDS:
        raise errors.BundleRejected("not a signed bundle: unexpected or missing fields")
    if raw["schemaVersion"] != ENVELOPE_VERSION:
        raise errors.BundleRejected(
            f"signed bundle version {raw['schemaVersion']!r} is not supported "
            f"(this sidecar reads {ENVELOPE_VERSION})"
        )
    serial, claimed_id = raw["serial"], raw["keyId"]
    if type(serial) is not int or serial < 0:
        raise errors.BundleRejected("signed bundle: serial is not a non-negative integer")
    if not all(isinstance(raw[f], str) for f in ("bundle", "issuedAt", "keyId", "namespace")):
        raise errors.BundleRejected("signed bundle: a field has the wrong type")
    key = keys.get(claimed_id)
    if key is None:
        raise errors.BundleRejected(f"signed by key {claimed_id[:16]!r}, which is not trusted")
    try:
        signature = base64.b64decode(raw["signature"], validate=True)
        bundle_bytes = base64.b64decode(raw["bundle"], validate=True)
    except (binascii.Error, TypeError):
        raise errors.BundleRejected("signed bundle: not base64") from None
    unsigned = {k: v for k, v in raw.items() if k != "signature"}
    try:
        key.verify(signature, DOMAIN + _canonical(unsigned))
    except InvalidSignature:
        raise errors.BundleRejected("signature does not verify (forged or altered)") from None
    # Checked after the signature: an attacker must not learn anything from the order.
    if raw["namespace"] != namespace:
        raise errors.BundleRejected(
            f"signed for namespace {raw['namespace']!r}, not this sidecar's {namespace!r}"
        )
    return VerifiedBundle(bundle_bytes, namespace, serial, claimed_id, raw["issuedAt"])
