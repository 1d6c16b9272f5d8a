"""Signed bundles: only the operator's key, for this namespace, unaltered, verifies."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sidegate import errors
from sidegate.policy import bundle, signing


def _signed(
    namespace: str = "team-a", serial: int = 3
) -> tuple[bytes, dict[str, ed25519.Ed25519PublicKey], bytes]:
    key = signing.generate_private_key()
    keys = signing.trusted_keys([signing.encode_public_key(key.public_key())])
    data = bundle.dumps(bundle.empty())
    envelope = signing.sign(
        data, namespace=namespace, serial=serial, issued_at="2026-11-23T18:00:00Z", private_key=key
    )
    return envelope, keys, data


def test_a_signed_bundle_verifies_for_its_namespace() -> None:
    envelope, keys, data = _signed()
    verified = signing.verify(envelope, keys, namespace="team-a")
    assert verified.bundle == data and verified.serial == 3
    assert bundle.loads(verified.bundle).hash == bundle.empty().hash


def test_another_namespace_is_refused() -> None:
    envelope, keys, _ = _signed("team-a")
    with pytest.raises(errors.BundleRejected, match="namespace"):
        signing.verify(envelope, keys, namespace="team-b")


def test_an_unsigned_bundle_is_refused() -> None:
    _, keys, data = _signed()
    with pytest.raises(errors.BundleRejected, match=r"unsigned|not a signed"):
        signing.verify(data, keys, namespace="team-a")


@pytest.mark.parametrize("field", ["bundle", "serial", "namespace", "issuedAt"])
def test_any_edit_breaks_the_signature(field: str) -> None:
    envelope, keys, _ = _signed()
    raw = json.loads(envelope)
    if field == "bundle":
        allow_all = bundle.loads(bundle.dumps(bundle.empty())).model_dump(by_alias=True)
        raw[field] = base64.b64encode(json.dumps(allow_all).encode()).decode()
    elif field == "serial":
        raw[field] = 99
    elif field == "namespace":
        raw[field] = "team-a "
    else:
        raw[field] = "2030-01-01T00:00:00Z"
    with pytest.raises(errors.BundleRejected, match="signature"):
        signing.verify(json.dumps(raw).encode(), keys, namespace="team-a")


def test_a_key_not_trusted_is_refused_even_with_a_valid_signature() -> None:
    envelope, _, _ = _signed()
    other = signing.generate_private_key()
    keys = signing.trusted_keys([signing.encode_public_key(other.public_key())])
    with pytest.raises(errors.BundleRejected, match="not trusted"):
        signing.verify(envelope, keys, namespace="team-a")


def test_a_forger_cannot_claim_the_trusted_key_id() -> None:
    envelope, keys, _ = _signed()
    forger = signing.generate_private_key()
    forged = json.loads(
        signing.sign(
            bundle.dumps(bundle.empty()),
            namespace="team-a",
            serial=4,
            issued_at="2026-11-23T18:00:00Z",
            private_key=forger,
        )
    )
    forged["keyId"] = json.loads(envelope)["keyId"]
    with pytest.raises(errors.BundleRejected, match="signature"):
        signing.verify(json.dumps(forged).encode(), keys, namespace="team-a")


@pytest.mark.parametrize(
    "text",
    ["", "ed25519:", "ed25519:!!!", "rsa:AAAA", "ed25519:" + base64.b64encode(b"x" * 31).decode()],
)
def test_bad_public_keys_are_config_errors(text: str) -> None:
    with pytest.raises(ValueError, match="key"):
        signing.decode_public_key(text)


def test_private_keys_round_trip_through_pem_and_bad_pem_says_nothing_of_it() -> None:
    key = signing.generate_private_key()
    loaded = signing.private_key_from_pem(signing.private_key_to_pem(key))
    assert signing.key_id(loaded.public_key()) == signing.key_id(key.public_key())
    with pytest.raises(ValueError, match="not an unencrypted"):
        signing.private_key_from_pem(b"garbage")


def _edited(envelope: bytes, **fields: object) -> bytes:
    return json.dumps(json.loads(envelope) | fields).encode()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"extra": 1}, "not a signed bundle: unexpected or missing fields"),
        ({"schemaVersion": 2}, "signed bundle version 2 is not supported (this sidecar reads 1)"),
        ({"serial": -1}, "signed bundle: serial is not a non-negative integer"),
        ({"serial": True}, "signed bundle: serial is not a non-negative integer"),
        ({"serial": 3.0}, "signed bundle: serial is not a non-negative integer"),
        ({"namespace": 5}, "signed bundle: a field has the wrong type"),
        ({"issuedAt": None}, "signed bundle: a field has the wrong type"),
        ({"signature": "!!!"}, "signed bundle: not base64"),
        ({"bundle": "e30=!"}, "signed bundle: not base64"),
        (
            {"keyId": "f" * 20},
            "signed by key 'ffffffffffffffff', which is not trusted",
        ),
    ],
)
def test_each_malformed_envelope_is_refused_with_its_reason(
    fields: dict[str, object], reason: str
) -> None:
    envelope, keys, _ = _signed()
    with pytest.raises(errors.BundleRejected) as refused:
        signing.verify(_edited(envelope, **fields), keys, namespace="team-a")
    assert str(refused.value) == reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not a signed bundle: not JSON"),
        (b"[1, 2]", "not a signed bundle: unsigned"),
        (b"{}", "not a signed bundle: unsigned"),
    ],
)
def test_what_is_not_an_envelope_at_all(data: bytes, reason: str) -> None:
    _, keys, _ = _signed()
    with pytest.raises(errors.BundleRejected) as refused:
        signing.verify(data, keys, namespace="team-a")
    assert str(refused.value) == reason


def test_envelopes_over_64_mib_are_refused_unread() -> None:
    _, keys, _ = _signed()
    limit = 64 * 1024 * 1024
    with pytest.raises(errors.BundleRejected, match="not JSON"):  # at the limit: read
        signing.verify(b" " * (limit - 1) + b"x", keys, namespace="team-a")
    with pytest.raises(errors.BundleRejected, match=f"larger than {limit} bytes"):
        signing.verify(b" " * limit + b"x", keys, namespace="team-a")


def test_the_envelope_is_canonical_ascii_json_and_says_who_signed() -> None:
    key = signing.generate_private_key()
    keys = signing.trusted_keys([signing.encode_public_key(key.public_key())])
    issued = "2026-11-23T19:00:00+01:00 (Zürich)"  # non-ASCII text is escaped, not encoded
    envelope = signing.sign(b"{}", namespace="team-a", serial=0, issued_at=issued, private_key=key)
    raw = json.loads(envelope.decode("ascii"))
    assert envelope == json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    assert raw["schemaVersion"] == signing.ENVELOPE_VERSION == 1
    verified = signing.verify(envelope, keys, namespace="team-a")
    assert verified == signing.VerifiedBundle(
        bundle=b"{}", namespace="team-a", serial=0, key_id=raw["keyId"], issued_at=issued
    )
    raw_public = base64.b64decode(
        signing.encode_public_key(key.public_key()).removeprefix("ed25519:")
    )
    assert (
        raw["keyId"]
        == signing.key_id(key.public_key())
        == hashlib.sha256(raw_public).hexdigest()[:16]
    )


def test_the_signature_covers_the_domain_string() -> None:
    """A signature by the trusted key over the same fields, without the domain prefix (what
    the key may sign for something else), does not verify as a bundle."""
    key = signing.generate_private_key()
    keys = signing.trusted_keys([signing.encode_public_key(key.public_key())])
    raw = json.loads(
        signing.sign(b"{}", namespace="team-a", serial=1, issued_at="t", private_key=key)
    )
    unsigned = {k: v for k, v in raw.items() if k != "signature"}
    bare = key.sign(json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode())
    raw["signature"] = base64.b64encode(bare).decode()
    with pytest.raises(
        errors.BundleRejected, match=r"^signature does not verify \(forged or altered\)$"
    ):
        signing.verify(json.dumps(raw).encode(), keys, namespace="team-a")


def test_an_envelope_verifies_whatever_the_order_of_its_fields() -> None:
    """The signature is over the canonical form, not over the bytes as they came."""
    envelope, keys, data = _signed()
    reordered = json.dumps(dict(reversed(json.loads(envelope).items())), indent=1).encode()
    assert reordered != envelope
    assert signing.verify(reordered, keys, namespace="team-a").bundle == data


def test_a_negative_serial_cannot_be_signed() -> None:
    with pytest.raises(ValueError, match=r"^serial must not be negative$"):
        signing.sign(
            b"{}",
            namespace="n",
            serial=-1,
            issued_at="t",
            private_key=signing.generate_private_key(),
        )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("rsa:AAAA", "a public key must start with 'ed25519:'"),
        ("ed25519:!!!", "a public key must be base64 after its prefix"),
        ("ed25519:" + base64.b64encode(b"x" * 31).decode(), "an Ed25519 public key is 32 bytes"),
        ("ed25519:" + base64.b64encode(b"x" * 33).decode(), "an Ed25519 public key is 32 bytes"),
    ],
)
def test_bad_public_keys_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        signing.decode_public_key(text)


def test_only_unencrypted_ed25519_pem_keys_load() -> None:
    key = signing.generate_private_key()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(ValueError, match=r"^not an unencrypted PKCS#8 PEM private key$"):
        signing.private_key_from_pem(encrypted)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match=r"^not an Ed25519 private key$"):
        signing.private_key_from_pem(other)
