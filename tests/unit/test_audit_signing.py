"""The audit signing key: verifies its own digests, nobody else's, and never leaves memory."""

from __future__ import annotations

import json

from sidegate.audit import digests, signing


def make(signer: signing.Signer, sequence: int = 0) -> bytes:
    return digests.make(
        signer,
        trail="team-a/pod-0",
        sequence=sequence,
        previous=digests.GENESIS,
        created=1_795_000_000.0,
        interval=60,
        last_sequence=0,
        segment=None,
        final=False,
    )


def test_a_digest_verifies_with_its_key_only() -> None:
    signer, other = signing.Signer(), signing.Signer()
    document = json.loads(make(signer))
    part = digests.signed_part(document)
    assert signing.verify(signer.public_key, part, document["signature"])
    assert not signing.verify(other.public_key, part, document["signature"])
    document["final"] = True  # any field is signed
    assert not signing.verify(
        signer.public_key, digests.signed_part(document), document["signature"]
    )


def test_key_ids_name_public_keys_and_nothing_private_is_reachable() -> None:
    signer = signing.Signer()
    loaded = signing.load_public_key(signer.public_key_pem)
    assert signing.key_id(loaded) == signer.key_id and len(signer.key_id) == 16
    assert b"PRIVATE" not in signer.public_key_pem
    assert repr(signer) == f"Signer(key_id={signer.key_id!r})"
    assert not any("private" in name for name in dir(signer) if not name.startswith("_"))


def test_a_digest_is_canonical_json_with_a_newline() -> None:
    data = make(signing.Signer(), sequence=7)
    assert data.endswith(b"\n") and b" " not in data.strip()
    assert digests.Digest.model_validate_json(data).sequence == 7
    assert digests.Head.of(data) == digests.Head(7, digests.file_hash(data), 0)
