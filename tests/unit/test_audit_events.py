"""The audit event's hash chain, ids and times, and the digest files' names and contents: the
pieces a verifier recomputes, pinned byte for byte."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sidegate.audit import digests, events, signing


def test_canonical_json_sorts_keys_has_no_spaces_and_keeps_utf_8() -> None:
    assert events.canonical({"b": 1, "a": "é", "c": [1.5, None]}) == (
        '{"a":"é","b":1,"c":[1.5,null]}'.encode()
    )


def test_an_event_hash_covers_everything_but_the_hash_itself() -> None:
    event = {"b": 2, "a": 1, "hash": "ignored"}
    expected = hashlib.sha256(b'{"a":1,"b":2}').hexdigest()
    assert events.digest(event) == expected
    assert events.digest({"a": 1, "b": 2}) == expected
    assert events.digest({"a": 1, "b": 3}) != expected


def test_a_sealed_line_is_the_canonical_event_with_its_hash_and_a_newline() -> None:
    event = {"sequence": 1, "action": "llm.chat.completions", "prev_hash": events.GENESIS}
    line, value = events.sealed_line(event)
    assert value == events.digest(event) == hashlib.sha256(events.canonical(event)).hexdigest()
    # the canonical event, with the hash added last (one serialisation for both)
    assert line == events.canonical(event)[:-1] + f',"hash":"{value}"}}\n'.encode()
    assert json.loads(line) == {**event, "hash": value}


@pytest.mark.parametrize(
    ("at", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000000Z"),
        (1_700_000_000.5, "2023-11-14T22:13:20.500000Z"),
        (1_700_000_059.25, "2023-11-14T22:14:19.250000Z"),
        (86_399.0, "1970-01-01T23:59:59.000000Z"),
    ],
)
def test_times_are_utc_rfc_3339_with_microseconds(at: float, text: str) -> None:
    assert events.rfc3339(at) == text
    parsed = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    assert parsed.replace(tzinfo=datetime.UTC).timestamp() == at


def test_microseconds_are_cut_not_rounded() -> None:
    assert events.rfc3339(0.9999995) == "1970-01-01T00:00:00.999999Z"


def test_ulids_carry_their_millisecond_and_sort_in_the_order_they_were_made() -> None:
    ulids = events.Ulids()
    times = [1_795_000_000.0, 1_795_000_000.0, 1_795_000_000.0004, 1_795_000_000.001, 5.0]
    made = [ulids.new(at) for at in times]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(len(u) == 26 and set(u) <= set(events.CROCKFORD) for u in made)
    # the same millisecond, and a clock that went back, keep the last millisecond
    assert [events.ulid_milliseconds(u) for u in made] == [
        1_795_000_000_000,
        1_795_000_000_000,
        1_795_000_000_000,
        1_795_000_000_001,
        1_795_000_000_001,
    ]
    assert events.ulid_milliseconds(events.Ulids().new(0.001)) == 1
    # a new generator's first id is random from the first millisecond on
    assert events.Ulids().new(0.001) != events.Ulids().new(0.001)
    assert events.ulid_milliseconds(events.Ulids().new(2**47 / 1000)) == 2**47


def random_part(ulid: str) -> int:
    value = 0
    for char in ulid:
        value = value * 32 + events.CROCKFORD.index(char)
    return value & ((1 << 80) - 1)


def test_within_one_millisecond_the_random_part_counts_up_by_one() -> None:
    ulids = events.Ulids()
    first, second, third = (ulids.new(1_795_000_000.0) for _ in range(3))
    assert random_part(second) == random_part(first) + 1 == random_part(third) - 1


def test_the_random_part_is_random_and_leaves_room_to_count_up() -> None:
    parts = [random_part(events.Ulids().new(1_795_000_000.0)) for _ in range(64)]
    assert len(set(parts)) == 64
    assert all(part < 1 << 79 for part in parts)  # 79 random bits: never wraps into the time
    assert max(parts) >= 1 << 78  # and uses all 79 (fails with probability 2**-64)


def test_the_json_schema_is_the_event_model() -> None:
    schema = events.json_schema()
    assert schema["title"] == "AuditEvent"
    assert {"sequence", "prev_hash", "hash", "actor", "outcome"} <= set(schema["properties"])


# ---- digests ----------------------------------------------------------------------------


def test_digest_and_key_file_names() -> None:
    assert digests.file_name(7) == "digest-000000000007.json"
    assert digests.key_file_name("0123abcd") == "key-0123abcd.pem"
    assert digests.is_digest_name("digest-000000000007.json")
    assert not digests.is_digest_name("xdigest-1.json")
    assert not digests.is_digest_name("digest-1.jsonl")
    assert digests.is_key_name("key-0123abcd.pem")
    assert not digests.is_key_name("akey-1.pem")
    assert not digests.is_key_name("key-1.pem.txt")


def test_a_segment_summary_reads_its_first_and_last_lines() -> None:
    lines = [json.dumps({"sequence": s, "x": "y"}).encode() for s in (4, 5, 6)]
    data = b"\n".join(lines) + b"\n"
    summary = digests.summarize("01ABC.jsonl", data)
    assert summary == digests.SegmentSummary(
        name="01ABC.jsonl",
        sha256=hashlib.sha256(data).hexdigest(),
        first_sequence=4,
        last_sequence=6,
        events=3,
    )
    assert digests.summarize("one.jsonl", lines[0]).events == 1


def test_a_digest_file_holds_exactly_the_signed_fields() -> None:
    signer = signing.Signer()
    segment = digests.SegmentSummary(
        name="s.jsonl", sha256="a" * 64, first_sequence=1, last_sequence=3, events=3
    )
    data = digests.make(
        signer,
        trail="team-a/pod-0",
        sequence=2,
        previous="b" * 64,
        created=1_700_000_000.5,
        interval=30.0,
        last_sequence=3,
        segment=segment,
        final=True,
    )
    document = json.loads(data)
    signature = document.pop("signature")
    assert document == {
        "version": 1,
        "kind": "sidegate.audit.digest",
        "trail": "team-a/pod-0",
        "key_id": signer.key_id,
        "sequence": 2,
        "previous": "b" * 64,
        "created": "2023-11-14T22:13:20.500000Z",
        "interval_seconds": 30.0,
        "last_sequence": 3,
        "segment": segment.model_dump(),
        "final": True,
    }
    assert digests.signed_part({**document, "signature": "x"}) == events.canonical(document)
    assert signing.verify(signer.public_key, events.canonical(document), signature)
    assert data == events.canonical({**document, "signature": signature}) + b"\n"
    idle = digests.make(
        signer,
        trail="t/p",
        sequence=0,
        previous=digests.GENESIS,
        created=0.0,
        interval=1.0,
        last_sequence=0,
        segment=None,
        final=False,
    )
    assert json.loads(idle)["segment"] is None
    assert digests.Head.of(idle) == digests.Head(0, hashlib.sha256(idle).hexdigest(), 0)
    assert digests.Head.of(data) == digests.Head(2, digests.file_hash(data), 3)
    assert digests.Head() == digests.Head(-1, "0" * 64, 0)


# ---- signing ----------------------------------------------------------------------------


def test_a_key_id_is_the_start_of_the_raw_public_key_hash() -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signing.key_id(key) == hashlib.sha256(raw).hexdigest()[:16]


def test_public_keys_round_trip_through_pem_and_nothing_else_loads() -> None:
    signer = signing.Signer()
    pem = signer.public_key_pem
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert signing.public_pem(signer.public_key) == pem
    assert signing.key_id(signing.load_public_key(pem)) == signer.key_id
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match=r"^not an Ed25519 public key$"):
        signing.load_public_key(other_pem)
    with pytest.raises(ValueError, match="PEM"):
        signing.load_public_key(b"not a key")


def test_signatures_are_strict_base64_of_the_data() -> None:
    signer = signing.Signer()
    signature = signer.sign(b"data")
    assert len(base64.b64decode(signature, validate=True)) == 64
    assert signing.verify(signer.public_key, b"data", signature)
    assert not signing.verify(signer.public_key, b"other", signature)
    assert not signing.verify(signer.public_key, b"data", signature + "!")  # not base64
    assert not signing.verify(signer.public_key, b"data", "!" + signature)
    assert not signing.verify(signer.public_key, b"data", signature[:-4])
