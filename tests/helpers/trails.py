"""Audit trails built in memory (events, segments, signed digests, the public key), for
tests of the verifier: each test changes one thing in a trail that verifies."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sidegate.audit import digests, events, signing, verifying

TRAIL = "team-a/pod-0"
START = 1_795_000_000.0  # the first digest's time; every digest one second after the last
INTERVAL = 60.0


def make_events(first: int, count: int, previous: str, ulids: events.Ulids) -> list[bytes]:
    lines = []
    for sequence in range(first, first + count):
        event = {
            "version": 2,
            "id": ulids.new(START + sequence),
            "sequence": sequence,
            "timestamp": events.rfc3339(START + sequence),
            "actor": {"kind": "workload", "namespace": "team-a", "service_account": "app"},
            "action": "llm.chat.completions",
            "outcome": {"result": "allowed", "status": 200},
            "prev_hash": previous,
        }
        line, previous = events.sealed_line(event)
        lines.append(line)
    return lines


@dataclasses.dataclass
class Built:
    signer: signing.Signer
    segments: list[tuple[str, bytes]]
    digests: list[tuple[str, bytes]]
    keys: list[tuple[str, bytes]]

    def files(self) -> verifying.TrailFiles:
        return verifying.TrailFiles(list(self.segments), list(self.digests), list(self.keys))

    def segment_lines(self, index: int) -> list[bytes]:
        return self.segments[index][1].splitlines(keepends=True)

    def replace_segment(self, index: int, lines: list[bytes]) -> None:
        self.segments[index] = (self.segments[index][0], b"".join(lines))

    def event(self, segment: int, line: int) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.segment_lines(segment)[line])
        return loaded


def sign_digest(
    signer: signing.Signer,
    sequence: int,
    previous: str,
    last_sequence: int,
    segment: digests.SegmentSummary | None,
    *,
    final: bool = False,
    trail: str = TRAIL,
) -> bytes:
    return digests.make(
        signer,
        trail=trail,
        sequence=sequence,
        previous=previous,
        created=START + sequence,
        interval=INTERVAL,
        last_sequence=last_sequence,
        segment=segment,
        final=final,
    )


def build(
    sizes: tuple[int, ...] = (3, 2),
    *,
    final: bool = True,
    idle: bool = False,
    trail: str = TRAIL,
) -> Built:
    """Segments of `sizes` events, one digest each (plus an idle one with `idle`); the last
    digest final with `final`."""
    signer = signing.Signer()
    ulids = events.Ulids()
    built = Built(signer, [], [], [])
    previous_event, previous_digest, sequence = events.GENESIS, digests.GENESIS, 1
    for number, size in enumerate(sizes):
        lines = make_events(sequence, size, previous_event, ulids)
        previous_event = json.loads(lines[-1])["hash"]
        name = json.loads(lines[0])["id"] + ".jsonl"
        data = b"".join(lines)
        built.segments.append((f"spool/sealed/{name}", data))
        sequence += size
        last = number == len(sizes) - 1 and not idle
        digest = sign_digest(
            signer,
            number,
            previous_digest,
            sequence - 1,
            digests.summarize(name, data),
            final=final and last,
            trail=trail,
        )
        built.digests.append((f"spool/digests/{digests.file_name(number)}", digest))
        previous_digest = digests.file_hash(digest)
    if idle:
        digest = sign_digest(
            signer, len(sizes), previous_digest, sequence - 1, None, final=final, trail=trail
        )
        built.digests.append((f"spool/digests/{digests.file_name(len(sizes))}", digest))
    built.keys.append((f"spool/{digests.key_file_name(signer.key_id)}", signer.public_key_pem))
    return built
