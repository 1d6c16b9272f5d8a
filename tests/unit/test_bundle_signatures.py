"""Signed bundles: only the operator's key, for this namespace, unaltered, verifies."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

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
