"""The spool's chain across crashes, and what verify reports."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidegate.audit import events, signing, spool, verifying
from sidegate.audit.metrics import AuditMetrics


def make_spool(directory: Path, pod: str = "pod-0", **options: Any) -> spool.Spool:
    return spool.Spool(
        directory,
        spool.Identity("team-a", "app", pod),
        AuditMetrics(CollectorRegistry()),
        max_bytes=10 * 1024 * 1024,
        segment_max_bytes=options.pop("segment_max_bytes", 2000),
        segment_max_age=60,
        flush_interval=0,
        fail_open=False,
        signer=options.pop("signer", None) or signing.Signer(),
        digest_interval=options.pop("digest_interval", 60),
        **options,
    )


def write(directory: Path, count: int, **options: Any) -> None:
    async def scenario() -> None:
        trail = make_spool(directory, **options)
        trail.open()
        writer = asyncio.create_task(trail.run())
        for index in range(count):
            trail.emit(trail.system_event("test.event", "ok", reason=str(index)))
            if index % 5 == 4:
                await asyncio.sleep(0.01)  # let the writer commit a group
        await trail.close()
        writer.cancel()

    asyncio.run(scenario())


def segments(directory: Path) -> list[tuple[str, bytes]]:
    return verifying.directory_files(directory).segments


def test_chain_verifies_across_segments_and_restarts(tmp_path: Path) -> None:
    write(tmp_path, 30)
    write(tmp_path, 5)
    report = verifying.verify_trail(None, verifying.directory_files(tmp_path))
    assert report.ok, [str(p) for p in report.problems]
    assert report.events == 37 and report.segments > 2  # two restart events, rotation by size
    assert report.trail == "team-a/pod-0" and len(report.keys) == 2  # a key per run
    sequences = []
    for _, data in segments(tmp_path):
        for line in data.splitlines():
            sequences.append(events.AuditEvent.model_validate_json(line).sequence)
    assert sequences == list(range(1, 38))


def test_torn_last_line_is_dropped_counted_and_linked_past(tmp_path: Path) -> None:
    write(tmp_path, 3)
    last = sorted((tmp_path / "sealed").glob("*.jsonl"))[-1]
    good_tail = json.loads(last.read_bytes().splitlines()[-1])["hash"]
    (tmp_path / "tail.json").unlink()
    # A crash mid-write: the segment is back in active/ with half a line at its end.
    torn = tmp_path / "active" / last.name
    last.rename(torn)
    with torn.open("ab") as handle:
        handle.write(b'{"version":1,"id":"01ZZ')
    trail = make_spool(tmp_path)
    trail.open()
    assert trail.metrics.torn_lines._value.get() == 1
    restart = trail._pending[-1]
    assert (
        restart["action"] == "audit.restart"
        and restart["outcome"]["reason"] == "torn_lines_dropped:1"
    )
    assert trail._last_hash == good_tail
    assert not list((tmp_path / "active").iterdir())


def test_verify_names_gaps_reordering_and_tampering_inside_a_segment(tmp_path: Path) -> None:
    write(tmp_path, 6)
    files = verifying.directory_files(tmp_path)
    (name, data), *rest = files.segments
    lines = data.splitlines()

    def verify(changed: list[bytes]) -> list[tuple[str, int]]:
        changed_bytes = b"\n".join(changed) + b"\n"
        edited = dataclasses.replace(files, segments=[(name, changed_bytes), *rest])
        return [(p.check, p.line) for p in verifying.verify_trail(None, edited).problems]

    assert verify(lines[:2] + lines[3:]) == [
        ("segment-hash", 0),
        ("sequence", 3),
        ("event-chain", 3),
    ]
    assert verify([lines[0], lines[2], lines[1], *lines[3:]]) == [
        ("segment-hash", 0),
        ("sequence", 2),
        ("event-chain", 2),
        ("sequence", 3),
        ("event-chain", 3),
        ("event-chain", 3),
        ("sequence", 4),
        ("event-chain", 4),
    ]
    edited = lines[1].replace(b'"reason":"0"', b'"reason":"X"')
    assert verify([lines[0], edited, *lines[2:]]) == [("segment-hash", 0), ("event-hash", 2)]


def test_ulids_sort_in_creation_order() -> None:
    ulids = events.Ulids()
    made = [ulids.new(1_700_000_000.0) for _ in range(1000)] + [ulids.new(1_700_000_000.001)]
    assert made == sorted(made) and len(set(made)) == len(made)


def test_audit_verify_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    write(tmp_path, 8)
    command = [sys.executable, "-m", "sidegate", "audit", "verify", str(tmp_path)]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0 and "team-a/pod-0: OK: 9 events" in ok.stdout, ok.stdout
    segment = sorted((tmp_path / "sealed").glob("*.jsonl"))[0]
    lines = segment.read_bytes().splitlines()
    lines[2] = lines[2].replace(b'"result":"ok"', b'"result":"rejected"')
    segment.write_bytes(b"\n".join(lines) + b"\n")
    bad = subprocess.run(command, capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout
    assert f"[segment-hash] {segment}: differs from the SHA-256 signed in" in bad.stdout
    assert f"[event-hash] {segment}:3: hash does not match" in bad.stdout
    schema = subprocess.run(
        [sys.executable, "-m", "sidegate", "audit", "schema"], capture_output=True, text=True
    )
    assert json.loads(schema.stdout)["title"] == "AuditEvent"


def test_digests_keep_coming_when_idle_so_a_cut_tail_shows(tmp_path: Path) -> None:
    async def scenario() -> None:
        trail = make_spool(tmp_path, digest_interval=0.2)
        trail.open()
        writer = asyncio.create_task(trail.run())
        trail.emit(trail.system_event("test.event", "ok"))
        await asyncio.sleep(1.0)  # idle: no events, no segment to seal
        writer.cancel()  # a crash: no final digest

    asyncio.run(scenario())
    written = sorted((tmp_path / "sealed").glob("digest-*.json"))
    documents = [json.loads(path.read_bytes()) for path in written]
    idle = [d for d in documents if d["segment"] is None]
    assert len(idle) >= 3 and not any(d["final"] for d in documents)
    files = verifying.directory_files(tmp_path / "sealed")
    created = verifying._created(documents[-1]["created"])
    assert verifying.verify_trail(None, files, now=created + 0.3).ok  # still live
    late = verifying.verify_trail(None, files, now=created + 10)
    assert [p.check for p in late.problems] == ["tail"]
