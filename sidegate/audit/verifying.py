"""Checking an audit trail: every hash, every link, every id in order.

A trail is one pod's chain: its segments in name order (the name is the first event's id).
For each line: it must be an ``AuditEvent``; its ``hash`` must be the SHA-256 of the rest
(else it was altered); its ``prev_hash`` must be the previous line's ``hash`` (else events
are missing or out of order); its id must sort after the previous one. The first event
of a trail may link to anything: the events before it may have expired under retention.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import ValidationError

from sidegate.audit import events


@dataclasses.dataclass(frozen=True)
class Problem:
    segment: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.segment}:{self.line}: {self.message}"


@dataclasses.dataclass
class Report:
    trail: str
    segments: int = 0
    events: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)
    first_id: str | None = None
    last_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_trail(trail: str, segments: Iterable[tuple[str, bytes]]) -> Report:
    report = Report(trail)
    previous_hash: str | None = None
    previous_id = ""
    seen_hashes: dict[str, tuple[str, int]] = {}
    for name, data in segments:
        report.segments += 1
        for number, raw in enumerate(data.splitlines(), start=1):
            try:
                document = json.loads(raw)
                event = events.AuditEvent.model_validate(document)
            except (ValueError, ValidationError) as exc:
                report.problems.append(
                    Problem(name, number, f"not a valid audit event ({_short(exc)})")
                )
                previous_hash = None  # cannot link past a broken line; resume after it
                continue
            report.events += 1
            report.first_id = report.first_id or event.id
            report.last_id = event.id
            if events.digest(document) != event.hash:
                report.problems.append(
                    Problem(name, number, "hash does not match the content: the event was altered")
                )
            if previous_hash is not None and event.prev_hash != previous_hash:
                if event.prev_hash in seen_hashes:
                    where = seen_hashes[event.prev_hash]
                    message = (
                        f"out of order: links to {where[0]}:{where[1]}, not to the line before"
                    )
                else:
                    message = "gap: prev_hash does not match the previous event (events missing)"
                report.problems.append(Problem(name, number, message))
            if event.id <= previous_id:
                report.problems.append(
                    Problem(name, number, f"id {event.id} does not sort after {previous_id}")
                )
            seen_hashes[event.hash] = (name, number)
            previous_hash, previous_id = event.hash, event.id
    return report


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False)[0]
        return ".".join(str(p) for p in first["loc"]) + ": " + first["msg"]
    return str(exc)[:120]


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def directory_segments(directory: Path) -> Iterator[tuple[str, bytes]]:
    """A spool directory (active/ and sealed/) or any directory of .jsonl[.gz] segments."""
    found = [
        p
        for p in directory.rglob("*")
        if p.is_file() and (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz"))
    ]
    for path in sorted(found, key=lambda p: p.name):
        yield str(path), _read(path)


async def s3_trails(
    bucket: str, prefix: str, *, endpoint_url: str | None, region: str | None
) -> list[Report]:
    """Every pod's trail under ``s3://bucket/prefix`` (keys: .../yyyy/mm/dd/NS/POD/SEG.jsonl.gz)."""
    import aioboto3

    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=endpoint_url, region_name=region) as s3:
        keys: list[str] = []
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys += [
                item["Key"]
                for item in page.get("Contents", [])
                if item["Key"].endswith(".jsonl.gz")
            ]
        trails: dict[str, list[str]] = {}
        for key in keys:
            parts = key.split("/")
            trails.setdefault("/".join(parts[-3:-1]), []).append(key)  # NAMESPACE/POD
        reports = []
        for trail, trail_keys in sorted(trails.items()):
            ordered = sorted(trail_keys, key=lambda k: k.rsplit("/", 1)[-1])
            segments = []
            for key in ordered:
                answer = await s3.get_object(Bucket=bucket, Key=key)
                body = await answer["Body"].read()
                segments.append((f"s3://{bucket}/{key}", gzip.decompress(body)))
            reports.append(verify_trail(trail, segments))
        return reports
