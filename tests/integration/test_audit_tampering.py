"""The tamper suite: every way of rewriting an exported trail is caught by a verifier that
does not hold the signing key, and the report names the check that failed.

The attacker here can rewrite every file of the export destination and recompute every
event hash (the attack that fooled the unkeyed chain: drop the denied events, recompute,
"OK"); what it cannot do is sign with the key in the sidecar's memory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidegate.audit import digests, events, signing, spool, verifying
from sidegate.audit.metrics import AuditMetrics


def run_spool(directory: Path, pod: str, count: int, signer: signing.Signer) -> None:
    """A sidecar's run: ``count`` events over several segments, then a clean shutdown."""

    async def scenario() -> None:
        trail = spool.Spool(
            directory,
            spool.Identity("team-a", "app", pod),
            AuditMetrics(CollectorRegistry()),
            max_bytes=10 * 1024 * 1024,
            segment_max_bytes=1500,
            segment_max_age=60,
            flush_interval=0,
            fail_open=False,
            signer=signer,
            digest_interval=60,
        )
        trail.open()
        writer = asyncio.create_task(trail.run())
        for index in range(count):
            result = "denied" if index % 4 == 3 else "allowed"
            ticket = trail.emit(
                trail.system_event("llm.chat.completions", result, reason=str(index))
            )
            if index % 3 == 2:
                # Batches of three, each on disk before the next: the segments (sealed at
                # 1,500 bytes, after a batch) come out the same however loaded the machine.
                assert await trail.durable(ticket)
        await trail.close()
        writer.cancel()

    asyncio.run(scenario())


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, signing.Signer]:
    """What the exporter would have shipped of pod-0: its sealed/ directory."""
    signer = signing.Signer()
    run_spool(tmp_path / "spool", "pod-0", 40, signer)
    destination = tmp_path / "trail"
    shutil.copytree(tmp_path / "spool" / "sealed", destination)
    return destination, signer


def verify(
    directory: Path, signer: signing.Signer | None = None, now: float | None = None
) -> verifying.Report:
    trusted = {signer.key_id: signer.public_key} if signer else None
    return verifying.verify_trail(
        None, verifying.directory_files(directory), trusted_keys=trusted, now=now
    )


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def digest_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("digest-*.json"))


def read_events(segment: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in segment.read_bytes().splitlines()]


def write_rechained(segment: Path, found: list[dict[str, Any]], previous: str) -> str:
    """Write events with every hash and link recomputed, as a forger would; the last hash."""
    lines = []
    for event in found:
        event = {k: v for k, v in event.items() if k != "hash"}
        event["prev_hash"] = previous
        line, previous = events.sealed_line(event)
        lines.append(line)
    segment.write_bytes(b"".join(lines))
    return previous


def test_an_untouched_trail_verifies(exported: tuple[Path, signing.Signer]) -> None:
    directory, signer = exported
    report = verify(directory, signer)
    assert report.ok, [str(p) for p in report.problems]
    assert report.events == 41 and report.segments >= 4 and report.keys == [signer.key_id]
    assert verify(directory).ok  # the published key is the same one


def test_deleting_events_and_recomputing_every_hash_is_caught(
    exported: tuple[Path, signing.Signer],
) -> None:
    directory, signer = exported
    segment = segment_files(directory)[1]
    found = read_events(segment)
    kept = [e for e in found if e["outcome"]["result"] != "denied"]
    assert len(kept) < len(found)
    for number, event in enumerate(kept, start=found[0]["sequence"]):
        event["sequence"] = number  # renumbered too
    write_rechained(segment, kept, found[0]["prev_hash"])
    report = verify(directory, signer)
    assert "segment-hash" in report.checks(), [str(p) for p in report.problems]


def test_deleting_a_whole_segment_or_its_digest_is_caught(
    exported: tuple[Path, signing.Signer],
) -> None:
    directory, signer = exported
    segment_files(directory)[2].unlink()
    assert "coverage" in verify(directory, signer).checks()
    digest_files(directory)[1].unlink()
    assert "digest-chain" in verify(directory, signer).checks()


def test_reordering_events_or_segments_is_caught(
    exported: tuple[Path, signing.Signer], tmp_path: Path
) -> None:
    directory, signer = exported
    segment = segment_files(directory)[1]
    original = segment.read_bytes()
    found = read_events(segment)
    found[0], found[1] = found[1], found[0]
    write_rechained(segment, found, found[1]["prev_hash"])
    assert {"segment-hash", "sequence"} <= verify(directory, signer).checks()
    segment.write_bytes(original)
    first, second = segment_files(directory)[1:3]
    swap = tmp_path / "swap"
    first.rename(swap)
    second.rename(first)
    swap.rename(second)
    assert "segment-hash" in verify(directory, signer).checks()


def test_editing_an_event_and_recomputing_the_chain_is_caught(
    exported: tuple[Path, signing.Signer],
) -> None:
    directory, signer = exported
    segment = segment_files(directory)[0]
    found = read_events(segment)
    found[3]["outcome"]["result"] = (
        "allowed" if found[3]["outcome"]["result"] != "allowed" else "error"
    )
    write_rechained(segment, found, found[0]["prev_hash"])
    report = verify(directory, signer)
    assert "segment-hash" in report.checks(), [str(p) for p in report.problems]


