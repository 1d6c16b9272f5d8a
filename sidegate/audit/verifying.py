"""Checking an audit trail without the signing key: signatures, digest chain, sequence
numbers, segment hashes, every event's hash and link, the tail, and (in S3) every version.

A trail is one sidecar's (NAMESPACE/POD): its segments, its signed digests and the public
keys of its runs. Each problem names the check that failed and where:

``signature``     a digest whose signature does not verify, or signed by an untrusted key
``key``           a published key file that is not what its name says
``trail``         a digest of another trail (a segment or digest swapped between pods)
``digest-chain``  a digest missing, or not naming the one before it
``coverage``      a segment no digest covers (added), or one a digest names that is missing
``segment-hash``  a segment whose bytes differ from its digest's SHA-256 (edited, events
                  removed, reordered or appended)
``sequence``      event sequence numbers that skip or go back
``event``         a line that is not an audit event
``event-hash``    an event whose hash does not match its content
``event-chain``   an event whose prev_hash is not the previous event's hash
``tail``          the last digest is neither final nor recent: the tail was cut off (or the
                  sidecar died and never came back)
``versions``      an S3 object overwritten with other bytes, or deleted

Keys: with ``trusted_keys`` (``--public-key``) only those verify. Without, the keys
published in the trail are used; that catches every edit made by someone who cannot also
replace the published keys (Object Lock, versioning, or pinning the key the start-up log
printed). Recomputing every event hash does not help a forger: the digests sign segment
hashes, and only the sidecar's memory holds the key.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import ValidationError

from sidegate.audit import digests, events, signing

_TAIL_SLACK = 5.0  # seconds of clock skew and upload delay allowed past two intervals


@dataclasses.dataclass(frozen=True)
class Problem:
    check: str
    where: str
    line: int  # 0: the file as a whole
    message: str

    def __str__(self) -> str:
        where = f"{self.where}:{self.line}" if self.line else self.where
        return f"[{self.check}] {where}: {self.message}"


@dataclasses.dataclass
class Report:
    trail: str
    segments: int = 0
    events: int = 0
    digests: int = 0
    keys: list[str] = dataclasses.field(default_factory=list)
    keys_trusted: str = "published in the trail"
    problems: list[Problem] = dataclasses.field(default_factory=list)
    first_id: str | None = None
    last_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, check: str, where: str, line: int, message: str) -> None:
        self.problems.append(Problem(check, where, line, message))

    def checks(self) -> set[str]:
        return {p.check for p in self.problems}


@dataclasses.dataclass
class TrailFiles:
    """A trail's files as (where, bytes); segments already decompressed."""

    segments: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)
    digests: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)
    keys: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)

    def add(self, where: str, data: bytes) -> None:
        name = _name(where)
        if name.endswith(".jsonl"):
            self.segments.append((where, data))
        elif digests.is_digest_name(name):
            self.digests.append((where, data))
        elif digests.is_key_name(name):
            self.keys.append((where, data))


def _name(where: str) -> str:
    return PurePosixPath(where).name.removesuffix(".gz")


def verify_trail(
    trail: str | None,
    files: TrailFiles,
    *,
    trusted_keys: Mapping[str, ed25519.Ed25519PublicKey] | None = None,
    now: float | None = None,
) -> Report:
    """Every check on one trail. ``trail`` None: the trail the first digest names."""
    report = Report(trail or "")
    if trusted_keys is not None:
        keys = dict(trusted_keys)
        report.keys_trusted = "given (--public-key)"
    else:
        keys = _published_keys(files.keys, report)
    covered = _check_digests(files.digests, keys, report, time.time() if now is None else now)
    _check_segments(files.segments, covered, report)
    if not files.digests and files.segments:
        report.add("coverage", report.trail or "trail", 0, "no signed digests at all")
    return report


def _published_keys(
    found: Iterable[tuple[str, bytes]], report: Report
) -> dict[str, ed25519.Ed25519PublicKey]:
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    for where, data in found:
        try:
            key = signing.load_public_key(data)
        except ValueError:
            report.add("key", where, 0, "not an Ed25519 public key in PEM")
            continue
        identity = signing.key_id(key)
        if _name(where) != digests.key_file_name(identity):
            report.add("key", where, 0, f"holds key {identity}, not the one its name says")
            continue
        keys[identity] = key
    return keys


def _created(value: str) -> float:
    parsed = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    return parsed.replace(tzinfo=datetime.UTC).timestamp()


