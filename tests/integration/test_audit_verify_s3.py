"""`verifying.s3_trails` against moto's S3 server: every pod's trail under a prefix, and every
object version (overwritten with other bytes, or hidden by a delete marker) reported."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from sidegate.audit import verifying
from tests.helpers.s3 import BUCKET, S3, start_s3
from tests.helpers.trails import START, Built, build

DAY = "trail/2026/11/23"


@pytest.fixture
def s3(aws_environment: None) -> Iterator[S3]:
    server = start_s3()
    yield server
    server.stop()


def upload(client: Any, built: Built, pod: str) -> dict[str, str]:
    """Every file of `built` under DAY/team-a/POD/, segments gzipped; file name → key."""
    keys = {}
    for where, data in [*built.segments, *built.digests, *built.keys]:
        name = where.rsplit("/", 1)[1]
        if name.endswith(".jsonl"):
            name, data = name + ".gz", gzip.compress(data)
        key = f"{DAY}/team-a/{pod}/{name}"
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        keys[where.rsplit("/", 1)[1]] = key
    return keys


def trails(s3: S3, **options: Any) -> list[verifying.Report]:
    return asyncio.run(
        verifying.s3_trails(
            BUCKET, "trail/", endpoint_url=s3.endpoint, region="us-east-1", **options
        )
    )


def test_every_pod_s_trail_is_verified_with_its_versions_keys_and_time(s3: S3) -> None:
    """One listing (it is what takes time here): two pods' trails, one untouched but not
    closed, one with an overwritten segment and a deleted one; the keys and the time given."""
    client = s3.client()
    good, bad = build((3, 2), final=False), build((2, 2), trail="team-a/pod-1")
    upload(client, good, "pod-0")
    keys = upload(client, bad, "pod-1")
    client.put_object(Bucket=BUCKET, Key="elsewhere/team-a/pod-9/x.jsonl", Body=b"x")
    segment = bad.segments[0][0].rsplit("/", 1)[1]
    digest = bad.digests[1][0].rsplit("/", 1)[1]
    # the same bytes uploaded again are a second version, but not an overwrite
    client.put_object(Bucket=BUCKET, Key=keys[digest], Body=bad.digests[1][1])
    edited = bad.segments[0][1].replace(b'"allowed"', b'"denied"', 1)
    client.put_object(Bucket=BUCKET, Key=keys[segment], Body=gzip.compress(edited))
    other = bad.segments[1][0].rsplit("/", 1)[1]
    client.delete_object(Bucket=BUCKET, Key=keys[other])

    # a pod whose trail has a segment but no digest yet: named by its place in the bucket
    lone = build((1,))
    client.put_object(
        Bucket=BUCKET,
        Key=f"{DAY}/team-a/pod-2/{lone.segments[0][0].rsplit('/', 1)[1]}.gz",
        Body=gzip.compress(lone.segments[0][1]),
    )

    trusted = {bad.signer.key_id: bad.signer.public_key}
    first, second, third = trails(s3, trusted_keys=trusted, now=START + 10)
    assert (first.trail, first.segments, first.events) == ("team-a/pod-0", 2, 5)
    assert first.keys_trusted == second.keys_trusted == "given (--public-key)"
    # not the trusted key; not closed but recent at the time given (now is the clock's)
    assert first.checks() == {"signature"}
    assert [str(p) for p in third.problems][-1] == (
        "[coverage] team-a/pod-2: no signed digests at all"
    )
    assert all(type(p.line) is int for r in (first, second, third) for p in r.problems)
    assert second.trail == "team-a/pod-1"
    where = f"s3://{BUCKET}/{keys[segment]}"
    gone = f"s3://{BUCKET}/{keys[other]}"
    assert [str(p) for p in second.problems] == [
        f"[segment-hash] {where}: differs from the SHA-256 signed in "
        f"s3://{BUCKET}/{keys[bad.digests[0][0].rsplit('/', 1)[1]]}: events were edited, "
        "removed, reordered or appended",
        f"[event-hash] {where}:1: hash does not match the content: altered",
        f"[coverage] s3://{BUCKET}/{keys[digest]}: covers {other}, which is missing",
        f"[versions] {where}: overwritten: 2 versions, not all the same",
        f"[versions] {gone}: deleted: a delete marker hides it",
    ]


_EMPTY_LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    "<Name>sidegate-audit</Name><Prefix>trail/</Prefix><IsTruncated>false</IsTruncated>"
    "</ListVersionsResult>"
)


async def test_requests_are_signed_for_the_region_given(aws_environment: None) -> None:
    """moto answers whatever region a request is signed for; real S3 refuses a signature
    for another region. So the signature's scope is read off the request itself."""
    seen: list[str] = []

    async def listing(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(text=_EMPTY_LISTING, content_type="application/xml")

    app = web.Application()
    app.router.add_get("/sidegate-audit", listing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        found = await verifying.s3_trails(
            BUCKET, "trail/", endpoint_url=f"http://127.0.0.1:{port}", region="eu-west-3"
        )
    finally:
        await runner.cleanup()
    assert found == []
    assert len(seen) == 1 and "/eu-west-3/s3/aws4_request" in seen[0]
