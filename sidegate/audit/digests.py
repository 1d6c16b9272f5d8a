"""Signed digests: what makes the trail tamper-evident to a verifier without the key.

Modelled on CloudTrail's log-file integrity validation. Every sealed segment is covered by
a digest naming the segment (its SHA-256, first and last event sequence numbers, event
count), the digest before it (the SHA-256 of that digest's file, so digests chain) and the
key that signed it. A digest is also written at least every ``interval_seconds`` when no
segment was sealed, and a ``final`` one on a clean shutdown: a trail whose last digest is
neither recent nor final has lost its tail (or its sidecar died and never came back).

A digest file is canonical JSON (sorted keys, no spaces) plus a newline; the signature is
Ed25519 over the canonical JSON of every other field.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from sidegate.audit import events, signing

VERSION: Literal[1] = 1
KIND: Literal["sidegate.audit.digest"] = "sidegate.audit.digest"
GENESIS = "0" * 64  # "previous" of a trail's first digest


def file_name(sequence: int) -> str:
    return f"digest-{sequence:012d}.json"


def key_file_name(key_id: str) -> str:
    return f"key-{key_id}.pem"


def is_digest_name(name: str) -> bool:
    return name.startswith("digest-") and name.endswith(".json")


def is_key_name(name: str) -> bool:
    return name.startswith("key-") and name.endswith(".pem")


class SegmentSummary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The segment's file name (its first event's id).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the uncompressed bytes.")
    first_sequence: int = Field(ge=1)
    last_sequence: int = Field(ge=1)
    events: int = Field(ge=1)


class Digest(BaseModel):
    """One digest file (JSON Schema: ``sidegate audit schema --digest``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = VERSION
    kind: Literal["sidegate.audit.digest"] = KIND
    trail: str = Field(description="NAMESPACE/POD: the sidecar whose events these are.")
    key_id: str = Field(description="The signing key (signing.key_id of its public key).")
    sequence: int = Field(ge=0, description="0, 1, 2, ... over the trail's whole life.")
    previous: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the digest before.")
    created: str = Field(description="UTC, RFC 3339.")
    interval_seconds: float = Field(gt=0, description="The most time between two digests.")
    last_sequence: int = Field(
        ge=0, description="The last event sequence number covered by this and earlier digests."
    )
    segment: SegmentSummary | None = Field(description="The segment covered; none when idle.")
    final: bool = Field(description="Written at a clean shutdown: nothing follows in this run.")
    signature: str


def summarize(name: str, data: bytes) -> SegmentSummary:
    """A segment's summary, read from its bytes (sequences from its first and last lines)."""
    lines = data.rstrip(b"\n").split(b"\n")
    first, last = orjson.loads(lines[0]), orjson.loads(lines[-1])
    return SegmentSummary(
        name=name,
        sha256=hashlib.sha256(data).hexdigest(),
        first_sequence=int(first["sequence"]),
        last_sequence=int(last["sequence"]),
        events=len(lines),
    )


def signed_part(document: dict[str, Any]) -> bytes:
    return events.canonical({k: v for k, v in document.items() if k != "signature"})


def make(
    signer: signing.Signer,
    *,
    trail: str,
    sequence: int,
    previous: str,
    created: float,
    interval: float,
    last_sequence: int,
    segment: SegmentSummary | None,
    final: bool,
) -> bytes:
    """The bytes of a signed digest file."""
    document: dict[str, Any] = {
        "version": VERSION,
        "kind": KIND,
        "trail": trail,
        "key_id": signer.key_id,
        "sequence": sequence,
        "previous": previous,
        "created": events.rfc3339(created),
        "interval_seconds": interval,
        "last_sequence": last_sequence,
        "segment": segment.model_dump() if segment is not None else None,
        "final": final,
    }
    document["signature"] = signer.sign(signed_part(document))
    return events.canonical(document) + b"\n"


def file_hash(data: bytes) -> str:
    """What the next digest's ``previous`` names."""
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Head:
    """Where a trail's digest chain stands: what the next digest links to."""

    sequence: int = -1  # of the last digest; -1 before the first
    hash: str = GENESIS
    last_sequence: int = 0  # events covered so far

    @classmethod
    def of(cls, data: bytes) -> Head:
        digest = Digest.model_validate_json(data)
        return cls(digest.sequence, file_hash(data), digest.last_sequence)