def _check_digests(
    found: Iterable[tuple[str, bytes]],
    keys: Mapping[str, ed25519.Ed25519PublicKey],
    report: Report,
    now: float,
) -> dict[str, tuple[str, digests.SegmentSummary]]:
    """Signatures, chain and sequence coverage of the digests; returns segment name →
    (the digest's location, what it says of the segment)."""
    parsed: list[tuple[digests.Digest, str, bytes]] = []
    for where, data in found:
        try:
            parsed.append((digests.Digest.model_validate_json(data), where, data))
        except ValidationError as exc:
            report.add("digest-chain", where, 0, f"not a valid digest ({_short(exc)})")
    parsed.sort(key=lambda item: (item[0].sequence, item[1]))
    if parsed and not report.trail:
        report.trail = parsed[0][0].trail
    covered: dict[str, tuple[str, digests.SegmentSummary]] = {}
    previous_hash, expected, last_covered = digests.GENESIS, 0, 0
    previous_data: bytes | None = None
    used: set[str] = set()
    for digest, where, data in parsed:
        if digest.sequence == expected - 1 and data == previous_data:
            continue  # the same digest found twice (a spool's digests/ and sealed/)
        report.digests += 1
        if digest.trail != report.trail:
            report.add("trail", where, 0, f"a digest of {digest.trail}, not of {report.trail}")
        key = keys.get(digest.key_id)
        if key is None:
            report.add(
                "signature", where, 0, f"signed by key {digest.key_id}, which is not trusted"
            )
        elif not signing.verify(key, digests.signed_part(json.loads(data)), digest.signature):
            report.add("signature", where, 0, "signature does not verify: the digest was altered")
        used.add(digest.key_id)
        if digest.sequence < expected:
            report.add("digest-chain", where, 0, f"a second, different digest {digest.sequence}")
        elif digest.sequence > expected:
            report.add(
                "digest-chain",
                where,
                0,
                f"digests {expected}..{digest.sequence - 1} are missing",
            )
        elif digest.previous != previous_hash:
            report.add(
                "digest-chain",
                where,
                0,
                "does not name the digest before it: a digest was replaced or reordered",
            )
        if digest.segment is not None:
            if digest.segment.first_sequence != last_covered + 1:
                report.add(
                    "sequence",
                    where,
                    0,
                    f"covers events from {digest.segment.first_sequence}, but the digests "
                    f"before it end at {last_covered}",
                )
            if digest.segment.name in covered:
                report.add("coverage", where, 0, f"{digest.segment.name} is covered twice")
            covered[digest.segment.name] = (where, digest.segment)
            last_covered = digest.segment.last_sequence
        elif digest.last_sequence != last_covered:
            report.add(
                "sequence", where, 0, f"says {digest.last_sequence} events, not {last_covered}"
            )
        previous_hash, expected, previous_data = digests.file_hash(data), digest.sequence + 1, data
    report.keys = sorted(used)
    if parsed:
        last, where, _ = parsed[-1]
        age = now - _created(last.created)
        if not last.final and age > 2 * last.interval_seconds + _TAIL_SLACK:
            report.add(
                "tail",
                where,
                0,
                f"the last digest ({last.sequence}, {last.created}) is not final and "
                f"{age:.0f} s old, more than twice its {last.interval_seconds:g} s interval: "
                "the trail's tail is missing, or its sidecar stopped without closing it",
            )
    return covered