def test_appending_events_is_caught(exported: tuple[Path, signing.Signer]) -> None:
    directory, signer = exported
    last = segment_files(directory)[-1]
    found = read_events(last)
    extra = {**found[-1], "id": "7" + found[-1]["id"][1:], "sequence": found[-1]["sequence"] + 1}
    original = last.read_bytes()
    write_rechained(last, [*found, extra], found[0]["prev_hash"])
    assert "segment-hash" in verify(directory, signer).checks()
    last.write_bytes(original)  # and as a segment of its own
    write_rechained(directory / f"{extra['id']}.jsonl", [extra], found[-1]["hash"])
    assert "coverage" in verify(directory, signer).checks()


def test_cutting_off_the_tail_is_caught(exported: tuple[Path, signing.Signer]) -> None:
    directory, signer = exported
    final = json.loads(digest_files(directory)[-1].read_bytes())
    assert final["final"] is True
    # Drop the last segment and the digests from the one covering it on: what remains is
    # a consistent, signed trail that simply stops.
    last = segment_files(directory)[-1]
    covering = next(
        json.loads(d.read_bytes())["sequence"]
        for d in digest_files(directory)
        if (json.loads(d.read_bytes())["segment"] or {}).get("name") == last.name
    )
    for digest in digest_files(directory):
        if json.loads(digest.read_bytes())["sequence"] >= covering:
            digest.unlink()
    last.unlink()
    created = json.loads(digest_files(directory)[-1].read_bytes())["created"]
    recently = verifying._created(created) + 30  # within two intervals: could be live
    assert verify(directory, signer, now=recently).ok
    report = verify(directory, signer, now=recently + 300)
    assert report.checks() == {"tail"}, [str(p) for p in report.problems]


def test_re_signing_with_another_key_is_caught(
    exported: tuple[Path, signing.Signer],
) -> None:
    directory, signer = exported
    forger = signing.Signer()
    segment = segment_files(directory)[1]
    found = read_events(segment)
    found[0]["outcome"]["result"] = "allowed"
    write_rechained(segment, found, found[0]["prev_hash"])
    # Re-sign every digest with the forger's key, chained and covering the edited segment,
    # and publish the forger's public key beside them.
    previous = digests.GENESIS
    for path in digest_files(directory):
        document = json.loads(path.read_bytes())
        if document["segment"] and document["segment"]["name"] == segment.name:
            document["segment"] = digests.summarize(segment.name, segment.read_bytes()).model_dump()
        data = digests.make(
            forger,
            trail=document["trail"],
            sequence=document["sequence"],
            previous=previous,
            created=verifying._created(document["created"]),
            interval=document["interval_seconds"],
            last_sequence=document["last_sequence"],
            segment=digests.SegmentSummary(**document["segment"]) if document["segment"] else None,
            final=document["final"],
        )
        path.write_bytes(data)
        previous = digests.file_hash(data)
    (directory / digests.key_file_name(signer.key_id)).unlink()
    assert "signature" in verify(directory).checks()  # the forger's key is not published
    (directory / digests.key_file_name(forger.key_id)).write_bytes(forger.public_key_pem)
    report = verify(directory, signer)  # pinned to the key the start-up log printed
    assert "signature" in report.checks(), [str(p) for p in report.problems]
    assert all(  # every digest is called out, not only the first
        any(p.check == "signature" and p.where == str(d) for p in report.problems)
        for d in digest_files(directory)
    )


def test_a_segment_swapped_in_from_another_pod_is_caught(
    exported: tuple[Path, signing.Signer], tmp_path: Path
) -> None:
    directory, signer = exported
    other = signing.Signer()
    run_spool(tmp_path / "other", "pod-1", 40, other)
    theirs = sorted((tmp_path / "other" / "sealed").glob("*.jsonl"))[1]
    ours = segment_files(directory)[1]
    shutil.copy(theirs, ours)  # under our segment's name
    assert "segment-hash" in verify(directory, signer).checks()
    ours.unlink()
    shutil.copy(theirs, directory / theirs.name)  # under its own name, with its digest
    for digest in (tmp_path / "other" / "sealed").glob("digest-*.json"):
        covered = json.loads(digest.read_bytes())["segment"]
        if covered and covered["name"] == theirs.name:
            shutil.copy(digest, directory / digest.name)
    report = verify(directory, signer)
    assert {"trail", "signature"} <= report.checks(), [str(p) for p in report.problems]


def test_the_command_names_the_check_and_exits_1(
    exported: tuple[Path, signing.Signer], tmp_path: Path
) -> None:
    directory, signer = exported
    key_file = tmp_path / "pinned.pem"
    key_file.write_bytes(signer.public_key_pem)
    command = [
        sys.executable,
        "-m",
        "sidegate",
        "audit",
        "verify",
        str(directory),
        "--public-key",
        str(key_file),
    ]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    assert f"keys {signer.key_id} (given (--public-key))" in ok.stdout
    segment_files(directory)[0].unlink()
    bad = subprocess.run(command, capture_output=True, text=True)
    assert bad.returncode == 1 and "[coverage]" in bad.stdout and "which is missing" in bad.stdout