def _check_segments(
    found: Iterable[tuple[str, bytes]],
    covered: Mapping[str, tuple[str, digests.SegmentSummary]],
    report: Report,
) -> None:
    previous_hash: str | None = None
    previous_id = ""
    previous_sequence: int | None = None
    seen_hashes: dict[str, tuple[str, int]] = {}
    seen: set[str] = set()
    for where, data in sorted(found, key=lambda item: _name(item[0])):
        name = _name(where)
        seen.add(name)
        report.segments += 1
        signed = covered.get(name)
        if signed is None:
            report.add("coverage", where, 0, "no signed digest covers this segment")
        elif hashlib.sha256(data).hexdigest() != signed[1].sha256:
            report.add(
                "segment-hash",
                where,
                0,
                f"differs from the SHA-256 signed in {signed[0]}: events were edited, "
                "removed, reordered or appended",
            )
        for number, raw in enumerate(data.splitlines(), start=1):
            try:
                document = json.loads(raw)
                event = events.AuditEvent.model_validate(document)
            except (ValueError, ValidationError) as exc:
                report.add("event", where, number, f"not a valid audit event ({_short(exc)})")
                previous_hash = None  # cannot link past a broken line; resume after it
                continue
            report.events += 1
            report.first_id = report.first_id or event.id
            report.last_id = event.id
            if events.digest(document) != event.hash:
                report.add("event-hash", where, number, "hash does not match the content: altered")
            if previous_sequence is None:
                if event.sequence == 1 and event.prev_hash != events.GENESIS:
                    report.add("event-chain", where, number, "the first event links to another")
            elif event.sequence != previous_sequence + 1:
                what = "missing" if event.sequence > previous_sequence else "out of order"
                report.add(
                    "sequence",
                    where,
                    number,
                    f"sequence {event.sequence} follows {previous_sequence}: events {what}",
                )
            if previous_hash is not None and event.prev_hash != previous_hash:
                if event.prev_hash in seen_hashes:
                    at = seen_hashes[event.prev_hash]
                    message = f"out of order: links to {at[0]}:{at[1]}, not to the line before"
                else:
                    message = "gap: prev_hash does not match the previous event (events missing)"
                report.add("event-chain", where, number, message)
            if event.id <= previous_id:
                report.add(
                    "event-chain", where, number, f"id {event.id} does not sort after {previous_id}"
                )
            seen_hashes[event.hash] = (where, number)
            previous_hash, previous_id, previous_sequence = event.hash, event.id, event.sequence
    for name, (where, _) in sorted(covered.items()):
        if name not in seen:
            report.add("coverage", where, 0, f"covers {name}, which is missing")


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False)[0]
        return ".".join(str(p) for p in first["loc"]) + ": " + first["msg"]
    return str(exc)[:120]


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def directory_files(directory: Path) -> TrailFiles:
    """A spool directory or any directory of one trail's files. The same file found twice
    with the same bytes (a spool's digests/ and sealed/) counts once."""
    files = TrailFiles()
    kept: dict[str, bytes] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = _name(str(path))
        data = _read(path)
        if kept.get(name) == data:
            continue
        kept[name] = data
        files.add(str(path), data)
    return files


def load_keys(paths: Iterable[Path]) -> dict[str, ed25519.Ed25519PublicKey]:
    keys = {}
    for path in paths:
        key = signing.load_public_key(path.read_bytes())
        keys[signing.key_id(key)] = key
    return keys


async def s3_trails(
    bucket: str,
    prefix: str,
    *,
    endpoint_url: str | None,
    region: str | None,
    trusted_keys: Mapping[str, ed25519.Ed25519PublicKey] | None = None,
    now: float | None = None,
) -> list[Report]:
    """Every pod's trail under ``s3://bucket/prefix`` (keys: .../yyyy/mm/dd/NS/POD/FILE).
    Every object version is listed: one overwritten with other bytes, or hidden by a delete
    marker, is reported (with Object Lock neither can be undone)."""
    import aioboto3

    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=endpoint_url, region_name=region) as s3:
        versions: dict[str, list[str]] = {}
        deleted: set[str] = set()
        paginator = s3.get_paginator("list_object_versions")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Versions", []):
                versions.setdefault(item["Key"], []).append(item["ETag"])
            for item in page.get("DeleteMarkers", []):
                deleted.add(item["Key"])
        trails: dict[str, list[str]] = {}
        for key in sorted(set(versions) | deleted):
            trails.setdefault("/".join(key.split("/")[-3:-1]), []).append(key)  # NAMESPACE/POD
        reports = []
        for trail, keys in sorted(trails.items()):
            files = TrailFiles()
            problems: list[tuple[str, str]] = []
            for key in keys:
                where = f"s3://{bucket}/{key}"
                if key in deleted:
                    problems.append((where, "deleted: a delete marker hides it"))
                    continue
                if len(set(versions[key])) > 1:
                    problems.append(
                        (where, f"overwritten: {len(versions[key])} versions, not all the same")
                    )
                answer = await s3.get_object(Bucket=bucket, Key=key)
                body: bytes = await answer["Body"].read()
                files.add(where, gzip.decompress(body) if key.endswith(".gz") else body)
            report = verify_trail(trail, files, trusted_keys=trusted_keys, now=now)
            for where, message in problems:
                report.add("versions", where, 0, message)
            reports.append(report)
        return reports
